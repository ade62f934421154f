/* Tag selection and tag-string formatting in the page: the rules of tagger/tags/options.py
 * (TagOptions) and tagger/tags/results.py (Selection, select_tags, tag_string), so that a filter
 * change re-renders without a server round trip.
 *
 * The Python functions stay the one definition (the API and the CLI use them);
 * tests/test_rules_parity.py runs this file under node against them on thousands of random
 * cases and fails on any difference in the selected tags, their order, the strings or the
 * error sentences. Keep the two in step: change one, change the other.
 *
 * Python semantics reproduced here: str.strip() / \s whitespace, str.lower(), float() parsing
 * (underscores, Unicode digits, inf/nan), repr() of strings and floats in error sentences, and
 * float32 comparisons (numpy compares a float32 score with a Python float in float32).
 *
 * Plain script (no import/export): the page loads it with a <script> tag; node loads it with
 * require(). It defines one global, TagRules.
 */
(function (root) {
  "use strict";

  // Python's str.isspace() set, which is also what \s matches in a Python str pattern.
  const WS = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
  const SPACE = new RegExp("^" + WS + "$");
  const STRIP = new RegExp("^" + WS + "+|" + WS + "+$", "g");
  // re.fullmatch(r"\s*([^=:]+?)\s*[=:]\s*(.*?)\s*", part); parts never hold "\n".
  const CATEGORY_VALUE = new RegExp("^" + WS + "*([^=:]+?)" + WS + "*[=:]" + WS + "*([\\s\\S]*?)" + WS + "*$");
  const DIGIT = /^\p{Nd}$/u;
  const NOT_PRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;

  let CATEGORIES = []; // [{id, name, color}], display order; set by configure()
  let BY_NAME = new Map();
  let BY_ID = new Map();
  let DEFAULTS = {};
  let MODES = ["threshold", "topk", "mcut"];
  let ORDERS = ["score", "category"];
  let IMPLIED = ["keep", "remove", "add"];
  let ALIASES = new Map(); // normalized typed old name -> the shown tag it means (tagger.tags.relations)
  const MAX_STARS = 8; // tagger.tags.results.MAX_STARS

  class SelectionError extends Error {
    constructor(message, field) {
      super(message);
      this.name = "SelectionError";
      this.field = field || null; // the option the sentence is about, for the page to point at
    }
  }

  /** The category table, option defaults and choices, as tagger/web/tabs/tag.py sends them. */
  function configure(config) {
    CATEGORIES = config.categories.map(([id, name, color]) => ({ id, name, color }));
    BY_NAME = new Map(CATEGORIES.map((c) => [c.name, c]));
    BY_ID = new Map(CATEGORIES.map((c) => [c.id, c]));
    DEFAULTS = config.defaults || {};
    MODES = config.modes || MODES;
    ORDERS = config.orders || ORDERS;
    IMPLIED = config.implied || IMPLIED;
    ALIASES = new Map(Object.entries(config.aliases || {}));
  }

  // -- Python string and number semantics ---------------------------------------------------

  function pyStrip(s) {
    return s.replace(STRIP, "");
  }

  function replaceAll(s, from, to) {
    return s.split(from).join(to); // str.replace: left to right, non-overlapping
  }

  /** tagger.engine.vocab.normalize_tag */
  function normalizeTag(tag) {
    let s = replaceAll(replaceAll(tag, "\\(", "("), "\\)", ")");
    s = replaceAll(s, "_", " ");
    return pyStrip(s).toLowerCase();
  }

  function hex(n, width) {
    return n.toString(16).padStart(width, "0");
  }

  /** repr() of a Python str. */
  function pyRepr(s) {
    const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
    let out = quote;
    for (const ch of s) {
      const cp = ch.codePointAt(0);
      if (ch === quote || ch === "\\") out += "\\" + ch;
      else if (ch === "\t") out += "\\t";
      else if (ch === "\n") out += "\\n";
      else if (ch === "\r") out += "\\r";
      else if (cp < 0x20 || cp === 0x7f) out += "\\x" + hex(cp, 2);
      else if (cp < 0x7f || ch === " ") out += ch;
      else if (NOT_PRINTABLE.test(ch)) {
        if (cp <= 0xff) out += "\\x" + hex(cp, 2);
        else if (cp <= 0xffff) out += "\\u" + hex(cp, 4);
        else out += "\\U" + hex(cp, 8);
      } else out += ch;
    }
    return out + quote;
  }

  /** str() / repr() of a Python float. */
  function pyFloatStr(x) {
    if (Number.isNaN(x)) return "nan";
    if (x === Infinity) return "inf";
    if (x === -Infinity) return "-inf";
    if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
    const sign = x < 0 ? "-" : "";
    const [mantissa, exponent] = Math.abs(x).toExponential().split("e"); // shortest round-trip digits
    const digits = mantissa.replace(".", "");
    const point = Number(exponent) + 1; // value = 0.<digits> * 10**point
    if (point > 16 || point < -3) {
      const rest = digits.slice(1);
      const e = point - 1;
      return sign + digits[0] + (rest ? "." + rest : "") + "e" + (e < 0 ? "-" : "+") + String(Math.abs(e)).padStart(2, "0");
    }
    if (point <= 0) return sign + "0." + "0".repeat(-point) + digits;
    if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length) + ".0";
    return sign + digits.slice(0, point) + "." + digits.slice(point);
  }

  /** repr() of what Python holds for a JS number: int when whole and safe, else float. */
  function pyNumberRepr(x) {
    return Number.isInteger(x) && Math.abs(x) < 2 ** 53 ? String(x) : pyFloatStr(x);
  }

  function digitValue(ch) {
    // Unicode decimal digits come in runs of ten, 0 to 9 (a stability guarantee).
    let cp = ch.codePointAt(0);
    let start = cp;
    while (DIGIT.test(String.fromCodePoint(start - 1))) start -= 1;
    return (cp - start) % 10;
  }

  /** Python's float(str): null where Python raises ValueError. */
  function pyFloat(s) {
    let ascii = "";
    for (const ch of s) {
      if (SPACE.test(ch)) ascii += " ";
      else if (DIGIT.test(ch)) ascii += String(digitValue(ch));
      else if (ch.codePointAt(0) < 127) ascii += ch;
      else return null;
    }
    ascii = ascii.replace(/^ +| +$/g, "");
    if (/^[+-]?(inf|infinity|nan)$/i.test(ascii)) {
      const value = /nan/i.test(ascii) ? NaN : Infinity;
      return ascii[0] === "-" ? -value : value;
    }
    // Underscores only between two digits.
    if (/(^|[^0-9])_|_($|[^0-9])/.test(ascii)) return null;
    ascii = ascii.replace(/_/g, "");
    if (!/^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/.test(ascii)) return null;
    return Number(ascii);
  }

  // -- tagger.tags.results / tagger.tags.options ------------------------------------------------------

  /** tagger.tags.results.parse_tag_list */
  function parseTagList(text) {
    if (text === null || text === undefined) return [];
    const items = typeof text === "string" ? text.split(/[,\n]/) : Array.from(text, String);
    const seen = new Set();
    const out = [];
    for (let item of items) {
      item = pyStrip(item);
      const key = normalizeTag(item);
      if (item && !seen.has(key)) {
        seen.add(key);
        out.push(item);
      }
    }
    return out;
  }

  function categoryByName(name) {
    const category = BY_NAME.get(pyStrip(name).toLowerCase());
    if (category) return category;
    const choices = CATEGORIES.map((c) => c.name).join(", ");
    throw new SelectionError(`Unknown category ${pyRepr(name)}; choose from: ${choices}.`);
  }

  /** tagger.tags.results.resolve_category for a name or an id. */
  function resolveCategory(key) {
    if (typeof key === "number" && Number.isInteger(key)) {
      const category = BY_ID.get(key);
      if (category) return category;
      throw new SelectionError(`Unknown category id ${key}; ids run from 0 to ${CATEGORIES.length - 1}.`);
    }
    return categoryByName(String(key));
  }

  /** tagger.tags.options.parse_category_values: [[name, value]] in first-seen order. */
  function parseCategoryValues(text) {
    if (!text) return [];
    const items = [];
    for (const part of text.split(/[,\n;]/)) {
      if (!pyStrip(part)) continue;
      const match = CATEGORY_VALUE.exec(part);
      if (match === null) {
        throw new SelectionError(
          `Write per-category values as name=value, e.g. artist=0.6; got ${pyRepr(pyStrip(part))}.`,
          "category_thresholds",
        );
      }
      items.push([match[1], match[2]]);
    }
    const out = new Map();
    for (const [name, value] of items) {
      let category;
      try {
        category = resolveCategory(name);
      } catch (e) {
        e.field = "category_thresholds";
        throw e;
      }
      const number = pyFloat(value);
      if (number === null) {
        throw new SelectionError(
          `The value for ${category.name} must be a number, not ${pyRepr(value)}.`,
          "category_thresholds",
        );
      }
      out.set(category.name, number);
    }
    return Array.from(out);
  }

  // -- wildcards (tagger.tags.results.is_pattern, check_pattern, pattern_regex) ---------------------

  const SYNTAX = new Set("^$\\.*+?()[]{}|/".split(""));

  function isPattern(key) {
    return /(?<!\\)[*?]/.test(key);
  }

  function checkPattern(name, item) {
    const key = normalizeTag(item);
    if (!isPattern(key)) return;
    if (!pyStrip(replaceAll(key, "*", ""))) {
      throw new SelectionError(`${name}: ${pyRepr(item)} matches every tag; write part of a tag around the *, e.g. *censor*.`, name);
    }
    if (key.split("*").length - 1 > MAX_STARS) {
      throw new SelectionError(`${name}: ${pyRepr(item)} has more than ${MAX_STARS} '*'; use fewer.`, name);
    }
  }

  function patternRegex(key) {
    let out = "";
    for (const token of key.match(/\\[*?]|./gsu) || []) {
      if (token === "*") out += "[\\s\\S]*";
      else if (token === "?") out += "[\\s\\S]";
      else {
        const ch = Array.from(token).pop();
        out += SYNTAX.has(ch) ? "\\" + ch : ch;
      }
    }
    return new RegExp("^(?:" + out + ")$", "su");
  }

  function describe(value) {
    if (typeof value === "string") return pyRepr(value);
    if (typeof value === "number") return pyNumberRepr(value);
    if (typeof value === "boolean") return value ? "True" : "False";
    return String(value);
  }

  /** tagger.tags.results._check_probability: the float32 value the scores are compared with. */
  function checkProbability(name, value, field) {
    let number = value;
    if (typeof value === "string") number = pyFloat(value);
    else if (typeof value === "boolean") number = Number(value);
    else if (typeof value !== "number") number = null;
    if (number === null) throw new SelectionError(`${name} must be a number between 0 and 1, not ${describe(value)}.`, field);
    if (!(number >= 0 && number <= 1)) throw new SelectionError(`${name} must be between 0 and 1, not ${pyFloatStr(number)}.`, field);
    return Math.fround(number);
  }

  /** tagger.tags.results._check_count */
  function checkCount(name, value, field) {
    if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
    throw new SelectionError(`${name} must be a whole number of 0 or more, not ${describe(value)}.`, field);
  }

  function valueOf(values, name) {
    const value = values[name];
    return value === null || value === undefined ? DEFAULTS[name] : value; // TagOptions.from_values
  }

  /**
   * TagOptions(**values): the selection and format, or a SelectionError (with .field) whose
   * sentence is Python's. ``values`` maps option names to control values.
   */
  function options(values) {
    const v = (name) => valueOf(values, name);
    const mode = v("mode");
    const order = v("order");
    if (!MODES.includes(mode)) throw new SelectionError(`mode must be one of ${MODES.join(", ")}; got ${describe(mode)}.`, "mode");
    if (!ORDERS.includes(order)) throw new SelectionError(`order must be one of ${ORDERS.join(", ")}; got ${describe(order)}.`, "order");
    let categories = v("categories");
    if (typeof categories === "string") categories = parseTagList(categories);
    let perCategory = [];
    const typed = new Set(); // categories whose threshold comes from the per-category box
    if (mode === "threshold") {
      const merged = new Map([["character", v("character_threshold")]]);
      for (const [name, value] of parseCategoryValues(v("category_thresholds"))) {
        merged.set(name, value);
        typed.add(name);
      }
      perCategory = Array.from(merged);
    }
    // TagOptions checks top-k itself, so that the sentence names the option.
    const topk = mode === "topk" ? checkCount("topk_per_category", v("topk_per_category"), "topk_per_category") : null;
    // Selection.__post_init__, in its order.
    const threshold = checkProbability("threshold", v("threshold"), "threshold");
    const floor = checkProbability("floor", v("floor"), "floor");
    const categoryThresholds = new Map();
    for (const [name, value] of perCategory) {
      const field = typed.has(name) ? "category_thresholds" : "character_threshold";
      categoryThresholds.set(resolveCategory(name).id, checkProbability(`threshold for ${name}`, value, field));
    }
    const categoryTopk = new Map();
    if (mode === "topk") {
      for (const c of CATEGORIES) categoryTopk.set(c.id, topk);
    }
    let wanted = null;
    if (categories && categories.length) {
      wanted = new Set();
      for (const c of categories) wanted.add(resolveCategory(c).id);
    }
    const implied = v("implied");
    if (!IMPLIED.includes(implied)) {
      throw new SelectionError(`implied must be one of ${IMPLIED.join(", ")}; got ${describe(implied)}.`, "implied");
    }
    const keys = (name) => {
      const items = parseTagList(v(name));
      for (const item of items) checkPattern(name, item);
      return new Set(items.map(normalizeTag));
    };
    return {
      selection: {
        threshold,
        floor,
        mcut: mode === "mcut",
        categoryThresholds,
        categoryTopk,
        categories: wanted,
        exclude: keys("exclude"),
        include: keys("include"),
        implied,
      },
      format: {
        underscores: Boolean(v("underscores")),
        escapeParentheses: Boolean(v("escape_parentheses")),
        order,
        prepend: v("prepend"),
      },
    };
  }

  /** A payload row's comparison key, cached on the payload. */
  function rowKeys(payload) {
    if (!payload._keys) payload._keys = payload.tags.map((row) => normalizeTag(row[0]));
    return payload._keys;
  }

  function byScore(a, b) {
    return b[1] - a[1]; // Array.prototype.sort is stable: ties keep their order
  }

  /**
   * tagger.tags.results.select_tags over the page's payload (tagger.tags.results.page_scores): rows
   * [tag, score, category id, index], best first. The payload holds every tag at or above its
   * cutoff, so the selection is exact for any floor at or above it (see needsMoreScores).
   */
  function selectTags(payload, selection) {
    const keys = rowKeys(payload);
    const relations = payload.relations || null;
    const implied = selection.implied || "keep";
    let rows = payload.tags;
    if (relations && implied === "add") {
      // tagger.tags.relations.VocabRelations.lift over the rows: the page holds every row that a
      // row at or above the cutoff implies.
      const lifted = rows.map((row) => row[1]);
      for (const [p, above] of relations.implies) for (const a of above) if (rows[p][1] > lifted[a]) lifted[a] = rows[p][1];
      rows = rows.map((row, i) => [row[0], lifted[i], row[2], row[3], i]);
    } else {
      rows = rows.map((row, i) => [row[0], row[1], row[2], row[3], i]);
    }
    // vocab.find(tag) normalises the (already normalised) typed tag once more; aliases then apply.
    const typed = (key) => {
      key = normalizeTag(key);
      return relations && ALIASES.has(key) ? normalizeTag(ALIASES.get(key)) : key;
    };
    const matcher = (set) => {
      const exact = new Set();
      const patterns = [];
      for (const key of set) {
        if (isPattern(key)) patterns.push(patternRegex(key));
        else exact.add(typed(key));
      }
      return { size: set.size, has: (k) => exact.has(k) || patterns.some((re) => re.test(k)) };
    };
    const include = matcher(selection.include);
    const exclude = matcher(selection.exclude);
    const eligible = new Map();
    rows.forEach((row, i) => {
      if (!(row[1] >= selection.floor)) return;
      if (include.size && !include.has(keys[i])) return;
      if (exclude.has(keys[i])) return;
      if (!eligible.has(row[2])) eligible.set(row[2], []);
      eligible.get(row[2]).push(row);
    });
    const mcut = relations && implied === "add" ? relations.mcut_add : payload.mcut;
    let chosen = [];
    for (const category of CATEGORIES) {
      if (selection.categories !== null && !selection.categories.has(category.id)) continue;
      const group = eligible.get(category.id);
      if (!group) continue;
      if (selection.categoryTopk.has(category.id)) {
        chosen.push(...group.slice().sort(byScore).slice(0, selection.categoryTopk.get(category.id)));
        continue;
      }
      let threshold;
      if (selection.categoryThresholds.has(category.id)) threshold = selection.categoryThresholds.get(category.id);
      else if (selection.mcut) threshold = Math.fround(Math.max(mcut[category.id], selection.floor));
      else threshold = selection.threshold;
      for (const row of group) if (row[1] >= threshold) chosen.push(row);
    }
    chosen.sort(byScore);
    if (relations) {
      if (implied === "remove") {
        const above = new Map(relations.implies);
        const dropped = new Set();
        for (const row of chosen) for (const a of above.get(row[4]) || []) dropped.add(a);
        chosen = chosen.filter((row) => !dropped.has(row[4]));
      }
      const shown = new Set(); // an aliased tag and the tag it points to: the best one
      chosen = chosen.filter((row) => {
        const key = keys[row[4]];
        if (shown.has(key)) return false;
        shown.add(key);
        return true;
      });
    }
    return chosen.map((row) => row.slice(0, 4));
  }

  /** Whether a floor this low needs scores the payload does not hold. */
  function needsMoreScores(payload, floor) {
    return Math.fround(floor) < payload.cutoff;
  }

  /** tagger.tags.results.group_by_category: [[category, rows]] in display order. */
  function groupByCategory(rows) {
    const groups = new Map();
    for (const row of rows) {
      if (!groups.has(row[2])) groups.set(row[2], []);
      groups.get(row[2]).push(row);
    }
    return CATEGORIES.filter((c) => groups.has(c.id)).map((c) => [c, groups.get(c.id)]);
  }

  /** tagger.tags.results.format_tag */
  function formatTag(tag, underscores, escapeParentheses) {
    if (underscores) tag = replaceAll(tag, " ", "_");
    if (escapeParentheses) tag = replaceAll(replaceAll(replaceAll(tag, "\\", "\\\\"), "(", "\\("), ")", "\\)");
    return tag;
  }

  /** tagger.tags.results.tag_string */
  function tagString(rows, format, separator = ", ") {
    if (format.order === "category") rows = groupByCategory(rows).flatMap(([, group]) => group);
    let leading = parseTagList(format.prepend || "").map((t) => replaceAll(replaceAll(t, "\\(", "("), "\\)", ")"));
    if (ALIASES.size) leading = parseTagList(leading.map((t) => (ALIASES.has(normalizeTag(t)) ? ALIASES.get(normalizeTag(t)) : t)));
    const seen = new Set(leading.map(normalizeTag));
    const names = rows.map((row) => row[0]).filter((name) => !seen.has(normalizeTag(name)));
    return [...leading, ...names].map((name) => formatTag(name, format.underscores, format.escapeParentheses)).join(separator);
  }

  /** tagger.tags.results.category_tag_strings: [[category, string]]; prepended tags are not in them. */
  function categoryStrings(rows, format) {
    return groupByCategory(rows).map(([category, group]) => [
      category,
      tagString(group, { underscores: format.underscores, escapeParentheses: format.escapeParentheses, order: "score", prepend: "" }),
    ]);
  }

  root.TagRules = {
    SelectionError,
    configure,
    normalizeTag,
    parseTagList,
    parseCategoryValues,
    pyFloat,
    pyRepr,
    pyFloatStr,
    options,
    selectTags,
    needsMoreScores,
    groupByCategory,
    tagString,
    categoryStrings,
    get categories() {
      return CATEGORIES;
    },
  };
  if (typeof module === "object" && module.exports) module.exports = root.TagRules;
})(typeof globalThis !== "undefined" ? globalThis : this);
