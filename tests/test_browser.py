"""The Tag tab in a real browser (Debian's chromium through Playwright) at 1280 × 900: upload,
tags drawn in the page, filters without a server round trip, errors next to their field,
copy buttons, mode-dependent sliders, clicks on tags (heatmap, exclude), the look-up, the URL
box, and the other tabs reusing the image.

One app and one browser for the module; each test starts from a freshly loaded, tagged page.
Screenshots go to ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np
import pytest
from app_server import RunningApp
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    DESKTOP,
    IMAGE,
    contrast,
    expected_category_strings,
    expected_string,
    new_page,
    open_format,
    open_tagged,
    queue_calls,
    selected,
    shown_categories,
    type_into,
)
from playwright.sync_api import Browser, Page, expect

from tagger.errors import SelectionError
from tagger.tags.options import TagOptions
from tagger.web.controls import present_categories, ticked_categories
from tagger.web.tabs import tag as tag_tab

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def scores(app: RunningApp) -> np.ndarray:
    """The engine's scores for the image, computed directly (before the browser test counts passes)."""
    return app.context.tagger.probabilities([IMAGE])[0]


@pytest.fixture
def page(app: RunningApp, browser: Browser, scores: np.ndarray) -> Iterator[Page]:
    """A fresh page with ``IMAGE`` uploaded on the Tag tab and its tags shown."""
    page = new_page(browser, DESKTOP, clipboard=True)
    open_tagged(page, app)
    yield page
    errors = page.errors  # type: ignore[attr-defined]
    page.context.close()
    assert not errors, errors


def tag_string(page: Page):
    return page.locator("#tag-string textarea")


def set_number(page: Page, elem_id: str, value: object) -> None:
    """Type into a slider's number box, as a person does."""
    number = page.locator(f"#{elem_id} input[type=number]")
    number.fill(str(value))
    number.press("Enter")


def check_view(app: RunningApp, page: Page, scores: np.ndarray, **values: object) -> None:
    """The string of all tags, one block per category with tags, and each block's string."""
    expect(tag_string(page)).to_have_value(expected_string(app, scores, **values))
    strings = expected_category_strings(app, scores, **values)
    assert shown_categories(page) == set(strings)
    for name, text in strings.items():
        expect(page.locator(f"#tv-{name} .tv-string")).to_have_text(text)


# -- item 1: the tags, drawn in the page ----------------------------------------------------------


def test_upload_shows_the_engines_tags(app, page, scores):
    check_view(app, page, scores)
    count = len(selected(app, scores))
    expect(page.locator("#summary")).to_have_text(re.compile(rf"^{count} tags · model [\d.]+ s on cpu$"))
    # Bars in each category's colour, the best first, at most 40.
    for category in present_categories(app.context.vocab):
        block = page.locator(f"#tv-{category.name}")
        if not block.count():
            continue
        # On the light theme pale colours are darkened to 3:1 on white (TagView.onWhite).
        shown = page.evaluate("c => TagView.onWhite(c)", category.color)
        red, green, blue = (int(shown[i : i + 2], 16) for i in (1, 3, 5))
        bar = block.locator(".tv-bar").first
        assert bar.evaluate("e => getComputedStyle(e).backgroundColor") == f"rgb({red}, {green}, {blue})"
        shown = [float(s) for s in block.locator(".tv-score").all_text_contents()]
        assert shown == sorted(shown, reverse=True) and 0 < len(shown) <= 40
    expect(page.locator("#demo-warning")).to_contain_text("Demo mode")
    for selector in (".tv-label", ".tv-string", ".tv-name", "#summary"):
        assert contrast(page, f"#tag-view {selector}") >= 4.5, selector
    page.screenshot(path=ARTIFACTS / "tag_tab.png", full_page=True)


def test_filters_change_in_the_page_without_the_server_or_the_model(app, page, scores, count_passes):
    counted = count_passes(app.context.tagger)
    calls = queue_calls(page)
    names = ticked_categories(app.context.vocab)
    dropped = next(iter(shown_categories(page)))  # a category that has tags now
    kept = [n for n in names if n != dropped]

    page.locator(f"#category-filter input[name={dropped}]").uncheck()
    check_view(app, page, scores, categories=kept)
    set_number(page, "threshold", 0.5)
    check_view(app, page, scores, categories=kept, threshold=0.5)
    set_number(page, "character-threshold", 0.2)
    check_view(app, page, scores, categories=kept, threshold=0.5, character_threshold=0.2)
    type_into(page, "category-thresholds", "general=0.3, meta: 0.6")
    values = {
        "categories": kept,
        "threshold": 0.5,
        "character_threshold": 0.2,
        "category_thresholds": "general=0.3, meta: 0.6",
    }
    check_view(app, page, scores, **values)

    open_format(page)
    page.locator("#underscores input[type=checkbox]").check()
    page.get_by_label("By category").check()
    values.update(underscores=True, order="category")
    check_view(app, page, scores, **values)
    assert "_" in tag_string(page).input_value()

    # Item 6: only the sliders of the chosen mode are shown.
    threshold_only = [page.locator(f"#{n}") for n in ("threshold", "character-threshold", "category-thresholds")]
    topk = page.locator("#topk-per-category")
    expect(topk).to_be_hidden()
    page.get_by_label("MCut (automatic)").check()
    check_view(app, page, scores, **{**values, "mode": "mcut"})
    for hidden in [*threshold_only, topk]:
        expect(hidden).to_be_hidden()
    expect(page.locator("#floor")).to_be_visible()
    page.get_by_label("Top-k per category").check()
    expect(topk).to_be_visible()
    set_number(page, "topk-per-category", 2)
    check_view(app, page, scores, **{**values, "mode": "topk", "topk_per_category": 2})
    for hidden in threshold_only:
        expect(hidden).to_be_hidden()
    page.screenshot(path=ARTIFACTS / "tag_tab_filtered.png", full_page=True)
    page.get_by_label("Threshold", exact=True).check()
    for shown in threshold_only:
        expect(shown).to_be_visible()
    expect(topk).to_be_hidden()
    check_view(app, page, scores, **values)

    assert not calls, f"a filter change went to the server: {calls}"
    assert counted.passes == 0, "re-rendering must not run the model"


def test_a_floor_under_the_sent_scores_fetches_more_scores_but_never_runs_the_model(app, page, scores, count_passes):
    counted = count_passes(app.context.tagger)
    page.get_by_label("Top-k per category").check()
    set_number(page, "topk-per-category", 200)
    set_number(page, "floor", 0)
    check_view(app, page, scores, mode="topk", topk_per_category=200, floor=0.0)
    every = selected(app, scores, mode="topk", topk_per_category=200, floor=0.0)  # every tag of the ticked categories
    assert len(tag_string(page).input_value().split(", ")) == len(every)
    assert counted.passes == 0


# -- item 2: a bad per-category threshold, next to its field --------------------------------------


def test_a_bad_per_category_threshold_is_shown_next_to_the_field(app, page, scores):
    before = tag_string(page).input_value()
    with pytest.raises(SelectionError) as python:
        TagOptions(category_thresholds="artist=abc")
    type_into(page, "category-thresholds", "artist=abc")
    note = page.locator("#category-thresholds .tv-field-error")
    expect(note).to_have_text(str(python.value))
    expect(note).to_be_visible()
    expect(page.locator("#tag-view .tv-error")).to_contain_text(str(python.value))
    assert tag_string(page).input_value() == before  # the last good tags stay
    page.screenshot(path=ARTIFACTS / "tag_tab_bad_threshold.png", full_page=False)

    type_into(page, "category-thresholds", "artist=0.5")
    expect(note).to_have_count(0)
    check_view(app, page, scores, category_thresholds="artist=0.5")


def test_a_field_the_page_cannot_read_asks_the_server_once_and_never_runs_the_model(
    app, page, scores, count_passes, model_calls
):
    """The page reads ASCII itself; about other text it asks the server, once per value."""
    counted = count_passes(app.context.tagger)
    calls = queue_calls(page)
    tag = page.locator("#tag-view .tv-row").first.get_attribute("data-tag")
    odd = f"\u3000{tag}\u3000"  # ideographic spaces, which Python's strip() removes
    open_format(page)
    type_into(page, "exclude", odd)
    check_view(app, page, scores, exclude=odd)
    assert tag not in tag_string(page).input_value().split(", ")
    assert len(calls) == 1, calls

    with pytest.raises(SelectionError) as python:
        TagOptions(category_thresholds="artist=\uff10.x")  # a full-width digit, then no number
    note = page.locator("#category-thresholds .tv-field-error")
    for text in ("artist=\uff10.x", "artist=0.5", "artist=\uff10.x"):  # the second time: no request
        type_into(page, "category-thresholds", text)
        if text == "artist=0.5":
            check_view(app, page, scores, exclude=odd, category_thresholds=text)
        else:
            expect(note).to_have_text(str(python.value))
    assert len(calls) == 3, calls  # the exclusion, the bad value, and the exclusion with artist=0.5
    assert counted.passes == 0 and not model_calls


def test_values_typed_while_the_server_reads_earlier_ones_are_read_too(app, page, scores, monkeypatch):
    """A slow answer does not swallow the next question: the page shows the last values typed."""
    first, second = page.locator("#tag-view .tv-row").evaluate_all("rows => rows.slice(0, 2).map(r => r.dataset.tag)")
    read = tag_tab.page_ruling

    def slow_ruling(values: dict) -> dict:
        time.sleep(1.0)  # the first question is still out when the second is asked
        return read(values)

    monkeypatch.setattr(tag_tab, "page_ruling", slow_ruling)
    calls = queue_calls(page)
    open_format(page)
    type_into(page, "exclude", f"\u3000{first}\u3000")
    type_into(page, "exclude", f"\u3000{second}\u3000")
    check_view(app, page, scores, exclude=f"\u3000{second}\u3000")
    assert first in tag_string(page).input_value().split(", ")
    assert len(calls) == 2, calls  # each value asked once


# -- item 5: per-category copy buttons; prepend only in the string of all tags ------------------


def test_each_category_has_a_copy_button_and_prepend_stays_out_of_it(app, page, scores):
    open_format(page)
    type_into(page, "prepend", "masterpiece, best quality")
    check_view(app, page, scores, prepend="masterpiece, best quality")
    assert tag_string(page).input_value().startswith("masterpiece, best quality, ")
    strings = expected_category_strings(app, scores)
    assert not any("masterpiece" in text for text in strings.values())
    for name, text in list(strings.items())[:2]:
        page.locator(f"#tv-{name} .tv-copy").click()
        expect(page.locator(f"#tv-{name} .tv-copy")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == text


# -- items 9 and 10: clicks on tags, the look-up ----------------------------------------------------


def test_clicking_a_tag_shows_its_heatmap_over_the_image(app, page, scores, model_calls, count_passes):
    counted = count_passes(app.context.tagger)
    row = page.locator("#tag-view .tv-row").nth(1)
    tag = row.get_attribute("data-tag")
    row.locator(".tv-tag").click()
    heatmap = page.locator("#tag-heatmap img")
    expect(heatmap).to_be_visible()
    expect(page.locator("#tag-image")).to_be_hidden()  # in the image's place
    expect(page.locator("#tag-heatmap-caption")).to_contain_text(f"{tag} (")
    assert model_calls == ["relevance"]  # one model call, for the heatmap
    page.screenshot(path=ARTIFACTS / "tag_tab_heatmap.png", full_page=False)
    page.locator("#tag-heatmap-back").click()
    expect(page.locator("#tag-image img")).to_be_visible()
    expect(heatmap).to_be_hidden()
    assert counted.passes == 1  # the heatmap's; showing it and going back run nothing more
    check_view(app, page, scores)  # the tags did not move


def test_the_cross_of_a_tag_excludes_it_and_an_include_list_limits_the_tags(app, page, scores):
    row = page.locator("#tag-view .tv-row").first
    tag = row.get_attribute("data-tag")
    row.locator(".tv-x").click()
    page.mouse.move(5, 5)  # off the list: the excluded row goes
    check_view(app, page, scores, exclude=tag)
    open_format(page)
    expect(page.locator("#exclude textarea")).to_have_value(tag)
    second = page.locator("#tag-view .tv-row").first.get_attribute("data-tag")
    page.locator("#tag-view .tv-row").first.locator(".tv-x").click()
    expect(page.locator("#exclude textarea")).to_have_value(f"{tag}, {second}")
    page.mouse.move(5, 5)
    check_view(app, page, scores, exclude=f"{tag}, {second}")

    # The include-only list (item 10): only these tags, written any way, the other rules still apply.
    top = selected(app, scores, exclude=f"{tag}, {second}")
    include = f"{top[0].tag.upper()}, {top[2].tag.replace(' ', '_')}, not a tag, {tag}"
    type_into(page, "include", include)
    check_view(app, page, scores, exclude=f"{tag}, {second}", include=include)
    assert tag_string(page).input_value() == ", ".join(t.tag for t in (top[0], top[2]))


def test_the_cross_is_safe_rows_stay_chips_show_and_undo_puts_back(app, page, scores, count_passes):
    counted = count_passes(app.context.tagger)
    rows = page.locator("#tag-view .tv-row")
    first, second = rows.nth(0), rows.nth(1)
    tag, below = first.get_attribute("data-tag"), second.get_attribute("data-tag")
    boxes = [first.bounding_box(), second.bounding_box()]
    first.locator(".tv-x").click()
    # The string drops the tag at once; the row stays where it was while the pointer is over the list.
    expect(tag_string(page)).to_have_value(expected_string(app, scores, exclude=tag))
    held = page.locator("#tag-view .tv-row.tv-held")
    expect(held).to_have_count(1)
    assert held.get_attribute("data-tag") == tag
    page.wait_for_timeout(200)  # the scroll that keeps the row under the pointer
    after = [rows.nth(0).bounding_box(), rows.nth(1).bounding_box()]
    assert all(abs(a["y"] - b["y"]) <= 1 and a["x"] == b["x"] for a, b in zip(after, boxes, strict=True)), after
    assert rows.nth(1).get_attribute("data-tag") == below  # the next click lands where it was aimed
    # The notice and the chip name the tag.
    expect(page.locator("#tag-view .tv-notice")).to_have_text(f"Excluded {tag} · undo")
    expect(page.locator("#tag-view .tv-chip-label")).to_have_text([tag])
    for selector in (".tv-chip-label", ".tv-excluded-title", ".tv-notice"):
        assert contrast(page, f"#tag-view {selector}") >= 4.5, selector
    page.screenshot(path=ARTIFACTS / "tag_tab_excluded.png", full_page=False)
    # Undo on the held row puts it back in place.
    held.locator(".tv-undo").click()
    expect(page.locator("#tag-view .tv-chip")).to_have_count(0)
    check_view(app, page, scores)
    # Excluded again, away from the list the row goes; the chip's ✕ brings it back.
    rows.nth(0).locator(".tv-x").click()
    page.mouse.move(5, 5)
    expect(page.locator("#tag-view .tv-row.tv-held")).to_have_count(0)
    check_view(app, page, scores, exclude=tag)
    page.locator("#tag-view .tv-chip-x").click()
    check_view(app, page, scores)
    expect(page.locator("#tag-view .tv-excluded")).to_have_count(0)
    assert counted.passes == 0  # excluding and undoing run no model


def test_lookup_is_sorted_by_score_and_a_row_shows_its_heatmap(app, page, scores):
    page.get_by_text("Look up any tag", exact=True).click()
    page.locator("#lookup textarea").fill("general")
    table = page.locator("#lookup-table .virtual-row")  # Gradio 6's data frame rows
    expect(table).to_have_count(12)
    rows = [r.locator("[role=gridcell]").all_inner_texts() for r in table.all()]
    shown = [float(cells[2]) for cells in rows]
    assert shown == sorted(shown, reverse=True)
    index = {tag: i for i, tag in enumerate(app.context.vocab.tags)}
    best = sorted((t for t in app.context.vocab.tags if "general" in t), key=lambda t: -scores[index[t]])[:12]
    assert [cells[0] for cells in rows] == best
    table.nth(3).locator("[role=gridcell]").first.click()
    expect(page.locator("#tag-heatmap img")).to_be_visible()
    expect(page.locator("#tag-heatmap-caption")).to_contain_text(f"{rows[3][0]} (general)")


# -- item 9: an image address, through the guarded fetcher ------------------------------------------


def test_an_image_address_is_fetched_and_tagged(app, browser, scores, image_server):
    page = new_page(browser, DESKTOP)
    try:
        page.goto(app.url)
        url = page.locator("#tag-url input")
        url.fill("http://127.0.0.1:9/not-allowed.png")  # loopback, not the allowed server: refused
        url.press("Enter")
        expect(page.locator("#tag-url-note")).to_contain_text("not a public internet address (loopback)")
        url.fill(f"{image_server}/{IMAGE.name}")
        url.press("Enter")
        check_view(app, page, scores)
        expect(page.locator("#tag-url-note")).to_have_text("")
        assert not page.errors  # type: ignore[attr-defined]
    finally:
        page.context.close()


# -- item 9: one image, many views ---------------------------------------------------------------


def test_features_and_similarity_use_the_tag_tabs_image(app, page, model_calls):
    page.get_by_role("tab", name="Features").click()
    expect(page.locator("#features-seen img")).to_be_visible()  # analysed on opening: no upload
    expect(page.locator("#features-summary")).to_contain_text("as the model sees it")
    assert model_calls == ["analyse"]
    page.get_by_role("tab", name="Tag").click()
    page.get_by_role("tab", name="Features").click()
    page.wait_for_timeout(300)
    assert model_calls == ["analyse"]  # the same image is not analysed twice

    page.get_by_role("tab", name="Similarity").click()
    expect(page.locator("#similarity-a img")).to_be_visible()
    page.locator("#similarity-b input[type=file]").set_input_files(IMAGE)
    expect(page.locator("#similarity-result")).to_contain_text("Similarity 1.0000")
    page.screenshot(path=ARTIFACTS / "similarity_tab.png", full_page=True)


# -- the API tab ----------------------------------------------------------------------------------


def test_api_tab_examples_hold_the_apps_address(app, browser):
    page = new_page(browser, DESKTOP)
    page.goto(app.url)
    page.get_by_role("tab", name="API").click()
    examples = page.locator("#api-examples")
    expect(examples).to_be_visible()
    base = app.url.rstrip("/")
    expect(examples).to_contain_text(f'Client("{app.url}")')
    expect(examples).to_contain_text(f"BASE={base}")
    if not base.endswith(":7860"):
        expect(examples).not_to_contain_text("127.0.0.1:7860")
    page.screenshot(path=ARTIFACTS / "api_tab.png", full_page=True)
    page.context.close()
