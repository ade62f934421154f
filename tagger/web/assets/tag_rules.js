/* The rules of tagger/tags/ (TagOptions, Selection, select_tags, tag_string) in the page, so that
 * a filter change re-renders without a server round trip. On printable ASCII text and plain
 * numbers in range (ASCII digits, '.', '+', '-', 'e') its answers, error sentences included, are
 * Python's (tests/test_rules_parity.py); any other value (other characters, inf, 1_000, out of
 * range, a value no control sends) raises NeedsServer, and the page asks the server once
 * (tagger.web.tabs.tag.page_ruling, read with fromRuling). Python stays the one definition:
 * change one, change the other. Plain script (<script> tag, node's require()); one global, TagRules.
 */
(function (root) {
  "use strict";

  const TYPED = /^[\t\n\r\x20-\x7e]*$/; // in this domain JS's \s and trim() are Python's
  const NUMBER = /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?$/i;
  const PYTHON_ONLY_NUMBER = /inf|nan|_/i; // float() reads these too: the server says what they are
  // re.fullmatch(r"\s*([^=:]+?)\s*[=:]\s*(.*?)\s*", part); parts never hold "\n".
  const CATEGORY_VALUE = /^\s*([^=:]+?)\s*[=:]\s*([\s\S]*?)\s*$/;
  const PROBABILITIES = ["threshold", "character_threshold", "floor"];
  const TEXTS = ["category_thresholds", "exclude", "include", "prepend"];
  const FLAGS = ["underscores", "escape_parentheses"];

  let CATEGORIES = []; // [{id, name, color}], display order; set by configure()
  let BY_NAME = new Map();
  let DEFAULTS = {};
  let CHOICES = {};
  let ALIASES = new Map(); // normalized typed old name -> the shown tag it means (tagger.tags.relations)
  const MAX_STARS = 8; // tagger.tags.selection.MAX_STARS

  class SelectionError extends Error {
    constructor(message, field) {
      super(message);
      this.name = "SelectionError";
      this.field = field || null; // the option the sentence is about, for the page to point at
    }
  }

  /** A value outside what the page reads: the server's answer is needed (see fromRuling). */
  class NeedsServer extends Error {
    constructor(field) {
      super(`${field}: a value the page leaves to the server`);
      this.name = "NeedsServer";
      this.field = field;
    }
  }

  /** The category table, option defaults and choices, as tagger/web/tabs/tag.py sends them. */
  function configure(config) {
    CATEGORIES = config.categories.map(([id, name, color]) => ({ id, name, color }));
    BY_NAME = new Map(CATEGORIES.map((c) => [c.name, c]));
    DEFAULTS = config.defaults || {};
    CHOICES = { mode: config.modes, order: config.orders, implied: config.implied };
    ALIASES = new Map(Object.entries(config.aliases || {}));
  }

  /** tagger.engine.vocab.normalize_tag */
  function normalizeTag(tag) {
    return tag.replaceAll("\\(", "(").replaceAll("\\)", ")").replaceAll("_", " ").trim().toLowerCase();
  }

  /** repr() of a Python str of the page's domain (printable ASCII, tab, newline, return). */
  function pyRepr(s) {
    const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
    const escapes = { "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", [quote]: "\\" + quote };
    return quote + Array.from(s, (ch) => escapes[ch] || ch).join("") + quote;
  }

  function isTyped(value) {
    return typeof value === "string" && TYPED.test(value);
  }

  /** The first option whose value the page does not read, or null. */
  function outsideDomain(v) {
    for (const name of ["mode", "order", "implied"]) if (!CHOICES[name].includes(v(name))) return name;
    for (const name of PROBABILITIES) if (!(typeof v(name) === "number" && v(name) >= 0 && v(name) <= 1)) return name;
    const topk = v("topk_per_category");
    if (!(Number.isSafeInteger(topk) && topk >= 0)) return "topk_per_category";
    const categories = v("categories");
    if (!(isTyped(categories) || (Array.isArray(categories) && categories.every(isTyped)))) return "categories";
    for (const name of TEXTS) if (!isTyped(v(name))) return name;
    for (const name of FLAGS) if (typeof v(name) !== "boolean") return name;
    return null;
  }

  /** tagger.tags.selection.parse_tag_list */
  function parseTagList(text) {
    if (text === null || text === undefined) return [];
    const items = typeof text === "string" ? text.split(/[,\n]/) : Array.from(text, String);
    return uniqueBy(items.map((item) => item.trim()).filter(Boolean), normalizeTag);
  }

  function uniqueBy(items, keyOf) {
    const seen = new Set();
    return items.filter((item) => {
      const key = keyOf(item);
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  }

  /** tagger.tags.selection.resolve_category for a name. */
  function categoryByName(name, field) {
    const category = BY_NAME.get(name.trim().toLowerCase());
    if (category) return category;
    const choices = CATEGORIES.map((c) => c.name).join(", ");
    throw new SelectionError(`Unknown category ${pyRepr(name)}; choose from: ${choices}.`, field);
  }

  /** tagger.tags.options.parse_category_values: [[name, value]] in first-seen order. */
  function parseCategoryValues(text) {
    const field = "category_thresholds";
    const items = (text || "").split(/[,\n;]/).filter((part) => part.trim()).map((part) => {
      const match = CATEGORY_VALUE.exec(part);
      if (match === null) {
        throw new SelectionError(`Write per-category values as name=value, e.g. artist=0.6; got ${pyRepr(part.trim())}.`, field);
      }
      return [match[1], match[2]];
    });
    const out = new Map();
    for (const [name, value] of items) {
      const category = categoryByName(name, field);
      if (PYTHON_ONLY_NUMBER.test(value)) throw new NeedsServer(field);
      if (!NUMBER.test(value)) throw new SelectionError(`The value for ${category.name} must be a number, not ${pyRepr(value)}.`, field);
      const number = Number(value);
      if (!(number >= 0 && number <= 1)) throw new NeedsServer(field); // the sentence shows Python's float
      out.set(category.name, number);
    }
    return Array.from(out);
  }

  // -- wildcards (tagger.tags.selection.is_pattern, check_pattern, pattern_regex) ---------------------

  const SYNTAX = new Set("^$\\.*+?()[]{}|/".split(""));
  const WILDCARDS = { "*": "[\\s\\S]*", "?": "[\\s\\S]" };

  function isPattern(key) {
    return /(?<!\\)[*?]/.test(key);
  }

  function checkPattern(name, item) {
    const key = normalizeTag(item);
    if (!isPattern(key)) return;
    if (!key.replaceAll("*", "").trim()) {
      throw new SelectionError(`${name}: ${pyRepr(item)} matches every tag; write part of a tag around the *, e.g. *censor*.`, name);
    }
    if (key.split("*").length - 1 > MAX_STARS) {
      throw new SelectionError(`${name}: ${pyRepr(item)} has more than ${MAX_STARS} '*'; use fewer.`, name);
    }
  }

  function patternRegex(key) {
    // An escaped \* or \? is kept as it is: the regex's literal * or ?.
    const body = key.replace(/\\[*?]|./gsu, (token) => WILDCARDS[token] || (SYNTAX.has(token) ? "\\" + token : token));
    return new RegExp("^(?:" + body + ")$", "su");
  }

  /** TagOptions(**values) for option name -> control value: its selection and format, a SelectionError (with .field), or NeedsServer. */
  function options(values) {
    const v = (name) => (values[name] === null || values[name] === undefined ? DEFAULTS[name] : values[name]); // TagOptions.from_values
    const outside = outsideDomain(v);
    if (outside) throw new NeedsServer(outside);
    const mode = v("mode");
    const categories = typeof v("categories") === "string" ? parseTagList(v("categories")) : v("categories");
    // The per-category thresholds, in Python's order of checks: the typed ones, then character.
    const thresholds = mode === "threshold" ? [["character", v("character_threshold")], ...parseCategoryValues(v("category_thresholds"))] : [];
    const categoryThresholds = new Map(thresholds.map(([name, value]) => [BY_NAME.get(name).id, Math.fround(value)]));
    const categoryTopk = new Map(mode === "topk" ? CATEGORIES.map((c) => [c.id, v("topk_per_category")]) : []);
    const wanted = categories.length ? new Set(categories.map((c) => categoryByName(c, "categories").id)) : null;
    const keys = (name) => {
      const items = parseTagList(v(name));
      for (const item of items) checkPattern(name, item);
      return new Set(items.map(normalizeTag));
    };
    return {
      selection: {
        threshold: Math.fround(v("threshold")),
        floor: Math.fround(v("floor")),
        mcut: mode === "mcut",
        categoryThresholds,
        categoryTopk,
        categories: wanted,
        exclude: keys("exclude"),
        include: keys("include"),
        implied: v("implied"),
      },
      format: { underscores: v("underscores"), escapeParentheses: v("escape_parentheses"), order: v("order"), prepend: v("prepend") },
    };
  }

  /** What options() gives, from the server's reading of the values (tagger.web.tabs.tag.page_ruling). */
  function fromRuling(ruling) {
    if (ruling.error) throw new SelectionError(ruling.error, ruling.field);
    const s = ruling.selection;
    return {
      selection: {
        ...s,
        categoryThresholds: new Map(s.categoryThresholds),
        categoryTopk: new Map(s.categoryTopk),
        categories: s.categories === null ? null : new Set(s.categories),
        exclude: new Set(s.exclude),
        include: new Set(s.include),
      },
      format: ruling.format,
    };
  }

  function byScore(a, b) {
    return b[1] - a[1]; // Array.prototype.sort is stable: ties keep their order
  }

  /**
   * tagger.tags.selection.select_tags over the page's payload (tagger.web.page_scores): rows [tag, score,
   * category id, index], best first; exact for any floor at or above the payload's cutoff (TagView
   * asks for more below).
   */
  function selectTags(payload, selection) {
    if (!payload._keys) payload._keys = payload.tags.map((row) => normalizeTag(row[0]));
    const keys = payload._keys;
    const relations = payload.relations || null;
    const implied = selection.implied || "keep";
    const tags = payload.tags;
    const scores = tags.map((row) => row[1]);
    if (relations && implied === "add") {
      // tagger.tags.relations.VocabRelations.lift over the rows: the page holds every row that a
      // row at or above the cutoff implies.
      for (const [p, above] of relations.implies) for (const a of above) if (tags[p][1] > scores[a]) scores[a] = tags[p][1];
    }
    const rows = tags.map((row, i) => [row[0], scores[i], row[2], row[3], i]);
    // vocab.find(tag) normalises the (already normalised) typed tag once more; aliases then apply.
    const typed = (key) => {
      key = normalizeTag(key);
      return relations && ALIASES.has(key) ? normalizeTag(ALIASES.get(key)) : key;
    };
    const matcher = (set) => {
      const exact = new Set([...set].filter((key) => !isPattern(key)).map(typed));
      const patterns = [...set].filter(isPattern).map(patternRegex);
      return { size: set.size, has: (k) => exact.has(k) || patterns.some((re) => re.test(k)) };
    };
    const include = matcher(selection.include);
    const exclude = matcher(selection.exclude);
    const eligible = rows.filter((row, i) => row[1] >= selection.floor && (!include.size || include.has(keys[i])) && !exclude.has(keys[i]));
    const mcut = relations && implied === "add" ? relations.mcut_add : payload.mcut;
    let chosen = groupByCategory(eligible)
      .filter(([category]) => selection.categories === null || selection.categories.has(category.id))
      .flatMap(([category, group]) => {
        if (selection.categoryTopk.has(category.id)) return group.slice().sort(byScore).slice(0, selection.categoryTopk.get(category.id));
        let threshold = selection.threshold;
        if (selection.categoryThresholds.has(category.id)) threshold = selection.categoryThresholds.get(category.id);
        else if (selection.mcut) threshold = Math.fround(Math.max(mcut[category.id], selection.floor));
        return group.filter((row) => row[1] >= threshold);
      })
      .sort(byScore);
    if (relations) {
      if (implied === "remove") {
        const above = new Map(relations.implies);
        const dropped = new Set(chosen.flatMap((row) => above.get(row[4]) || []));
        chosen = chosen.filter((row) => !dropped.has(row[4]));
      }
      chosen = uniqueBy(chosen, (row) => keys[row[4]]); // an aliased tag and the tag it points to: the best one
    }
    return chosen.map((row) => row.slice(0, 4));
  }

  /** tagger.tags.formats.group_by_category: [[category, rows]] in display order. */
  function groupByCategory(rows) {
    const groups = new Map();
    for (const row of rows) {
      if (!groups.has(row[2])) groups.set(row[2], []);
      groups.get(row[2]).push(row);
    }
    return CATEGORIES.filter((c) => groups.has(c.id)).map((c) => [c, groups.get(c.id)]);
  }

  /** tagger.tags.formats.tag_string */
  function tagString(rows, format, separator = ", ") {
    if (format.order === "category") rows = groupByCategory(rows).flatMap(([, group]) => group);
    let leading = parseTagList(format.prepend || "").map((t) => t.replaceAll("\\(", "(").replaceAll("\\)", ")"));
    if (ALIASES.size) leading = parseTagList(leading.map((t) => (ALIASES.has(normalizeTag(t)) ? ALIASES.get(normalizeTag(t)) : t)));
    const seen = new Set(leading.map(normalizeTag));
    const names = rows.map((row) => row[0]).filter((name) => !seen.has(normalizeTag(name)));
    const underscored = (tag) => (format.underscores ? tag.replaceAll(" ", "_") : tag);
    const escaped = (tag) => (format.escapeParentheses ? tag.replaceAll("\\", "\\\\").replaceAll("(", "\\(").replaceAll(")", "\\)") : tag);
    return [...leading, ...names].map((name) => escaped(underscored(name))).join(separator);
  }

  /** tagger.tags.formats.category_tag_strings: [[category, string]]; prepended tags are not in them. */
  function categoryStrings(rows, format) {
    return groupByCategory(rows).map(([category, group]) => [category, tagString(group, { ...format, order: "score", prepend: "" })]);
  }

  root.TagRules = { SelectionError, NeedsServer, configure, normalizeTag, parseTagList, parseCategoryValues, options, fromRuling, selectTags, groupByCategory, tagString, categoryStrings };
  if (typeof module === "object" && module.exports) module.exports = root.TagRules;
})(typeof globalThis !== "undefined" ? globalThis : this);
