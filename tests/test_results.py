"""Selecting and formatting tags from a score vector (no model involved)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagger.engine.vocab import CATEGORIES, Vocabulary, normalize_tag
from tagger.tags.formats import api_response, authors_json_entry, pretty_text, tag_string
from tagger.tags.selection import Selection, SelectionError, mcut_threshold, parse_tag_list, select_tags, top_tags

# (tag, e621 category id as stored in the file or None, score). Scores are exact in float32.
ROWS = [
    ("1girl", 0, 0.96875),
    ("solo", 0, 0.875),
    ("looking at viewer", 0, 0.75),
    ("by famous artist", 1, 0.625),
    ("hatsune miku", 4, 0.9375),
    ("vocaloid", 3, 0.5),
    ("fate (series)", 3, 0.40625),
    ("cat", 5, 0.3125),
    ("highres", 7, 0.25),
    ("mystery", None, 0.1875),
    ("backstory", 8, 0.125),
    ("smile", 0, 0.03125),
]
SCORES = np.array([score for _, _, score in ROWS], dtype=np.float32)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_data(
        {
            "idx2tag": [tag for tag, _, _ in ROWS],
            "tag2category": {tag: cat for tag, cat, _ in ROWS if cat is not None},
        }
    )


def _tags(vocab: Vocabulary, **kwargs) -> list[str]:
    return [t.tag for t in select_tags(SCORES, vocab, Selection(**kwargs))]


# -- selection ----------------------------------------------------------------------------------


def test_threshold_is_inclusive_and_results_are_best_first(vocab):
    assert _tags(vocab, threshold=0.5) == [
        "1girl",
        "hatsune miku",
        "solo",
        "looking at viewer",
        "by famous artist",
        "vocaloid",
    ]
    result = select_tags(SCORES, vocab, Selection(threshold=0.5))
    assert [t.score for t in result] == sorted((t.score for t in result), reverse=True)
    assert result[1].category.name == "character"
    assert result[1].index == 4
    assert result[1].score == pytest.approx(0.9375)


def test_default_threshold_is_0_35(vocab):
    assert _tags(vocab) == _tags(vocab, threshold=0.35)
    assert "fate (series)" in _tags(vocab) and "cat" not in _tags(vocab)


def test_floor_removes_low_scores_for_every_rule(vocab):
    assert _tags(vocab, threshold=0.0, floor=0.2) == [t for t, _, s in sorted(ROWS, key=lambda r: -r[2]) if s >= 0.2]
    general = _tags(vocab, threshold=0.0, floor=0.5, category_topk={"general": 10}, categories=["general"])
    assert general == ["1girl", "solo", "looking at viewer"]  # "smile" (0.03) stays under the floor


def test_global_topk_keeps_the_best(vocab):
    assert _tags(vocab, threshold=0.0, topk=3) == ["1girl", "hatsune miku", "solo"]
    assert _tags(vocab, threshold=0.0, topk=0) == []
    assert len(_tags(vocab, threshold=0.0, topk=100)) == len(ROWS)
    assert [t.tag for t in top_tags(SCORES, vocab, 2)] == ["1girl", "hatsune miku"]


def test_per_category_thresholds_by_name_and_id(vocab):
    tags = _tags(vocab, threshold=0.3, category_thresholds={"general": 0.8, 5: 0.95})
    assert tags == ["1girl", "solo", "by famous artist", "vocaloid", "fate (series)", "cat"]


def test_per_category_topk(vocab):
    tags = _tags(vocab, threshold=0.99, category_topk={"general": 2, "Copyright": 1})
    assert tags == ["1girl", "solo", "vocaloid"]


def test_categories_filter_by_name_and_id(vocab):
    assert _tags(vocab, threshold=0.0, categories=["artist", 5]) == ["hatsune miku", "by famous artist"]
    assert _tags(vocab, threshold=0.0, categories="copyright") == ["vocaloid", "fate (series)"]
    assert _tags(vocab, threshold=0.0, categories=[0]) == ["mystery"]
    assert _tags(vocab, threshold=0.0, categories=[]) == []


def test_exclude_ignores_case_underscores_and_escapes(vocab):
    tags = _tags(vocab, threshold=0.35, exclude=["Looking_At_Viewer", "fate \\(series\\)", "SOLO", "not a tag"])
    assert tags == ["1girl", "hatsune miku", "by famous artist", "vocaloid"]
    assert _tags(vocab, threshold=0.35, exclude="1girl, hatsune_miku") == _tags(
        vocab, threshold=0.35, exclude=["1girl", "hatsune miku"]
    )


def test_include_keeps_only_listed_tags_and_still_applies_thresholds(vocab):
    everything = _tags(vocab, threshold=0.35)
    assert _tags(vocab, threshold=0.35, include="SOLO, fate \\(series\\), mystery, not a tag") == [
        t for t in everything if t in ("solo", "fate (series)", "mystery")
    ]
    assert "mystery" not in everything  # listed, but below the threshold: still left out
    assert _tags(vocab, threshold=0.35, include="solo", exclude="solo") == []
    assert _tags(vocab, threshold=0.35, include="") == everything


def test_mcut_threshold_hand_computed():
    # Sorted: 0.9, 0.85, 0.3, 0.2; gaps 0.05, 0.55, 0.1 → cut in the middle of 0.85 and 0.3.
    assert mcut_threshold(np.array([0.3, 0.9, 0.2, 0.85])) == pytest.approx(0.575)
    assert mcut_threshold(np.array([0.5])) == 1.0
    assert mcut_threshold(np.array([], dtype=np.float32)) == 1.0


def test_mcut_selection_uses_each_categorys_own_cut(vocab):
    # general: 0.96875, 0.875, 0.75, 0.03125 → largest gap below 0.75, cut 0.390625.
    # copyright: 0.5, 0.40625 → cut 0.453125. Single-tag categories: cut 1.0, nothing kept.
    assert _tags(vocab, mcut=True) == ["1girl", "solo", "looking at viewer", "vocaloid"]
    # An explicit per-category threshold overrides MCut for that category.
    assert _tags(vocab, mcut=True, category_thresholds={"character": 0.5}) == [
        "1girl",
        "hatsune miku",
        "solo",
        "looking at viewer",
        "vocaloid",
    ]
    # MCut never goes under the floor.
    assert _tags(vocab, mcut=True, floor=0.8) == ["1girl", "solo"]


def test_mcut_on_a_general_only_vocabulary():
    vocab = Vocabulary.from_data({"idx2tag": ["a", "b", "c", "d"]})
    selected = select_tags(np.array([0.3, 0.9, 0.2, 0.85]), vocab, Selection(mcut=True))
    assert [t.tag for t in selected] == ["b", "d"]


# -- invalid arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"floor": 2}, "floor"),
        ({"topk": -1}, "topk"),
        ({"topk": 2.5}, "topk"),
        ({"topk": True}, "topk"),
        ({"categories": ["weapons"]}, "weapons"),
        ({"categories": [42]}, "42"),
        ({"category_thresholds": {"general": 1.2}}, "general"),
        ({"category_thresholds": {"vehicles": 0.5}}, "vehicles"),
        ({"category_topk": {"artist": -3}}, "artist"),
    ],
)
def test_invalid_selection_raises_with_a_clear_message(kwargs, fragment):
    with pytest.raises(SelectionError) as info:
        Selection(**kwargs)
    assert fragment in str(info.value)


def test_unknown_category_message_lists_the_choices():
    with pytest.raises(SelectionError, match=r"artist.*copyright"):
        Selection(categories=["weapons"])


def test_integral_float_and_numpy_counts_are_accepted(vocab):
    assert Selection(topk=5.0).topk == 5
    assert Selection(topk=np.int64(5)).topk == 5
    assert Selection(category_topk={"general": np.int32(2)}).category_topk == {1: 2}
    assert Selection(threshold=np.float32(0.5)).threshold == 0.5
    assert _tags(vocab, threshold=0.0, topk=np.int64(2)) == ["1girl", "hatsune miku"]


def test_wrong_score_vector_length(vocab):
    with pytest.raises(SelectionError, match=f"11 scores.*{len(ROWS)} tags"):
        select_tags(SCORES[:-1], vocab)


def test_selection_error_is_a_value_error():
    assert issubclass(SelectionError, ValueError)


# -- tag strings --------------------------------------------------------------------------------


def test_tag_string_orders(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.35))
    assert tag_string(tags) == (
        "1girl, hatsune miku, solo, looking at viewer, by famous artist, vocaloid, fate (series)"
    )
    # Display order of categories (artist, copyright, character, ..., general), best first within each.
    assert tag_string(tags, order="category") == (
        "by famous artist, vocaloid, fate (series), hatsune miku, 1girl, solo, looking at viewer"
    )
    with pytest.raises(SelectionError, match="order"):
        tag_string(tags, order="alphabetical")


def test_tag_string_underscores_and_escaping(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.4, categories=["copyright", "general"]))
    assert tag_string(tags) == "1girl, solo, looking at viewer, vocaloid, fate (series)"
    assert tag_string(tags, underscores=True) == "1girl, solo, looking_at_viewer, vocaloid, fate_(series)"
    assert tag_string(tags, escape_parentheses=True) == "1girl, solo, looking at viewer, vocaloid, fate \\(series\\)"
    assert (
        tag_string(tags, underscores=True, escape_parentheses=True)
        == "1girl, solo, looking_at_viewer, vocaloid, fate_\\(series\\)"
    )
    assert tag_string(tags, separator=" ") == "1girl solo looking at viewer vocaloid fate (series)"
    assert tag_string([]) == ""


def test_prepend_comes_first_once(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.7))
    assert tag_string(tags) == "1girl, hatsune miku, solo, looking at viewer"
    assert tag_string(tags, prepend="masterpiece, Looking_At_Viewer, masterpiece") == (
        "masterpiece, Looking_At_Viewer, 1girl, hatsune miku, solo"
    )
    expected = "solo, best quality, 1girl, hatsune miku, looking at viewer"
    assert tag_string(tags, prepend=["solo", "best quality"]) == expected


def test_prepend_is_escaped_exactly_once(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.4, categories=["copyright"]))
    for typed in ("fate (series)", "fate \\(series\\)"):
        assert tag_string(tags, prepend=f"kaguya (fate), {typed}", escape_parentheses=True) == (
            "kaguya \\(fate\\), fate \\(series\\), vocaloid"
        )


# -- structured outputs -------------------------------------------------------------------------


def test_api_response_schema(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.35))
    response = api_response(tags, tag_string(tags))
    json.dumps(response)  # plain JSON types only
    assert set(response) == {"tags", "categories", "count", "tag_string"}
    assert response["count"] == 7
    assert response["tag_string"] == tag_string(tags)
    assert response["tags"][0] == {"tag": "1girl", "score": 0.96875, "category": "general"}
    assert [t["tag"] for t in response["tags"]] == [t.tag for t in tags]
    scores = [t["score"] for t in response["tags"]]
    assert scores == sorted(scores, reverse=True)

    groups = response["categories"]
    assert [g["name"] for g in groups] == ["artist", "copyright", "character", "general"]
    by_name = {c.name: c for c in CATEGORIES}
    for group in groups:
        assert set(group) == {"id", "name", "color", "tags"}
        assert group["id"] == by_name[group["name"]].id
        assert group["color"] == by_name[group["name"]].color
        assert all(set(t) == {"tag", "score"} for t in group["tags"])
    assert groups[1]["tags"] == [{"tag": "vocaloid", "score": 0.5}, {"tag": "fate (series)", "score": 0.40625}]
    assert groups[3]["color"] == "#4ade80"
    assert sum(len(g["tags"]) for g in groups) == response["count"]


def test_api_response_empty():
    assert api_response([], "") == {"tags": [], "categories": [], "count": 0, "tag_string": ""}


def test_authors_json_entry(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.0, topk=2))
    entry = authors_json_entry("images/a.png", tags)
    assert entry == {
        "file": "images/a.png",
        "tags": [{"tag": "1girl", "score": 0.96875}, {"tag": "hatsune miku", "score": 0.9375}],
    }


def test_pretty_text_rank_score_bar_tag(vocab):
    tags = select_tags(SCORES, vocab, Selection(threshold=0.0, topk=11))
    lines = pretty_text(tags).splitlines()
    assert len(lines) == 11
    pattern = re.compile(r"^\s*(\d+)\. (\d\.\d{3}) ([█░]{20}) (.+)$")
    for rank, (line, tag) in enumerate(zip(lines, tags, strict=True), 1):
        match = pattern.match(line)
        assert match, line
        assert int(match.group(1)) == rank
        assert float(match.group(2)) == pytest.approx(tag.score, abs=6e-4)
        assert match.group(3).count("█") == math.floor(tag.score * 20 + 0.5)
        assert match.group(4) == tag.tag
    assert lines[0] == " 1. 0.969 ███████████████████░ 1girl"  # ranks right-aligned to the widest
    assert lines[10] == "11. 0.125 ███░░░░░░░░░░░░░░░░░ backstory"
    assert pretty_text([]) == ""


def test_parse_tag_list():
    assert parse_tag_list("a, b_c\nd,, ,e ") == ["a", "b_c", "d", "e"]
    assert parse_tag_list("Solo, solo, SOLO,looking_at_viewer, looking at viewer") == ["Solo", "looking_at_viewer"]
    assert parse_tag_list(["x ", "", "y", "x"]) == ["x", "y"]
    assert parse_tag_list(None) == []
    assert parse_tag_list("") == []


# -- properties ---------------------------------------------------------------------------------

_probability = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_category_names = st.sampled_from([c.name for c in CATEGORIES])


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(_probability, min_size=len(ROWS), max_size=len(ROWS)),
    threshold=_probability,
    floor=_probability,
    topk=st.none() | st.integers(min_value=0, max_value=15),
    per_category=st.dictionaries(_category_names, _probability, max_size=4),
    excluded=st.lists(st.sampled_from([tag for tag, _, _ in ROWS]), max_size=4),
)
def test_selection_invariants(vocab, scores, threshold, floor, topk, per_category, excluded):
    scores = np.array(scores, dtype=np.float32)
    selection = Selection(
        threshold=threshold, floor=floor, topk=topk, category_thresholds=per_category, exclude=excluded
    )
    result = select_tags(scores, vocab, selection)

    values = [t.score for t in result]
    assert values == sorted(values, reverse=True)
    if topk is not None:
        assert len(result) <= topk
    assert len({t.index for t in result}) == len(result)
    excluded_forms = {normalize_tag(t) for t in excluded}
    for t in result:
        assert normalize_tag(t.tag) not in excluded_forms
        assert t.score == scores[t.index]
        assert t.category == vocab.category_of(t.index)
        applicable = per_category.get(t.category.name, threshold)
        # Scores are float32: a limit is met when the score reaches it in float32.
        assert scores[t.index] >= np.float32(applicable)
        assert scores[t.index] >= np.float32(floor)
    if topk is None:
        # Nothing that passes its rule is left out.
        kept = {t.index for t in result}
        for i, tag in enumerate(vocab.tags):
            category = vocab.category_of(i).name
            passes = scores[i] >= per_category.get(category, threshold) and scores[i] >= floor
            if passes and normalize_tag(tag) not in excluded_forms:
                assert i in kept


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(_probability, min_size=len(ROWS), max_size=len(ROWS)),
    low=_probability,
    high=_probability,
    mcut=st.booleans(),
)
def test_raising_the_threshold_never_adds_tags(vocab, scores, low, high, mcut):
    low, high = sorted((low, high))
    scores = np.array(scores, dtype=np.float32)
    loose = {t.tag for t in select_tags(scores, vocab, Selection(threshold=low, floor=low, mcut=mcut))}
    strict = {t.tag for t in select_tags(scores, vocab, Selection(threshold=high, floor=high, mcut=mcut))}
    assert strict <= loose


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(_probability, min_size=len(ROWS), max_size=len(ROWS)),
    topk=st.integers(min_value=0, max_value=15),
    order=st.sampled_from(["score", "category"]),
)
def test_tag_string_round_trips_through_parse_tag_list(vocab, scores, topk, order):
    tags = select_tags(np.array(scores, dtype=np.float32), vocab, Selection(threshold=0.0, topk=topk))
    text = tag_string(tags, order=order)
    assert sorted(parse_tag_list(text)) == sorted(t.tag for t in tags)
