"""The UI's server-side pieces that need no browser: the page's payload, the tag list a click
appends to, per-category strings, the look-up's order, the options each mode hides, and the
Batch summary naming skipped files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tagger.datasets.batch import BatchOutput
from tagger.engine.vocab import CATEGORY_BY_NAME, Vocabulary
from tagger.tags.formats import category_tag_strings
from tagger.tags.options import MODES, TagOptions
from tagger.tags.selection import add_to_tag_list, select_tags
from tagger.web.controls import MODE_ONLY, present_categories
from tagger.web.page_scores import page_scores
from tagger.web.service import summary_markdown
from tagger.web.tabs.tag import lookup_rows, page_script, rules_config

VOCAB = Vocabulary(
    ["cat", "cat ears", "black cat", "fate (series)", "dog", "catalog"],
    np.array([CATEGORY_BY_NAME[n].id for n in ("general", "general", "general", "copyright", "general", "meta")]),
)
SCORES = np.array([0.9, 0.2, 0.6, 0.7, 0.1, 0.4], dtype=np.float32)


@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        ("", "cat", "cat"),
        (None, "cat", "cat"),
        ("dog", "cat", "dog, cat"),
        ("dog, ", "cat", "dog, cat"),
        ("dog,\n", "cat", "dog, cat"),
        ("Cat_Ears, dog", "cat ears", "Cat_Ears, dog"),  # already there, written otherwise
        ("fate \\(series\\)", "fate (series)", "fate \\(series\\)"),
    ],
)
def test_add_to_tag_list(text, tag, expected):
    assert add_to_tag_list(text, tag) == expected


def test_an_added_tag_is_excluded_by_the_selection():
    text = add_to_tag_list(add_to_tag_list("", "cat"), "fate (series)")
    tags = select_tags(SCORES, VOCAB, TagOptions(exclude=text, threshold=0.0, floor=0.0).selection)
    assert {t.tag for t in tags} == {"cat ears", "black cat", "dog", "catalog"}


def test_category_strings_leave_prepended_tags_to_the_whole_string():
    options = TagOptions(threshold=0.3, prepend="masterpiece", underscores=True, escape_parentheses=True)
    tags = select_tags(SCORES, VOCAB, options.selection)
    strings = {c.name: s for c, s in category_tag_strings(tags, underscores=True, escape_parentheses=True)}
    assert strings == {"copyright": "fate_\\(series\\)", "general": "cat, black_cat", "meta": "catalog"}
    assert options.tag_string(tags).startswith("masterpiece, ")


def test_the_payload_is_small_and_holds_what_the_page_needs():
    payload = page_scores(SCORES, VOCAB, 0.3)
    assert [row[0] for row in payload["tags"]] == ["cat", "black cat", "fate (series)", "catalog"]
    assert all(row[1] == float(SCORES[row[3]]) for row in payload["tags"])
    assert set(payload["mcut"]) == {str(CATEGORY_BY_NAME[n].id) for n in ("general", "copyright", "meta")}
    json.dumps(payload, allow_nan=False)


def test_lookup_puts_an_exact_match_first_then_the_best_scores():
    rows = lookup_rows("cat", SCORES, VOCAB)
    assert [r[0] for r in rows] == ["cat", "black cat", "catalog", "cat ears"]
    assert [r[2] for r in rows] == ["0.9000", "0.6000", "0.4000", "0.2000"]
    # Without an image: prefixes before other matches, no scores.
    assert [r[0] for r in lookup_rows("cat", None, VOCAB)] == ["cat", "cat ears", "catalog", "black cat"]
    assert lookup_rows("  ", SCORES, VOCAB) == []


@pytest.mark.parametrize("mode", ["threshold", "topk", "mcut"])
def test_the_options_hidden_in_a_mode_do_not_change_its_selection(mode):
    """What the page hides for a mode (MODE_ONLY) really has no effect in that mode."""
    rng = np.random.default_rng(0)
    vocab = Vocabulary([f"t{i}" for i in range(60)], rng.integers(0, 10, 60).astype(np.int16))
    scores = rng.random(60).astype(np.float32)
    base = select_tags(scores, vocab, TagOptions(mode=mode).selection)
    changed = {
        "threshold": 0.9,
        "character_threshold": 0.1,
        "category_thresholds": "general=0.99",
        "topk_per_category": 1,
    }
    for name, only in MODE_ONLY.items():
        options = TagOptions(mode=mode, **{name: changed[name]})
        effect = select_tags(scores, vocab, options.selection) != base
        assert effect == (only == mode), (name, mode)


def test_the_page_script_carries_the_rules_and_the_configuration():
    script = page_script()
    assert script.startswith("<script>") and script.endswith("</script>")
    assert script.count("</script>") == 1
    assert "TagRules" in script and "TagView" in script
    config = rules_config()
    assert [c[1] for c in config["categories"]][:3] == ["artist", "copyright", "character"]
    assert config["defaults"]["floor"] == TagOptions().floor


def test_the_batch_summary_names_skipped_files():
    output = BatchOutput(skipped=[f"notes_{i}.txt" for i in range(12)] + ["odd`name.md"], seconds=1.0)
    text = summary_markdown(output)
    assert "· 13 skipped (not images)" in text
    assert "`notes_0.txt`, `notes_1.txt`" in text and "and 3 more" in text
    assert summary_markdown(BatchOutput(skipped=["odd`name.md"], seconds=1.0)).endswith("Skipped: `odd'name.md`.")
    assert "Skipped" not in summary_markdown(BatchOutput(seconds=1.0))


def test_assets_hold_no_closing_script_tag():
    for path in (Path(__file__).resolve().parent.parent / "tagger" / "web" / "assets").glob("*.js"):
        assert "</script" not in path.read_text().lower(), path


def test_no_ticked_category_is_refused_not_read_as_all():
    """The Batch tab's boxes all unticked: a sentence, not a run with every category."""
    import gradio as gr

    from tagger.errors import SelectionError
    from tagger.web.controls import build_option_controls

    with gr.Blocks():
        controls = build_option_controls(VOCAB)
    values = {widget: widget.value for widget in controls.inputs()}
    assert set(controls.options(values).categories) == {"general", "copyright", "meta"}
    with pytest.raises(SelectionError, match="Tick at least one category"):
        controls.options({**values, controls.widgets["categories"]: []})


def test_the_bar_above_the_cards_offers_the_controls_choices_and_writes_to_their_ids():
    import gradio as gr

    from tagger.web.controls import build_option_controls

    with gr.Blocks():
        controls = build_option_controls(VOCAB, typed=("category_thresholds",))
    quick = controls.quick_bar()
    assert [value for _, value in quick["modes"]] == list(MODES)
    assert quick["categories"] == [c.name for c in present_categories(VOCAB)]
    assert quick["ids"] == {
        "mode": "mode",
        "threshold": "threshold",
        "topk_per_category": "topk-per-category",
        "categories": "category-filter",
    }
    # The typed per-category box is in the page (the cards write into it) but shown on request only.
    assert controls.widgets["category_thresholds"].elem_classes == ["tv-typed"]
    assert not controls.widgets["threshold"].elem_classes
