"""Vocabulary files, category ids (shifted +1, unknown → unassigned) and tag lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import DISPLAY_ORDER

from tagger.engine.synthetic import write_random_vocabulary
from tagger.engine.vocab import CATEGORIES, CATEGORY_BY_ID, UNASSIGNED, Vocabulary, VocabularyError, category_by_name


def _write(tmp_path: Path, data: object, name: str = "vocab.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _names(vocab: Vocabulary) -> list[str]:
    return [vocab.category_of(i).name for i in range(len(vocab))]


def test_idx2tag_only_puts_every_tag_in_category_zero(tmp_path):
    vocab = Vocabulary.load(_write(tmp_path, {"idx2tag": ["1girl", "solo", "by someone"]}))
    assert vocab.tags == ["1girl", "solo", "by someone"]
    assert len(vocab) == 3
    assert list(vocab.category_ids) == [0, 0, 0]
    assert _names(vocab) == ["unassigned"] * 3


def test_integral_float_and_numeric_string_ids_are_accepted(tmp_path):
    data = {"idx2tag": ["a", "b"], "tag2category": {"a": 4.0, "b": "1"}}
    assert _names(Vocabulary.load(_write(tmp_path, data))) == ["character", "artist"]


def test_tag2category_ids_are_shifted_by_one(tmp_path):
    tags = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"]
    data = {"idx2tag": tags, "tag2category": {t: i for i, t in enumerate(tags)}}
    vocab = Vocabulary.load(_write(tmp_path, data))
    assert list(vocab.category_ids) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert _names(vocab) == [
        "general",
        "artist",
        "contributor",
        "copyright",
        "character",
        "species",
        "disambiguation",
        "meta",
        "lore",
    ]


def test_missing_unknown_and_out_of_range_ids_are_unassigned(tmp_path):
    data = {
        "idx2tag": ["absent", "too big", "negative", "minus one", "general"],
        "tag2category": {"too big": 42, "negative": -7, "minus one": -1, "general": 0, "not in vocab": 3},
    }
    vocab = Vocabulary.load(_write(tmp_path, data))
    assert _names(vocab) == ["unassigned", "unassigned", "unassigned", "unassigned", "general"]
    assert vocab.category_of(1) is UNASSIGNED


def test_extra_keys_are_ignored(tmp_path):
    data = {
        "idx2tag": ["a", "b"],
        "tag2category": {"a": 1},
        "aliases": {"aa": "a"},
        "version": 3,
        "tag2implications": None,
    }
    vocab = Vocabulary.load(_write(tmp_path, data))
    assert vocab.tags == ["a", "b"]
    assert _names(vocab) == ["artist", "unassigned"]


def test_null_tag2category_means_no_categories(tmp_path):
    vocab = Vocabulary.load(_write(tmp_path, {"idx2tag": ["a"], "tag2category": None}))
    assert _names(vocab) == ["unassigned"]


def test_synthetic_vocabulary_round_trips_through_the_file(tmp_path):
    """The generator stores unshifted e621 ids; loading shifts them back onto CATEGORIES."""
    path = write_random_vocabulary(tmp_path / "v.json", 25)
    vocab = Vocabulary.load(path)
    assert len(vocab) == 25
    assert _names(vocab) == [CATEGORIES[i % len(CATEGORIES)].name for i in range(25)]
    plain = Vocabulary.load(write_random_vocabulary(tmp_path / "plain.json", 25, with_categories=False))
    assert plain.tags == vocab.tags
    assert set(_names(plain)) == {"unassigned"}


def test_utf8_tags(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"idx2tag": ["ポケモン", "café (place)"]}, ensure_ascii=False), encoding="utf-8")
    assert Vocabulary.load(path).tags == ["ポケモン", "café (place)"]


# -- malformed files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "JSON"),
        ("", "JSON"),
        (json.dumps(["a", "b"]), "idx2tag"),
        (json.dumps({"tags": ["a"]}), "idx2tag"),
        (json.dumps({"idx2tag": "a, b"}), "idx2tag"),
        (json.dumps({"idx2tag": []}), "idx2tag"),
        (json.dumps({"idx2tag": ["a", 3, None]}), "idx2tag"),
        (json.dumps({"idx2tag": ["a"], "tag2category": ["a"]}), "tag2category"),
        (json.dumps({"idx2tag": ["a", "b"], "tag2category": {"b": "general"}}), "'b'"),
        (json.dumps({"idx2tag": ["a", "b"], "tag2category": {"b": [1]}}), "'b'"),
        (json.dumps({"idx2tag": ["a", "b"], "tag2category": {"b": 2.5}}), "'b'"),
        (json.dumps({"idx2tag": ["a", "b"], "tag2category": {"b": True}}), "'b'"),
    ],
    ids=[
        "not-json",
        "empty",
        "list",
        "no-idx2tag",
        "idx2tag-string",
        "idx2tag-empty",
        "non-string-tags",
        "tag2category-list",
        "category-name",
        "category-list",
        "category-fraction",
        "category-bool",
    ],
)
def test_malformed_file_raises_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "broken_vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VocabularyError) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_binary_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x80\x81\xfe\xff" * 10)
    with pytest.raises(VocabularyError) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(VocabularyError) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_vocabulary_error_is_a_value_error():
    assert issubclass(VocabularyError, ValueError)


# -- lookup -------------------------------------------------------------------------------------


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_data(
        {
            "idx2tag": ["looking at viewer", "fate (series)", "1girl", "^_^", "by artist name"],
            "tag2category": {"fate (series)": 3, "by artist name": 1},
        }
    )


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("looking at viewer", [0]),
        ("Looking_At_Viewer", [0]),
        ("  LOOKING at_viewer ", [0]),
        ("fate (series)", [1]),
        ("fate \\(series\\)", [1]),
        ("Fate_\\(Series\\)", [1]),
        ("1GIRL", [2]),
        ("^_^", [3]),
        ("By_Artist_Name", [4]),
        ("looking", []),
        ("fate", []),
        ("", []),
    ],
)
def test_find_ignores_case_underscores_and_escapes(vocab, typed, expected):
    assert vocab.find(typed) == expected


def test_find_returns_every_tag_with_the_same_normal_form():
    vocab = Vocabulary.from_data({"idx2tag": ["a b", "A_B", "c"]})
    assert vocab.find("a_b") == [0, 1]
    assert vocab.index["A_B"] == 1


def test_category_ids_length_must_match_tags():
    import numpy as np

    with pytest.raises(VocabularyError, match="2 tags but 3"):
        Vocabulary(["a", "b"], np.array([0, 1, 2]))


# -- the category table -------------------------------------------------------------------------


def test_categories_in_display_order_with_reference_colours():
    assert [c.name for c in CATEGORIES] == DISPLAY_ORDER
    assert [c.order for c in CATEGORIES] == list(range(10))
    table = {c.id: (c.name, c.color) for c in CATEGORIES}
    assert table == {
        0: ("unassigned", "#6b7280"),
        1: ("general", "#4ade80"),
        2: ("artist", "#f472b6"),
        3: ("contributor", "#a78bfa"),
        4: ("copyright", "#fb923c"),
        5: ("character", "#60a5fa"),
        6: ("species", "#facc15"),
        7: ("disambiguation", "#94a3b8"),
        8: ("meta", "#e2e8f0"),
        9: ("lore", "#f87171"),
    }
    assert CATEGORY_BY_ID[0] is UNASSIGNED


def test_category_by_name():
    assert category_by_name(" Character ").id == 5
    with pytest.raises(ValueError, match="artist"):  # the message lists the choices
        category_by_name("weapons")
