"""The page's selection and formatting (``tagger/web/assets/tag_rules.js``, run under node)
against the Python definition (``TagOptions``, ``select_tags``, ``tag_string``,
``category_tag_strings``) on thousands of seeded random cases: same tags, same order, same
strings, same error sentences. Any difference fails.

The page reads what people type (ASCII text, plain numbers in range) itself and asks the
server (``page_ruling``) about anything else: on the first domain it must never ask; on any
values, its answer or its reading of the server's must be Python's.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from js_support import NODE, differences, python_answer, run_page_rules

from tagger.engine.vocab import CATEGORIES, Vocabulary
from tagger.tags.options import OPTION_NAMES, TagOptions
from tagger.web.page_scores import page_scores
from tagger.web.tabs.tag import page_ruling, rules_config

CASES = 4000

pytestmark = pytest.mark.skipif(NODE is None, reason="the parity test runs the page's rules under node")


# -- random cases ---------------------------------------------------------------------------------
# ``typed``: only what people type in the page (ASCII text, plain numbers in range, the
# controls' choices), which the page reads itself; else anything an API call could send too.

TYPED_WORDS = ["cat", "Dog", "fox", "tail", "blue eyes", "hat", "long_hair", "smile", "a", "solo", "fate (series)"]
TYPED_WORDS += ["\\(escaped\\)", "trailing_", "1girl", "back\\slash", "it's", 'say "hi"']
WORDS = [*TYPED_WORDS, "Σίσυφος", "éclair", "ß", "İstanbul", "猫", "кошка"]
TYPED_SPACES = [" ", "  ", "\t", ""]
SPACES = [*TYPED_SPACES, "\u3000", "\xa0", "\x1f", "\u2003"]
TYPED_NUMBERS = ["0.5", "0.35", ".5", "1", "0", "1.0", "0.6", "1e-1", "5e-1", "+0.25", "-0.0", "1.", "4e-320"]
TYPED_NUMBERS += ["abc", "", "0.5.1", "0x1", "1e", "e1", "0.3 ", " 0.3", "0. 3", "'0.5'", '"x"', "0.2\t", "1e+0"]
NUMBERS = [*TYPED_NUMBERS, "0_5", "0.5_0", "1__0", "_1", "1_", "-0.1", "1.5", "inf", "-inf", "nan", "NaN", "Infinity"]
NUMBERS += ["٠.٥", "０.７", "𝟎.𝟐", "1e400", "0.1\u2003", "0.2\x00"]
CATEGORY_NAMES = [c.name for c in CATEGORIES]
GLOBS = ["*a*", "c?t*", "*_*", "fate (*)", "\\*", "? *", "*", " ** ", "*a*b*c*d*e*f*g*h*i*", "*.*", "*'*"]
GLOBS += ["*ß*", "*猫", "Σ*"]


def random_tag(rng: random.Random, typed: bool = False) -> str:
    parts = rng.sample(TYPED_WORDS if typed else WORDS, rng.randint(1, 2))
    tag = " ".join(parts)
    if rng.random() < 0.3:
        tag = tag.upper() if rng.random() < 0.5 else tag.title()
    if rng.random() < 0.1:
        tag = f" {tag}_"
    return tag


def random_vocab(rng: random.Random, typed: bool = False) -> Vocabulary:
    size = rng.randint(1, 70)
    tags = [random_tag(rng, typed) for _ in range(size)]
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


def random_probability(rng: random.Random, scores: np.ndarray, default: float, typed: bool = False) -> object:
    pick = rng.random()
    if pick < 0.2:
        return default
    if pick < 0.5 and scores.size:
        return float(rng.choice(scores))  # exactly a score: the >= boundary
    if pick < 0.55:
        return rng.choice([0.0, 1.0, None])
    if pick < 0.57:
        return rng.choice([1e-50] if typed else [1.5, -0.25, float("nan"), 1e-50, 2.0])
    return round(rng.random(), rng.choice([2, 3, 7]))


def variant(rng: random.Random, tag: str, typed: bool = False) -> str:
    """The tag as a person might type it."""
    if rng.random() < 0.3:
        tag = tag.replace(" ", "_")
    if rng.random() < 0.2:
        tag = tag.replace("(", "\\(").replace(")", "\\)")
    if rng.random() < 0.3:
        tag = tag.swapcase()
    spaces = TYPED_SPACES if typed else SPACES
    return rng.choice(spaces) + tag + rng.choice(spaces)


def random_tag_list(rng: random.Random, vocab: Vocabulary, typed: bool = False) -> str:
    if rng.random() < 0.5:
        return ""
    items = [variant(rng, rng.choice(vocab.tags), typed) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.3:
        items.append(random_tag(rng, typed))
    if rng.random() < 0.1:
        items.append("")
    if rng.random() < 0.15:  # globs, and the two kinds the page must refuse as Python does
        items.append(rng.choice(GLOBS[:-3] if typed else GLOBS))
    return "".join(item + rng.choice([",", ", ", "\n", " ,"]) for item in items)


def random_category_thresholds(rng: random.Random, typed: bool = False) -> str:
    pick = rng.random()
    if pick < 0.3:
        return ""
    parts = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice([*CATEGORY_NAMES, "Artist", " character ", "nope", "", "gen eral", "ARTIST", "it's"])
        value = rng.choice(TYPED_NUMBERS if typed else NUMBERS) if rng.random() < 0.5 else str(round(rng.random(), 2))
        sep = rng.choice(["=", ":", " = ", "==", "", "=:"])
        parts.append(rng.choice(TYPED_SPACES if typed else SPACES) + name + sep + value)
    return rng.choice([", ", ",", ";", "\n", " ; "]).join(parts) + rng.choice(["", ",", ";;"])


def random_values(rng: random.Random, vocab: Vocabulary, scores: np.ndarray, typed: bool = False) -> dict:
    defaults = TagOptions()
    present = sorted({vocab.category_of(i).name for i in range(len(vocab))})
    if rng.random() < 0.6:
        categories: object = rng.sample(CATEGORY_NAMES, rng.randint(1, len(CATEGORY_NAMES)))
    elif rng.random() < 0.5:
        categories = ", ".join(rng.sample(present, rng.randint(1, len(present))))
    else:
        categories = rng.choice([[], "", None, ["Nope"], "general,, artist", [" GENERAL "]])
    topk: object = rng.randint(0, 8)
    if rng.random() < 0.03 and not typed:
        topk = rng.choice([2.5, -1, None, 1e300])
    values = {
        "mode": rng.choice(["threshold", "threshold", "topk", "mcut", None]),
        "threshold": random_probability(rng, scores, defaults.threshold, typed),
        "character_threshold": random_probability(rng, scores, defaults.character_threshold, typed),
        "topk_per_category": topk,
        "floor": random_probability(rng, scores, defaults.floor, typed) if rng.random() < 0.7 else 0.0,
        "categories": categories,
        "category_thresholds": random_category_thresholds(rng, typed),
        "exclude": random_tag_list(rng, vocab, typed),
        "include": random_tag_list(rng, vocab, typed) if rng.random() < 0.3 else "",
        "prepend": random_tag_list(rng, vocab, typed)
        if rng.random() < 0.5
        else rng.choice(["", "masterpiece, fate \\(series\\)"]),
        "underscores": rng.random() < 0.5,
        "escape_parentheses": rng.random() < 0.5,
        "order": rng.choice(["score", "category", None]),
        "implied": rng.choice(["keep", "remove", "add", None]),
    }
    if rng.random() < 0.01 and not typed:
        values[rng.choice(["mode", "order", "implied"])] = "nonsense"
    assert set(values) == set(OPTION_NAMES)
    return values


def random_case(rng: random.Random, typed: bool) -> tuple[dict, dict]:
    """One case for the page (with the server's ruling unless ``typed``) and Python's answer."""
    vocab = random_vocab(rng, typed)
    scores = random_scores(rng, len(vocab))
    values = random_values(rng, vocab, scores, typed)
    floor = values["floor"]
    valid_floor = isinstance(floor, float) and 0.0 <= floor <= 1.0
    # The page holds the tags at or above a cutoff no higher than the floor.
    cutoff = rng.uniform(0.0, floor) if valid_floor and rng.random() < 0.7 else 0.0
    case = {"payload": page_scores(scores, vocab, cutoff), "values": values}
    if not typed:
        case["ruling"] = page_ruling(values)
    return case, python_answer(scores, vocab, values)


def test_the_pages_rules_equal_the_python_rules_on_what_people_type():
    """ASCII text and plain numbers: the page answers every case itself (a value it left to the
    server would crash the runner: no ruling is given), and as Python does."""
    rng = random.Random(20240610)
    cases, wanted = zip(*(random_case(rng, typed=True) for _ in range(CASES)), strict=True)
    got = run_page_rules({"config": rules_config(), "cases": list(cases)})
    errors = sum("error" in w for w in wanted)
    assert CASES // 20 < errors < CASES // 2, f"{errors} error cases: the generator needs rebalancing"
    assert sum(bool(w.get("tags")) for w in wanted) > CASES // 3
    assert not differences(list(cases), list(wanted), got)[:3]


def test_the_page_asks_the_server_about_anything_else_and_reads_its_answer_as_python():
    """Any values (other characters, inf, 1_0, out of range, nonsense): the page's own answer,
    or where it asks the server its reading of ``page_ruling``'s answer, is Python's."""
    rng = random.Random(20261203)
    cases, wanted = zip(*(random_case(rng, typed=False) for _ in range(CASES)), strict=True)
    got = run_page_rules({"config": rules_config(), "cases": list(cases)})
    asked = [w for w, g in zip(wanted, got, strict=True) if g.get("asked")]
    assert CASES // 10 < len(asked) < CASES * 9 // 10, f"{len(asked)} cases asked the server"
    assert sum("error" in w for w in asked) > 50 and sum(bool(w.get("tags")) for w in asked) > 200
    assert not differences(list(cases), list(wanted), got)[:3]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"exclude": "pokémon"}, None),
        ({"prepend": "masterpiece,\u3000best quality"}, None),
        ({"categories": ["general", "ｍｅｔａ"]}, "categories"),
        ({"category_thresholds": "artist=٠.٥"}, None),
        ({"category_thresholds": "artist=inf"}, "category_thresholds"),
        ({"category_thresholds": "artist=1_0"}, "category_thresholds"),
        ({"category_thresholds": "artist=1.5"}, "category_thresholds"),
        ({"threshold": 1.5}, "threshold"),
        ({"mode": "topk", "topk_per_category": 2.5}, "topk_per_category"),
        ({"order": "nonsense"}, "order"),
    ],
)
def test_what_the_page_leaves_to_the_server_and_the_field_the_server_names(values, field):
    scores = np.array([0.9, 0.5, 0.2], dtype=np.float32)
    vocab = Vocabulary(["pokémon", "cat", "dog"], np.array([4, 4, 7], dtype=np.int16))
    case = {"payload": page_scores(scores, vocab, 0.05), "values": values, "ruling": page_ruling(values)}
    (got,) = run_page_rules({"config": rules_config(), "cases": [case]})
    assert got["asked"], got
    want = python_answer(scores, vocab, values)
    assert {k: v for k, v in got.items() if k != "asked"} == want
    assert ("error" in want) == (field is not None) and case["ruling"].get("field") == field


def test_the_payload_holds_exactly_the_tags_at_or_above_the_cutoff():
    vocab = Vocabulary(["a", "b", "c", "d"], np.array([1, 1, 2, 2], dtype=np.int16))
    scores = np.array([0.05, 0.0499999, 0.9, 0.05], dtype=np.float32)
    payload = page_scores(scores, vocab, 0.05)
    assert [row[3] for row in payload["tags"]] == [0, 2, 3]
    assert payload["tags"][0] == ["a", float(np.float32(0.05)), 1, 0]
    assert set(payload["mcut"]) == {"1", "2"}  # categories with tags only
    json.dumps(payload, allow_nan=False)
