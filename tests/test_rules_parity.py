"""The page's selection and formatting (``tagger/web/assets/tag_rules.js``, run under node)
against the Python definition (``TagOptions``, ``select_tags``, ``tag_string``,
``category_tag_strings``) on thousands of seeded random cases: same tags, same order, same
strings, same error sentences. Any difference fails.

The character-level primitives the rules stand on (Python's ``str.lower``, ``str.strip``,
``float`` of Unicode digits and ``repr``) are compared on every code point that Python's
Unicode database assigns.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from tagger.engine.vocab import CATEGORIES, Vocabulary, normalize_tag
from tagger.errors import SelectionError
from tagger.tags.formats import category_tag_strings
from tagger.tags.options import OPTION_NAMES, TagOptions
from tagger.tags.selection import select_tags
from tagger.web.page_scores import page_scores
from tagger.web.tabs.tag import rules_config

NODE = shutil.which("node")
RULES = Path(__file__).resolve().parent.parent / "tagger" / "web" / "assets" / "tag_rules.js"
CASES = 4000

pytestmark = pytest.mark.skipif(NODE is None, reason="the parity test runs the page's rules under node")

RUNNER = r"""
const fs = require("fs");
const rules = require(process.argv[1]);
// Python's nan and inf travel as {"$float": "nan"}: JSON has no literal for them.
const revive = (key, value) => (value && typeof value === "object" && "$float" in value ? Number(value.$float) : value);
const input = JSON.parse(fs.readFileSync(0, "utf8"), revive);
rules.configure(input.config);
const out = input.cases.map(({ payload, values }) => {
  let built;
  try {
    built = rules.options(values);
  } catch (e) {
    if (!(e instanceof rules.SelectionError)) return { crash: String(e && e.stack) };
    return { error: e.message };
  }
  const rows = rules.selectTags(payload, built.selection);
  return {
    tags: rows.map((row) => row[3]),
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


def run_node(script: str, data: object) -> object:
    result = subprocess.run(
        [NODE, "-e", script, str(RULES)],  # type: ignore[list-item]
        input=json.dumps(special_floats(data), allow_nan=False),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# -- random cases -------------------------------------------------------------------------------

WORDS = ["cat", "Dog", "fox", "tail", "blue eyes", "hat", "long_hair", "smile", "Σίσυφος", "éclair", "ß", "İstanbul"]
WORDS += ["猫", "кошка", "a", "solo", "fate (series)", "\\(escaped\\)", "trailing_", "1girl", "back\\slash"]
SPACES = [" ", "  ", "\t", "\u3000", "\xa0", "\x1f", "\u2003", ""]
NUMBERS = ["0.5", "0.35", ".5", "1", "0", "1.0", "0.6", "1e-1", "5e-1", "0_5", "0.5_0", "1__0", "+0.25", "-0.1"]
NUMBERS += [
    "1.5",
    "inf",
    "-inf",
    "nan",
    "NaN",
    "Infinity",
    "abc",
    "",
    "0.5.1",
    "٠.٥",
    "０.７",
    "𝟎.𝟐",
    "0x1",
    "1e",
    "e1",
]
NUMBERS += ["_1", "1_", "0.3 ", " 0.3", "0. 3", "1e400", "4e-320", "0.1\u2003", "'0.5'", '"x"', "0.2\x00"]
CATEGORY_NAMES = [c.name for c in CATEGORIES]
GLOBS = ["*a*", "c?t*", "*_*", "fate (*)", "\\*", "? *", "*ß*", "*猫", "*", " ** ", "*a*b*c*d*e*f*g*h*i*", "Σ*", "*.*"]


def random_tag(rng: random.Random) -> str:
    parts = rng.sample(WORDS, rng.randint(1, 2))
    tag = " ".join(parts)
    if rng.random() < 0.3:
        tag = tag.upper() if rng.random() < 0.5 else tag.title()
    if rng.random() < 0.1:
        tag = f" {tag}_"
    return tag


def random_vocab(rng: random.Random) -> Vocabulary:
    size = rng.randint(1, 70)
    tags = [random_tag(rng) for _ in range(size)]
    if size > 3 and rng.random() < 0.3:  # the same tag twice, differently written
        tags[rng.randrange(size)] = tags[0].replace(" ", "_").upper()
    present = rng.sample([c.id for c in CATEGORIES], rng.randint(1, len(CATEGORIES)))
    return Vocabulary(tags, np.array([rng.choice(present) for _ in tags], dtype=np.int16))


def random_scores(rng: random.Random, size: int) -> np.ndarray:
    style = rng.random()
    if style < 0.1:  # neighbouring float32 values: MCut's midpoint is not a float32 value
        base = np.float32(rng.random())
        pair = [float(base), float(np.nextafter(base, np.float32(1)))]
        values = [rng.choice(pair) for _ in range(size)]
    elif style < 0.3:
        values = [rng.random() for _ in range(size)]
    elif style < 0.6:  # few distinct values: ties, and scores equal to thresholds
        pool = [0.0, 0.05, 0.1, 0.35, 0.5, 0.85, 1.0, rng.random()]
        values = [rng.choice(pool) for _ in range(size)]
    else:  # like a tagger: most scores tiny, a few high
        values = [rng.random() ** 6 if rng.random() < 0.8 else rng.uniform(0.3, 1.0) for _ in range(size)]
    return np.array(values, dtype=np.float32)


def random_probability(rng: random.Random, scores: np.ndarray, default: float) -> object:
    pick = rng.random()
    if pick < 0.2:
        return default
    if pick < 0.5 and scores.size:
        return float(rng.choice(scores))  # exactly a score: the >= boundary
    if pick < 0.55:
        return rng.choice([0.0, 1.0, None])
    if pick < 0.57:
        return rng.choice([1.5, -0.25, float("nan"), 1e-50, 2.0])
    return round(rng.random(), rng.choice([2, 3, 7]))


def variant(rng: random.Random, tag: str) -> str:
    """The tag as a person might type it."""
    if rng.random() < 0.3:
        tag = tag.replace(" ", "_")
    if rng.random() < 0.2:
        tag = tag.replace("(", "\\(").replace(")", "\\)")
    if rng.random() < 0.3:
        tag = tag.swapcase()
    return rng.choice(SPACES) + tag + rng.choice(SPACES)


def random_tag_list(rng: random.Random, vocab: Vocabulary) -> str:
    if rng.random() < 0.5:
        return ""
    items = [variant(rng, rng.choice(vocab.tags)) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.3:
        items.append(random_tag(rng))
    if rng.random() < 0.1:
        items.append("")
    if rng.random() < 0.15:  # globs, and the two kinds the page must refuse as Python does
        items.append(rng.choice(GLOBS))
    return "".join(item + rng.choice([",", ", ", "\n", " ,"]) for item in items)


def random_category_thresholds(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.3:
        return ""
    parts = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice([*CATEGORY_NAMES, "Artist", " character ", "nope", "", "gen eral", "ARTIST"])
        value = rng.choice(NUMBERS) if rng.random() < 0.5 else str(round(rng.random(), 2))
        sep = rng.choice(["=", ":", " = ", "==", "", "=:"])
        parts.append(rng.choice(SPACES) + name + sep + value)
    return rng.choice([", ", ",", ";", "\n", " ; "]).join(parts) + rng.choice(["", ",", ";;"])


def random_values(rng: random.Random, vocab: Vocabulary, scores: np.ndarray) -> dict:
    defaults = TagOptions()
    present = sorted({vocab.category_of(i).name for i in range(len(vocab))})
    if rng.random() < 0.6:
        categories: object = rng.sample(CATEGORY_NAMES, rng.randint(1, len(CATEGORY_NAMES)))
    elif rng.random() < 0.5:
        categories = ", ".join(rng.sample(present, rng.randint(1, len(present))))
    else:
        categories = rng.choice([[], "", None, ["Nope"], "general,, artist", [" GENERAL "]])
    topk: object = rng.randint(0, 8)
    if rng.random() < 0.03:
        topk = rng.choice([2.5, -1, None, 1e300])
    values = {
        "mode": rng.choice(["threshold", "threshold", "topk", "mcut", None]),
        "threshold": random_probability(rng, scores, defaults.threshold),
        "character_threshold": random_probability(rng, scores, defaults.character_threshold),
        "topk_per_category": topk,
        "floor": random_probability(rng, scores, defaults.floor) if rng.random() < 0.7 else 0.0,
        "categories": categories,
        "category_thresholds": random_category_thresholds(rng),
        "exclude": random_tag_list(rng, vocab),
        "include": random_tag_list(rng, vocab) if rng.random() < 0.3 else "",
        "prepend": random_tag_list(rng, vocab)
        if rng.random() < 0.5
        else rng.choice(["", "masterpiece, fate \\(series\\)"]),
        "underscores": rng.random() < 0.5,
        "escape_parentheses": rng.random() < 0.5,
        "order": rng.choice(["score", "category", None]),
        "implied": rng.choice(["keep", "remove", "add", None]),
    }
    if rng.random() < 0.01:
        values[rng.choice(["mode", "order", "implied"])] = "nonsense"
    assert set(values) == set(OPTION_NAMES)
    return values


def expected(scores: np.ndarray, vocab: Vocabulary, values: dict) -> dict:
    """What Python gives for one case: the tags' indices, the strings, or the error sentence."""
    try:
        options = TagOptions.from_values(**values)
    except SelectionError as e:
        return {"error": str(e)}
    tags = select_tags(scores, vocab, options.selection)
    strings = category_tag_strings(tags, underscores=options.underscores, escape_parentheses=options.escape_parentheses)
    return {
        "tags": [t.index for t in tags],
        "string": options.tag_string(tags, vocab),
        "categories": [[c.name, s] for c, s in strings],
    }


def test_the_pages_rules_equal_the_python_rules_on_random_cases():
    rng = random.Random(20240610)
    cases, wanted = [], []
    for _ in range(CASES):
        vocab = random_vocab(rng)
        scores = random_scores(rng, len(vocab))
        values = random_values(rng, vocab, scores)
        floor = values["floor"]
        valid_floor = isinstance(floor, float) and 0.0 <= floor <= 1.0
        # The page holds the tags at or above a cutoff no higher than the floor.
        cutoff = rng.uniform(0.0, floor) if valid_floor and rng.random() < 0.7 else 0.0
        cases.append({"payload": page_scores(scores, vocab, cutoff), "values": values})
        wanted.append(expected(scores, vocab, values))
    got = run_node(RUNNER, {"config": rules_config(), "cases": cases})
    errors = sum("error" in w for w in wanted)
    assert CASES // 20 < errors < CASES // 2, f"{errors} error cases: the generator needs rebalancing"
    assert sum(bool(w.get("tags")) for w in wanted) > CASES // 3
    for case, want, have in zip(cases, wanted, got, strict=True):
        assert have == want, json.dumps({"values": case["values"], "payload": case["payload"]}, ensure_ascii=False)


def test_the_payload_holds_exactly_the_tags_at_or_above_the_cutoff():
    vocab = Vocabulary(["a", "b", "c", "d"], np.array([1, 1, 2, 2], dtype=np.int16))
    scores = np.array([0.05, 0.0499999, 0.9, 0.05], dtype=np.float32)
    payload = page_scores(scores, vocab, 0.05)
    assert [row[3] for row in payload["tags"]] == [0, 2, 3]
    assert payload["tags"][0] == ["a", float(np.float32(0.05)), 1, 0]
    assert set(payload["mcut"]) == {"1", "2"}  # categories with tags only
    json.dumps(payload, allow_nan=False)


# -- character-level primitives -------------------------------------------------------------------

PRIMITIVES = r"""
const fs = require("fs");
const rules = require(process.argv[1]);
const points = JSON.parse(fs.readFileSync(0, "utf8"));
const out = points.map((cp) => {
  const c = String.fromCodePoint(cp);
  const number = rules.pyFloat(c);
  return [rules.normalizeTag(c), rules.pyRepr(c), number === null ? null : number];
});
process.stdout.write(JSON.stringify(out));
"""


def assigned_code_points() -> list[int]:
    """Every code point Python's Unicode database assigns, but private use (identity for all three)."""
    return [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co")]


def test_the_pages_string_primitives_equal_pythons_on_every_assigned_character():
    points = assigned_code_points()
    got = run_node(PRIMITIVES, points)
    differences = []
    for cp, (lowered, shown, number) in zip(points, got, strict=True):
        c = chr(cp)
        try:
            value: float | None = float(c)
        except ValueError:
            value = None
        if (lowered, shown, number) != (normalize_tag(c), repr(c), value):
            differences.append((hex(cp), unicodedata.name(c, "?"), lowered, normalize_tag(c), shown, repr(c)))
    assert not differences, differences[:20]
