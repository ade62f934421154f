/* The Tag tab's results, drawn in the page from the scores the server sent once per image
 * (tagger.results.page_scores) with the rules of tag_rules.js: one HTML block (summary, a
 * block per category with bars, its tag string and a copy button) and the string of all tags.
 * A filter change runs TagView.update in the page: no server round trip.
 *
 * Clicks inside the block go to the server as the view's custom events: "tag_select" (a tag's
 * name: show its heatmap) and "tag_exclude" (its ✕: add it to the exclude box); "need_scores"
 * asks for the scores below the payload's cutoff when the floor is moved under it.
 *
 * Plain script for the page's <script> tag; defines one global, TagView. Needs TagRules.
 */
(function (root) {
  "use strict";

  const MAX_BARS = 40; // bars drawn per category; the strings always hold every selected tag
  const views = new Map(); // view element id -> {element, trigger, lastGood, payloadId, asked}

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function state(id) {
    if (!views.has(id)) views.set(id, { element: null, trigger: null, lastGood: null, payloadId: null, asked: null });
    return views.get(id);
  }

  /** Called by the view's js_on_load: remember how to send events, and handle clicks. */
  function bind(element, trigger, key) {
    const s = state(key);
    s.element = element;
    s.trigger = trigger;
    element.addEventListener("click", (event) => {
      const copy = event.target.closest(".tv-copy");
      if (copy) {
        const text = copy.closest(".tv-category").querySelector(".tv-string").textContent;
        copyText(text, copy);
        return;
      }
      const exclude = event.target.closest(".tv-x");
      if (exclude) {
        trigger("tag_exclude", { tag: exclude.closest(".tv-row").dataset.tag });
        return;
      }
      const tag = event.target.closest(".tv-tag");
      if (tag) {
        element.querySelectorAll(".tv-row.tv-active").forEach((row) => row.classList.remove("tv-active"));
        tag.closest(".tv-row").classList.add("tv-active");
        trigger("tag_select", { tag: tag.closest(".tv-row").dataset.tag });
      }
    });
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
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  /** A sentence under a control (by its elem_id), or none: errors show where they are made. */
  function showFieldError(elemId, message) {
    const field = elemId && document.getElementById(elemId);
    if (!field) return;
    let note = field.querySelector(":scope > .tv-field-error");
    if (!message) {
      if (note) note.remove();
      field.classList.remove("tv-invalid");
      return;
    }
    if (!note) {
      note = document.createElement("div");
      note.className = "tv-field-error";
      note.setAttribute("role", "alert");
      field.appendChild(note);
    }
    if (note.textContent !== message) note.textContent = message;
    field.classList.add("tv-invalid");
  }

  /** Options from the controls' values; errors go next to their field. */
  function readOptions(names, values, fields) {
    const byName = {};
    names.forEach((name, i) => (byName[name] = values[i]));
    let built = null;
    let error = null;
    try {
      built = TagRules.options(byName);
    } catch (e) {
      if (!(e instanceof TagRules.SelectionError)) throw e;
      error = e;
    }
    for (const name of Object.keys(fields || {})) {
      showFieldError(fields[name], error && (error.field === name || (!error.field && name === "category_thresholds")) ? error.message : null);
    }
    return { values: byName, built, error };
  }

  function bars(rows, category) {
    const shown = rows.slice(0, MAX_BARS).map((row) => {
      const [tag, score] = row;
      const percent = (Math.min(Math.max(score, 0), 1) * 100).toFixed(1);
      return (
        `<li class="tv-row" data-tag="${escapeHtml(tag)}">` +
        `<button type="button" class="tv-tag" title="Show where “${escapeHtml(tag)}” comes from in the image">` +
        `<span class="tv-label">${escapeHtml(tag)}</span><span class="tv-score">${score.toFixed(3)}</span>` +
        `<span class="tv-bar" style="width:${percent}%"></span></button>` +
        `<button type="button" class="tv-x" title="Exclude “${escapeHtml(tag)}”" aria-label="Exclude ${escapeHtml(tag)}">✕</button>` +
        `</li>`
      );
    });
    const more = rows.length > MAX_BARS ? `<li class="tv-more">… and ${rows.length - MAX_BARS} more in the string below</li>` : "";
    return `<ol class="tv-bars" aria-label="${escapeHtml(category.name)} tags">${shown.join("")}${more}</ol>`;
  }

  function categoryBlock(category, rows, string) {
    return (
      `<section class="tv-category" id="tv-${escapeHtml(category.name)}" data-category="${escapeHtml(category.name)}" style="--tv-color:${escapeHtml(category.color)}">` +
      `<header><span class="tv-swatch"></span><span class="tv-name">${escapeHtml(category.name)}</span>` +
      `<span class="tv-count">${rows.length}</span>` +
      `<button type="button" class="tv-copy" title="Copy the ${escapeHtml(category.name)} tags">Copy</button></header>` +
      bars(rows, category) +
      `<div class="tv-string">${escapeHtml(string)}</div>` +
      `</section>`
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

  /**
   * The Tag tab's frontend function: (payload, option names, their values) ->
   * [view HTML, string of all tags]. An undefined output keeps what is shown.
   */
  function update(payload, names, values, config) {
    const s = state(config.view);
    try {
      const { values: byName, built, error } = readOptions(names, values, config.fields);
      if (!payload) {
        s.lastGood = null;
        return [wrap(`<p class="tv-empty">${escapeHtml(config.empty)}</p>`), ""];
      }
      if (payload.error) {
        // A new image that failed: say why, and keep the last image's tags (marked as such).
        s.payloadId = payload.id;
        const kept = s.lastGood ? `<div class="tv-stale">${s.lastGood.html}</div>` : "";
        const note = s.lastGood ? " The tags below are from the previous image." : "";
        return [wrap(banner(payload.error + note, "error") + kept), undefined];
      }
      const fresh = s.payloadId !== payload.id;
      s.payloadId = payload.id;
      if (error) {
        const kept = s.lastGood ? `<div class="tv-stale">${s.lastGood.html}</div>` : "";
        const note = s.lastGood ? " The tags below are from the last valid settings." : "";
        return [wrap(banner(error.message + note, "error") + kept), undefined];
      }
      if (TagRules.needsMoreScores(payload, built.selection.floor)) {
        if (s.asked !== built.selection.floor && s.trigger) {
          s.asked = built.selection.floor;
          s.trigger("need_scores", { floor: built.selection.floor });
        }
        const kept = s.lastGood ? `<div class="tv-stale">${s.lastGood.html}</div>` : "";
        return [wrap(banner("Fetching the scores below the old floor…", "info") + kept), undefined];
      }
      s.asked = null;
      // No ticked category shows nothing (TagOptions would read an empty list as "all").
      const noCategory = Array.isArray(byName.categories) && byName.categories.length === 0;
      const rows = noCategory ? [] : TagRules.selectTags(payload, built.selection);
      const strings = new Map(TagRules.categoryStrings(rows, built.format).map(([c, text]) => [c.id, text]));
      const blocks = TagRules.groupByCategory(rows).map(([category, group]) => categoryBlock(category, group, strings.get(category.id)));
      const html = summary(rows.length, payload) + `<div class="tv-grid">${blocks.join("")}</div>`;
      s.lastGood = { html };
      if (fresh) scrollToResults(s);
      return [wrap(html), TagRules.tagString(rows, built.format)];
    } catch (e) {
      // Every failure reaches the page, never a silent console line.
      console.error(e);
      return [wrap(banner(`The tags could not be re-drawn: ${e && e.message ? e.message : e}`, "error")), undefined];
    }
  }

  /** Batch tab and others: only show (or clear) the per-field sentences. */
  function validate(names, values, config) {
    try {
      readOptions(names, values, config.fields);
    } catch (e) {
      console.error(e);
    }
    return [];
  }

  /** Which option controls apply in ``mode``: visibility updates, in ``names`` order. */
  function modeVisibility(mode, names, onlyIn) {
    return names.map((name) => ({ __type__: "update", visible: !onlyIn[name] || onlyIn[name] === mode }));
  }

  root.TagView = { bind, update, validate, modeVisibility, showFieldError, MAX_BARS };
})(typeof globalThis !== "undefined" ? globalThis : this);
