/* The Tag tab's results, drawn in the page with tag_rules.js from the scores the server sent once
 * per image (tagger.web.page_scores): a filter change redraws without a server round trip.
 *
 * Clicks go to the server as the view's events: "tag_select" (show a tag's heatmap),
 * "tag_exclude" (✕) and "tag_unexclude" (a chip's ✕ or "undo"); "need_scores" asks for the scores
 * below the payload's cutoff. ✕ is safe: excluded tags are chips with an "undo" notice, and while
 * the pointer is over the view an excluded row stays in place, so the next click does not land on
 * the row below. The quick bar and card headers write into the Tag tab's controls (and the
 * hidden cards box, JSON), which redraw through their change.
 *
 * Plain script for the page's <script> tag; defines one global, TagView. Needs TagRules.
 */
(function (root) {
  "use strict";

  const MAX_BARS = 40; // bars drawn per category; the strings always hold every selected tag
  const NOTICE_MS = 10000; // how long the "excluded X · undo" notice stays
  const views = new Map(); // view element id -> its state (see state())
  let rulesConfig = null; // TagRules.configure's argument, kept to reorder the categories
  let orderShown = null; // the cards box's order TagRules was given, as JSON
  let categoryOrder = []; // the names of every category, in the order TagRules holds

  function luminance(rgb) {
    const [r, g, b] = rgb.map((c) => c / 255).map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  }

  /** A category colour for a white page: pale ones (under WCAG's 3:1 for graphics) darkened in steps until they reach it. */
  function onWhite(hex) {
    if (!/^#[0-9a-f]{6}$/i.test(hex)) return hex;
    let rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    let step = 0;
    for (; step < 20 && 1.05 / (luminance(rgb) + 0.05) < 3; step++) rgb = rgb.map((c) => Math.round(c * 0.92));
    return step ? "#" + rgb.map((c) => c.toString(16).padStart(2, "0")).join("") : hex;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function state(id) {
    if (!views.has(id)) {
      views.set(id, {
        element: null,
        trigger: null,
        lastGood: null,
        payloadId: null,
        asked: null, // the floor the page asked more scores for
        askedRuling: null, // the key of the values it asked the server to read
        widest: null, // the payload of this image with the lowest cutoff (answers may come out of order)
        rulings: new Map(), // values' key -> the server's reading of them (TagRules.fromRuling)
        hover: false, // the pointer is over the view
        held: new Map(), // normalised tag -> tag: excluded while the pointer was over the view, drawn in place
        notice: null, // the tag the "excluded X · undo" notice is about
        noticeTimer: null,
        anchor: null, // {tag, top, held}: the clicked row and where it was, until the redraw
        collapsed: new Set(), // names of the cards folded by their chevron (page only)
        values: null, // the option values of the last drawing, by name
        // update()'s config: the quick bar's choices and control ids, the fields (option name ->
        // elem_id), the cards box
        config: {},
        cards: { order: [], topk: {} }, // the cards box's value: card order, per-card top k
        categoriesOpen: false, // the quick bar's category list is unfolded
        focusHandle: null, // the card whose handle gets the focus back after a keyboard move
      });
    }
    return views.get(id);
  }

  /** Called by the view's js_on_load: remember how to send events, and handle clicks. */
  function bind(element, trigger, key) {
    const s = state(key);
    s.element = element;
    s.trigger = trigger;
    // Delegated: handle(event.target or its nearest ancestor matching selector, event).
    const on = (type, selector, handle, capture = false) =>
      element.addEventListener(type, (event) => {
        const target = event.target.closest(selector);
        if (target) handle(target, event);
      }, capture);
    // The chips and the notice above the cards appear or go with an exclusion: scroll by as
    // much as the clicked row moved, so it stays under the pointer.
    new MutationObserver(() => {
      const handle = s.focusHandle !== null && element.querySelector(`.tv-drag[data-category="${s.focusHandle}"]`);
      if (handle) {
        s.focusHandle = null;
        handle.focus();
      }
      if (!s.anchor) return;
      const row = [...element.querySelectorAll(".tv-row")].find((r) => r.dataset.tag === s.anchor.tag);
      if (!row || row.classList.contains("tv-held") !== s.anchor.held) return;
      const moved = row.getBoundingClientRect().top - s.anchor.top;
      s.anchor = null;
      if (Math.abs(moved) > 0.5) window.scrollBy(0, moved);
    }).observe(element, { childList: true, subtree: true });
    element.addEventListener("pointerenter", () => (s.hover = true));
    element.addEventListener("pointerleave", (event) => {
      if (event.pointerType === "touch") return; // a finger lifts after every tap: keep rows until the next redraw
      s.hover = false;
      releaseHeld(s);
    });
    on("change", ".tv-cat-threshold", (input) => setCategoryThreshold(s, input.dataset.category, input.value));
    on("change", ".tv-cat-topk", (k) => {
      const topk = Math.max(1, Math.round(Number(k.value) || 1));
      writeCards(s, { topk: { ...s.cards.topk, [k.dataset.category]: topk } });
    });
    on("change", ".tv-q", (quick) => setControl(s.config.quick.ids[quick.dataset.field], quick));
    // <details> "toggle" does not bubble: listen while it goes down.
    on("toggle", ".tv-q-categories", (details) => {
      s.categoriesOpen = details.open;
    }, true);
    on("pointerdown", ".tv-drag", (handle, event) => {
      event.preventDefault(); // no text selection, no scroll while a finger drags
      handle.setPointerCapture(event.pointerId);
      handle.closest(".tv-category").classList.add("tv-dragged");
    });
    on("pointerup", ".tv-drag", (handle, event) => {
      handle.closest(".tv-category").classList.remove("tv-dragged");
      const under = document.elementFromPoint(event.clientX, event.clientY);
      const target = under && under.closest(".tv-category");
      if (!target || target.dataset.category === handle.dataset.category) return;
      const box = target.getBoundingClientRect();
      const after = event.clientY > box.top + box.height / 2 || (event.clientY >= box.top && event.clientX > box.left + box.width / 2);
      moveCard(s, handle.dataset.category, target.dataset.category, after);
    });
    on("keydown", ".tv-drag", (handle, event) => {
      const step = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1 }[event.key];
      if (!step) return;
      event.preventDefault();
      const names = [...element.querySelectorAll(".tv-category")].map((card) => card.dataset.category);
      const other = names[names.indexOf(handle.dataset.category) + step];
      if (other === undefined) return;
      s.focusHandle = handle.dataset.category;
      moveCard(s, handle.dataset.category, other, step > 0);
    });
    // The click selectors match disjoint buttons: one handler runs per click.
    on("click", ".tv-rule-switch", (ruleSwitch) => {
      const name = ruleSwitch.dataset.category;
      const topk = { ...s.cards.topk };
      if (name in topk) delete topk[name];
      else topk[name] = Number(s.values && s.values.topk_per_category) || 20;
      writeCards(s, { topk });
    });
    on("click", ".tv-chevron", (chevron) => {
      const card = chevron.closest(".tv-category");
      const name = card.dataset.category;
      const folded = !s.collapsed.has(name);
      if (folded) s.collapsed.add(name);
      else s.collapsed.delete(name);
      card.classList.toggle("tv-collapsed", folded);
      chevron.setAttribute("aria-expanded", String(!folded));
      chevron.setAttribute("aria-label", `${folded ? "Expand" : "Collapse"} ${name}`);
    });
    on("click", ".tv-undo, .tv-chip-x", (putBack) => {
      const tag = putBack.dataset.tag;
      const row = putBack.closest(".tv-row");
      if (row) s.anchor = { tag, top: row.getBoundingClientRect().top, held: false };
      if (s.notice !== null && TagRules.normalizeTag(s.notice) === TagRules.normalizeTag(tag)) clearNotice(s);
      trigger("tag_unexclude", { tag });
    });
    on("click", ".tv-copy", (copy) => copyText(copy.closest(".tv-category").querySelector(".tv-string").textContent, copy));
    on("click", ".tv-x", (exclude) => {
      const row = exclude.closest(".tv-row");
      const tag = row.dataset.tag;
      if (s.hover) {
        s.held.set(TagRules.normalizeTag(tag), tag);
        s.anchor = { tag, top: row.getBoundingClientRect().top, held: true };
      }
      showNotice(s, tag);
      trigger("tag_exclude", { tag });
    });
    on("click", ".tv-tag", (tag) => {
      element.querySelectorAll(".tv-row.tv-active").forEach((row) => row.classList.remove("tv-active"));
      tag.closest(".tv-row").classList.add("tv-active");
      trigger("tag_select", { tag: tag.closest(".tv-row").dataset.tag });
    });
  }

  /** A card's threshold written into the per-category box (name=value, ...) as a person would type it: its change redraws. */
  function setCategoryThreshold(s, name, value) {
    const box = textBox((s.config.fields || {}).category_thresholds);
    if (!box) return;
    let values = new Map(); // if the box holds a mistake, the header's value replaces it
    try {
      values = new Map(TagRules.parseCategoryValues(box.value));
    } catch (e) {}
    values.set(name, value === "" ? undefined : Number(value));
    const text = [...values].filter(([, v]) => v !== undefined && !Number.isNaN(v)).map(([n, v]) => `${n}=${v}`).join(", ");
    typeInto(box, text);
  }

  function textBox(elemId) {
    return elemId ? document.querySelector(`#${elemId} textarea, #${elemId} input`) : null;
  }

  /** A value put into a control's input as a person would type it: Gradio sees the input and change. */
  function typeInto(input, value) {
    input.value = value;
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  /** The cards box (JSON ``{order, topk}``) with ``change`` merged in. */
  function writeCards(s, change) {
    const box = textBox(s.config.cards);
    if (box) typeInto(box, JSON.stringify({ ...s.cards, ...change }));
  }

  /** ``name``'s card moved before or after ``target``'s: the order of every category, cards or not. */
  function moveCard(s, name, target, after) {
    const order = categoryOrder.filter((n) => n !== name);
    order.splice(order.indexOf(target) + (after ? 1 : 0), 0, name);
    writeCards(s, { order });
  }

  /** A quick bar input's value given to the Tag tab's control ``elemId`` (a radio, slider or checkbox group). */
  function setControl(elemId, quick) {
    const field = document.getElementById(elemId);
    if (!field) return;
    if (quick.type === "checkbox") {
      const box = field.querySelector(`input[type=checkbox][name="${CSS.escape(quick.value)}"]`);
      if (box && box.checked !== quick.checked) box.click();
    } else if (quick.tagName === "SELECT") {
      const radio = field.querySelector(`input[type=radio][value="${CSS.escape(quick.value)}"]`);
      if (radio && !radio.checked) radio.click();
    } else {
      const number = field.querySelector("input[type=number]");
      if (!number) return;
      typeInto(number, quick.value);
      number.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
      number.dispatchEvent(new Event("blur"));
    }
  }

  /** The category order of the cards box given to TagRules (cards and ``order=category`` strings follow it). */
  function applyOrder(order) {
    const key = JSON.stringify(order);
    if (!rulesConfig || key === orderShown) return;
    orderShown = key;
    const rank = new Map(order.map((name, i) => [name, i]));
    const at = (c) => (rank.has(c[1]) ? rank.get(c[1]) : order.length); // the others after, as they were (a stable sort)
    const categories = rulesConfig.categories.slice().sort((a, b) => at(a) - at(b));
    categoryOrder = categories.map((c) => c[1]);
    TagRules.configure({ ...rulesConfig, categories });
  }

  function parseCards(text) {
    let cards = {};
    try {
      cards = JSON.parse(text || "{}") || {}; // "null" reads as no cards, like a mistake
    } catch (e) {}
    return { order: Array.isArray(cards.order) ? cards.order : [], topk: cards.topk && typeof cards.topk === "object" ? cards.topk : {} };
  }

  /** TagRules.options (or the server's ruling), then the top k of the cards switched to it in threshold mode. */
  function buildOptions(byName, cards, ruling = null) {
    const built = ruling ? TagRules.fromRuling(ruling) : TagRules.options(byName);
    if ((byName.mode || "threshold") === "threshold") {
      for (const [name, k] of Object.entries(cards.topk)) {
        const category = rulesConfig && rulesConfig.categories.find((c) => c[1] === name);
        if (category) built.selection.categoryTopk.set(category[0], k);
      }
    }
    return built;
  }

  function showNotice(s, tag) {
    s.notice = tag;
    clearTimeout(s.noticeTimer);
    s.noticeTimer = setTimeout(() => clearNotice(s), NOTICE_MS);
  }

  function clearNotice(s) {
    s.notice = null;
    clearTimeout(s.noticeTimer);
    if (s.element) s.element.querySelectorAll(".tv-notice").forEach((node) => node.remove());
  }

  /** The pointer left: drop the rows held in place (and cards left with none). */
  function releaseHeld(s) {
    if (!s.held.size || !s.element) return;
    s.held.clear();
    s.element.querySelectorAll(".tv-row.tv-held").forEach((row) => row.remove());
    [...s.element.querySelectorAll(".tv-category")].filter((card) => !card.querySelector(".tv-row")).forEach((card) => card.remove());
  }

  function copyText(text, button) {
    const done = () => {
      const label = button.textContent;
      button.textContent = "Copied";
      button.classList.add("tv-copied");
      setTimeout(() => {
        button.textContent = label;
        button.classList.remove("tv-copied");
      }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => legacyCopy(text) && done());
    } else if (legacyCopy(text)) done();
  }

  function legacyCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.cssText = "position:fixed;opacity:0";
    document.body.appendChild(area);
    area.select();
    try {
      return document.execCommand("copy");
    } catch (e) {
      return false;
    } finally {
      area.remove();
    }
  }

  /** A sentence under a control (by its elem_id), or none: errors show where they are made. */
  function showFieldError(elemId, message) {
    const field = elemId && document.getElementById(elemId);
    if (!field) return;
    field.classList.toggle("tv-invalid", Boolean(message));
    let note = field.querySelector(":scope > .tv-field-error");
    if (note && !message) note.remove();
    if (!message) return;
    if (!note) {
      note = field.appendChild(document.createElement("div"));
      note.className = "tv-field-error";
      note.setAttribute("role", "alert");
    }
    if (note.textContent !== message) note.textContent = message;
  }

  /** Options from the controls' values, errors next to their field; values left to the server give ``ask`` until ``rulings`` answers. */
  function readOptions(names, values, fields, cards, rulings) {
    const byName = Object.fromEntries(names.map((name, i) => [name, values[i]]));
    const key = JSON.stringify(byName);
    let built = null;
    let error = null;
    let ask = null;
    try {
      built = buildOptions(byName, cards, rulings.get(key));
    } catch (e) {
      if (e instanceof TagRules.NeedsServer) ask = key;
      else if (e instanceof TagRules.SelectionError) error = e;
      else throw e;
    }
    for (const name of Object.keys(fields)) {
      showFieldError(fields[name], error && (error.field === name || (!error.field && name === "category_thresholds")) ? error.message : null);
    }
    return { values: byName, built, error, ask };
  }

  function bars(rows, category, held) {
    const shown = rows.slice(0, MAX_BARS).map(([tag, score]) => {
      const percent = (Math.min(Math.max(score, 0), 1) * 100).toFixed(1);
      const isHeld = held.has(TagRules.normalizeTag(tag));
      const action = isHeld
        ? `<button type="button" class="tv-undo" data-tag="${escapeHtml(tag)}" title="Put “${escapeHtml(tag)}” back" aria-label="Undo excluding ${escapeHtml(tag)}">undo</button>`
        : `<button type="button" class="tv-x" title="Exclude “${escapeHtml(tag)}”" aria-label="Exclude ${escapeHtml(tag)}">✕</button>`;
      return (
        `<li class="tv-row${isHeld ? " tv-held" : ""}" data-tag="${escapeHtml(tag)}">` +
        `<button type="button" class="tv-tag" title="Show where “${escapeHtml(tag)}” comes from in the image">` +
        `<span class="tv-label">${escapeHtml(tag)}</span><span class="tv-score">${score.toFixed(3)}</span>` +
        `<span class="tv-bar" style="width:${percent}%"></span></button>` +
        action +
        `</li>`
      );
    });
    const more = rows.length > MAX_BARS ? `<li class="tv-more">… and ${rows.length - MAX_BARS} more in the string below</li>` : "";
    return `<ol class="tv-bars" aria-label="${escapeHtml(category.name)} tags">${shown.join("")}${more}</ol>`;
  }

  /** The card's rule in its header: in threshold mode a switch (≥ threshold or top k) and its value; else top k or MCut. */
  function ruleControl(category, selection, mode) {
    const name = escapeHtml(category.name);
    if (mode === "topk") return `<span class="tv-cat-rule">top ${selection.categoryTopk.get(category.id)}</span>`;
    if (mode === "mcut") return `<span class="tv-cat-rule">MCut</span>`;
    const topk = selection.categoryTopk.has(category.id);
    const button =
      `<button type="button" class="tv-rule-switch" data-category="${name}" aria-pressed="${topk}" ` +
      `title="${topk ? "Top k: switch to a threshold" : "Threshold: switch to the top k"}" aria-label="${name}: ${topk ? "top k" : "threshold"} (switch)">${topk ? "top" : "≥"}</button>`;
    const exact = selection.categoryThresholds.has(category.id) ? selection.categoryThresholds.get(category.id) : selection.threshold;
    // toFixed(4): the slider's float32 0.35 is 0.3499999940395355.
    const input = topk
      ? `class="tv-cat-topk" data-category="${name}" min="1" max="200" step="1" value="${selection.categoryTopk.get(category.id)}" aria-label="${name} top k" title="How many ${name} tags"`
      : `class="tv-cat-threshold" data-category="${name}" min="0" max="1" step="0.01" value="${Number(Number(exact).toFixed(4))}" aria-label="${name} threshold" title="The score a ${name} tag needs"`;
    return `<span class="tv-cat-rule">${button}<input type="number" ${input}></span>`;
  }

  function categoryBlock(category, rows, string, held, count, rule, collapsed) {
    const name = escapeHtml(category.name);
    return (
      `<section class="tv-category${collapsed ? " tv-collapsed" : ""}" id="tv-${name}" data-category="${name}" style="--tv-color:${escapeHtml(category.color)};--tv-on-white:${escapeHtml(onWhite(category.color))}">` +
      `<header><button type="button" class="tv-drag" data-category="${name}" title="Drag to move the card (or use the arrow keys)" ` +
      `aria-label="Move ${name}: drag, or press the arrow keys">⠿</button>` +
      `<button type="button" class="tv-chevron" aria-expanded="${!collapsed}" aria-label="${collapsed ? "Expand" : "Collapse"} ${name}"></button>` +
      `<span class="tv-swatch"></span><span class="tv-name">${name}</span>` +
      `<span class="tv-count">${count}</span>` +
      rule +
      `<button type="button" class="tv-copy" title="Copy the ${escapeHtml(category.name)} tags">Copy</button></header>` +
      bars(rows, category, held) +
      `<div class="tv-string">${escapeHtml(string)}</div>` +
      `</section>`
    );
  }

  /** The excluded tags as chips (✕ puts one back), and the notice about the last one. */
  function excludedBar(excluded, notice) {
    if (!excluded.length) return "";
    const chips = excluded.map(
      (tag) =>
        `<span class="tv-chip"><span class="tv-chip-label">${escapeHtml(tag)}</span>` +
        `<button type="button" class="tv-chip-x" data-tag="${escapeHtml(tag)}" title="Put “${escapeHtml(tag)}” back" aria-label="Stop excluding ${escapeHtml(tag)}">✕</button></span>`,
    );
    const shown = notice !== null && excluded.some((tag) => TagRules.normalizeTag(tag) === TagRules.normalizeTag(notice));
    const note = shown
      ? `<div class="tv-notice" role="status">Excluded <b>${escapeHtml(notice)}</b> · ` +
        `<button type="button" class="tv-undo" data-tag="${escapeHtml(notice)}">undo</button></div>`
      : "";
    return note + `<div class="tv-excluded" aria-label="Excluded tags"><span class="tv-excluded-title">Excluded:</span>${chips.join("")}</div>`;
  }

  /** The bar above the cards: mode, its threshold or k, and the categories, with the controls' values. */
  function quickBar(quick, byName, open) {
    if (!quick) return "";
    const mode = byName.mode || "threshold";
    const modes = quick.modes.map(([label, value]) => `<option value="${escapeHtml(value)}"${value === mode ? " selected" : ""}>${escapeHtml(label)}</option>`);
    const number = (field, label, min, max, step) =>
      `<label class="tv-q-field">${label} <input type="number" class="tv-q" data-field="${field}" min="${min}" max="${max}" step="${step}" ` +
      `value="${Number(Number(byName[field]).toFixed(4))}"></label>`;
    const value = mode === "threshold" ? number("threshold", "≥", 0, 1, 0.01) : mode === "topk" ? number("topk_per_category", "top", 1, 200, 1) : "";
    const ticked = new Set(Array.isArray(byName.categories) ? byName.categories : TagRules.parseTagList(byName.categories || ""));
    const boxes = quick.categories.map(
      (name) => `<label class="tv-q-category"><input type="checkbox" class="tv-q" data-field="categories" value="${escapeHtml(name)}"${ticked.has(name) ? " checked" : ""}> ${escapeHtml(name)}</label>`,
    );
    return (
      `<div class="tv-quick" role="toolbar" aria-label="Mode, threshold and categories">` +
      `<select class="tv-q" data-field="mode" aria-label="Mode">${modes.join("")}</select>${value}` +
      `<details class="tv-q-categories"${open ? " open" : ""}><summary>Categories · ${ticked.size}</summary>` +
      `<div class="tv-q-list">${boxes.join("")}</div></details></div>`
    );
  }

  function banner(message, kind) {
    return `<div class="tv-banner tv-${kind}" role="${kind === "error" ? "alert" : "status"}">${escapeHtml(message)}</div>`;
  }

  function summary(count, payload) {
    let text = `<b>${count} tag${count === 1 ? "" : "s"}</b>`;
    if (payload.seconds !== undefined && payload.seconds !== null) text += ` · model ${payload.seconds.toFixed(2)} s on ${escapeHtml(payload.device)}`;
    return `<div class="tv-summary" id="summary">${text}</div>`;
  }

  function wrap(inner) {
    return `<div class="tv">${inner}</div>`;
  }

  function scrollToResults(s) {
    // On a phone the results sit under the upload: bring them into view for a new image.
    if (window.matchMedia && window.matchMedia("(max-width: 768px)").matches && s.element) {
      const target = document.getElementById("tag-results") || s.element;
      setTimeout(() => target.scrollIntoView({ behavior: "smooth", block: "start" }), 50);
    }
  }

  /** The Tag tab's frontend function: [view HTML, string of all tags]; an undefined output keeps what is shown. */
  function update(payload, names, values, config, cardsText) {
    const s = state(config.view);
    s.config = config;
    // A banner over the last good drawing (marked as stale), if any: the string is kept.
    const kept = (message, kind, note = "") =>
      [wrap(banner(message + (s.lastGood ? note : ""), kind) + (s.lastGood ? `<div class="tv-stale">${s.lastGood.html}</div>` : "")), undefined];
    try {
      if (payload && payload.ruling) s.rulings.set(payload.ruling.key, payload.ruling);
      payload = widestPayload(s, payload);
      s.cards = parseCards(cardsText);
      applyOrder(s.cards.order);
      const { values: byName, built, error, ask } = readOptions(names, values, config.fields || {}, s.cards, s.rulings);
      s.values = byName;
      if (!payload) {
        s.lastGood = null;
        return [wrap(`<p class="tv-empty">${escapeHtml(config.empty)}</p>`), ""];
      }
      if (payload.error) {
        // A new image that failed: say why, and keep the last image's tags (marked as such).
        s.payloadId = payload.id;
        return kept(payload.error, "error", " The tags below are from the previous image.");
      }
      const fresh = s.payloadId !== payload.id;
      s.payloadId = payload.id;
      if (error) return kept(error.message, "error", " The tags below are from the last valid settings.");
      if (ask) {
        // Asked once per set of values; the answer comes back with the payload.
        if (s.askedRuling !== ask && s.trigger) {
          s.askedRuling = ask;
          s.trigger("need_scores", { floor: payload.cutoff, key: ask, values: byName });
        }
        return kept("Checking these settings with the server…", "info");
      }
      if (Math.fround(built.selection.floor) < payload.cutoff) {
        // A floor this low needs scores the payload does not hold.
        if (s.asked !== built.selection.floor && s.trigger) {
          s.asked = built.selection.floor;
          s.trigger("need_scores", { floor: built.selection.floor });
        }
        return kept("Fetching the scores below the old floor…", "info");
      }
      s.asked = null;
      // No ticked category shows nothing (TagOptions would read an empty list as "all").
      const noCategory = Array.isArray(byName.categories) && byName.categories.length === 0;
      const rows = noCategory ? [] : TagRules.selectTags(payload, built.selection);
      const strings = new Map(TagRules.categoryStrings(rows, built.format).map(([c, text]) => [c.id, text]));
      const excluded = TagRules.parseTagList(byName.exclude || "");
      const shownRows = withHeldRows(s, payload, byName, excluded, rows, noCategory);
      const counts = new Map(TagRules.groupByCategory(rows).map(([c, group]) => [c.id, group.length]));
      const blocks = TagRules.groupByCategory(shownRows).map(([category, group]) => {
        const rule = ruleControl(category, built.selection, byName.mode);
        const text = strings.get(category.id) || "";
        const count = counts.get(category.id) || 0;
        return categoryBlock(category, group, text, s.held, count, rule, s.collapsed.has(category.name));
      });
      const html =
        quickBar(config.quick, byName, s.categoriesOpen) + summary(rows.length, payload) + excludedBar(excluded, s.notice) + `<div class="tv-grid">${blocks.join("")}</div>`;
      s.lastGood = { html };
      if (fresh) scrollToResults(s);
      return [wrap(html), TagRules.tagString(rows, built.format)];
    } catch (e) {
      // Every failure reaches the page, never a silent console line.
      console.error(e);
      return [wrap(banner(`The tags could not be re-drawn: ${e && e.message ? e.message : e}`, "error")), undefined];
    }
  }

  /** This image's payload with the most scores seen so far: a late answer for a higher floor keeps them. */
  function widestPayload(s, payload) {
    if (!payload || payload.error) return payload;
    if (!(s.widest && s.widest.id === payload.id && s.widest.cutoff <= payload.cutoff)) s.widest = payload;
    return s.widest;
  }

  /** The selected rows plus, while the pointer is over the view, those excluded since it came (s.held): no row moves under it. */
  function withHeldRows(s, payload, byName, excluded, rows, noCategory) {
    const excludedKeys = new Set(excluded.map(TagRules.normalizeTag));
    for (const key of [...s.held.keys()]) if (!excludedKeys.has(key)) s.held.delete(key); // put back since
    if (!s.hover) s.held.clear();
    if (!s.held.size || noCategory) return rows;
    const others = excluded.filter((tag) => !s.held.has(TagRules.normalizeTag(tag)));
    let asBefore;
    try {
      asBefore = buildOptions({ ...byName, exclude: others.join(", ") }, s.cards);
    } catch (e) {
      if (e instanceof TagRules.NeedsServer) return rows; // settings the server read: no rows held
      throw e;
    }
    return TagRules.selectTags(payload, asBefore.selection);
  }

  /** The Batch tab's line about the settings it uses (the Tag tab's), as Markdown. */
  function settingsText(names, values) {
    const v = Object.fromEntries(names.map((name, i) => [name, values[i]]));
    const code = (text) => "`" + String(text).replace(/`/g, "'") + "`";
    const parts = [];
    if (v.mode === "threshold") {
      parts.push(`threshold ${v.threshold}`, `characters ${v.character_threshold}`);
      if (v.category_thresholds) parts.push(`per category ${code(v.category_thresholds)}`);
    } else parts.push(v.mode === "topk" ? `top ${v.topk_per_category} per category` : "MCut per category");
    parts.push(`never below ${v.floor}`);
    const categories = Array.isArray(v.categories) ? v.categories : TagRules.parseTagList(v.categories || "");
    parts.push(`categories ${categories.length ? categories.join(", ") : "none"}`);
    for (const [name, label] of [["exclude", "excluding"], ["include", "only"], ["prepend", "prepending"]]) if (v[name]) parts.push(`${label} ${code(v[name])}`);
    parts.push(v.order === "category" ? "by category" : "by score");
    if (v.underscores) parts.push("underscores");
    if (v.escape_parentheses) parts.push("\\( \\) escaped");
    if (v.max_size !== undefined) parts.push(`${v.max_size} px`);
    return "**Tagged with the Tag tab's settings** (change them there): " + parts.join(" · ");
  }

  /** Which option controls apply in ``mode``: visibility updates, in ``names`` order. */
  function modeVisibility(mode, names, onlyIn) {
    return names.map((name) => ({ __type__: "update", visible: !onlyIn[name] || onlyIn[name] === mode }));
  }

  /** The page's rules configured (TagRules.configure), the argument kept so the cards can reorder them. */
  function configure(config) {
    rulesConfig = config;
    orderShown = null;
    applyOrder([]);
  }

  root.TagView = { configure, bind, update, modeVisibility, onWhite, settingsText };
})(typeof globalThis !== "undefined" ? globalThis : this);
