"""The harness of the parity tests: the page's rules (``tagger/web/assets/tag_rules.js``) run
under node over a batch of cases, and Python's answer for one case in the same form.

A case is ``{payload, values}``, with ``config`` (``rules_config``) when it has its own
vocabulary and ``ruling`` (``page_ruling``) when the page may ask the server. The page's
answer says whether it asked (``asked``); a value it leaves to the server in a case without a
ruling is a crash, so a test without rulings checks that the page reads every case itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tagger.engine.vocab import Vocabulary
from tagger.errors import SelectionError
from tagger.tags.formats import category_tag_strings
from tagger.tags.options import TagOptions
from tagger.tags.selection import select_tags

NODE = shutil.which("node")
RULES = Path(__file__).resolve().parent.parent / "tagger" / "web" / "assets" / "tag_rules.js"

RUNNER = r"""
const fs = require("fs");
const rules = require(process.argv[1]);
// Python's nan and inf travel as {"$float": "nan"}: JSON has no literal for them.
const revive = (key, value) => (value && typeof value === "object" && "$float" in value ? Number(value.$float) : value);
const input = JSON.parse(fs.readFileSync(0, "utf8"), revive);
if (input.config) rules.configure(input.config);
const out = input.cases.map(({ config, payload, values, ruling }) => {
  if (config) rules.configure(config);
  let built;
  let asked = false;
  try {
    try {
      built = rules.options(values);
    } catch (e) {
      if (!(e instanceof rules.NeedsServer) || !ruling) throw e;
      asked = true;
      built = rules.fromRuling(ruling);
    }
  } catch (e) {
    if (!(e instanceof rules.SelectionError)) return { crash: String(e && e.stack) };
    return { asked, error: e.message };
  }
  const rows = rules.selectTags(payload, built.selection);
  return {
    asked,
    tags: rows.map((row) => row[3]),
    scores: rows.map((row) => row[1]),
    names: rows.map((row) => row[0]),
    string: rules.tagString(rows, built.format),
    categories: rules.categoryStrings(rows, built.format).map(([c, s]) => [c.name, s]),
  };
});
process.stdout.write(JSON.stringify(out));
"""


def special_floats(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return {"$float": "NaN" if np.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, dict):
        return {k: special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [special_floats(v) for v in value]
    return value


def run_page_rules(data: dict) -> list[dict]:
    """The page's answer for each of ``data["cases"]`` (after ``data["config"]``, if any)."""
    result = subprocess.run(
        [NODE, "-e", RUNNER, str(RULES)],  # type: ignore[list-item]
        input=json.dumps(special_floats(data), allow_nan=False),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def python_answer(scores: np.ndarray, vocab: Vocabulary, values: dict) -> dict:
    """What Python gives for one case: the tags (indices, scores, names), the strings, or the
    error sentence."""
    try:
        options = TagOptions.from_values(**values)
    except SelectionError as e:
        return {"error": str(e)}
    tags = select_tags(scores, vocab, options.selection)
    strings = category_tag_strings(tags, underscores=options.underscores, escape_parentheses=options.escape_parentheses)
    return {
        "tags": [t.index for t in tags],
        "scores": [t.score for t in tags],
        "names": [t.tag for t in tags],
        "string": options.tag_string(tags, vocab),
        "categories": [[c.name, s] for c, s in strings],
    }


def differences(cases: list[dict], wanted: list[dict], got: list[dict]) -> list[str]:
    """The cases where the page's answer (its ``asked`` aside) is not Python's, as JSON."""
    out = []
    for case, want, have in zip(cases, wanted, got, strict=True):
        if {k: v for k, v in have.items() if k != "asked"} != want:
            shown = {"values": case["values"], "page": have, "python": want}
            out.append(json.dumps(shown, ensure_ascii=False, default=str)[:3000])
    return out
