"""The Tag tab's controls in Chromium at 1280 × 900 and 390 × 844, light and dark: the resolution
by the image (re-runs the model once, nothing else does), the category cards' headers (chevron,
the card's rule inline), the Batch tab tagging with the Tag tab's settings, the similarity band,
and the phone and accessibility rules (contrast, pale colours on white, 44 px tap targets, every
tab in reach, tables that scroll sideways, the heatmap caption cleared on "Back to the image").

Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from app_server import RunningApp
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    DESKTOP,
    IMAGE,
    PHONE,
    contrast,
    expected_string,
    luminance,
    new_page,
    open_tagged,
    queue_calls,
    selected,
)
from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}
THEMES = {"light": "", "dark": "?__theme=dark"}


@pytest.fixture(scope="module")
def scores(app: RunningApp) -> np.ndarray:
    tagger = app.context.tagger
    return tagger.run([tagger.prepare(IMAGE, max_size=app.context.default_size)])[0]


def small_scores(app: RunningApp) -> np.ndarray:
    tagger = app.context.tagger
    return tagger.run([tagger.prepare(IMAGE, max_size=256)])[0]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[dict], Page]]:
    made: list[Page] = []

    def open_one(viewport: dict) -> Page:
        made.append(new_page(browser, viewport, clipboard=True))
        return made[-1]

    yield open_one
    errors = [e for page in made for e in page.errors]  # type: ignore[attr-defined]
    for page in made:
        page.context.close()
    assert not errors, errors


def tag_string(page: Page):
    return page.locator("#tag-string textarea")


def set_size(page: Page, value: int) -> None:
    number = page.locator("#tag-size input[type=number]")
    number.fill(str(value))
    number.press("Enter")
    number.blur()


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_the_resolution_sits_by_the_image_and_reruns_the_model_once(app, open_page, scores, count_passes, width, theme):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app, THEMES[theme])
    expect(page.locator("#title")).to_contain_text("512 px by default (up to 1024)")
    size = page.locator("#tag-size")
    expect(size).to_contain_text("The long edge the model sees; larger is slower")
    # Near the image: right under the upload and address box, above the options.
    size_top = size.evaluate("e => e.getBoundingClientRect().top")
    assert page.locator("#tag-image").evaluate("e => e.getBoundingClientRect().bottom") <= size_top
    expect(page.locator("#tag-input #tag-size")).to_have_count(1)  # in the image's column, before the options
    assert contrast(page, "#tag-size div.info-text") >= 4.5 or theme == "dark"
    small = small_scores(app)  # before counting: computed here, not by the page
    counted = count_passes(app.context.tagger)
    calls = queue_calls(page)
    seen: list[int] = []
    original = app.context.runner.call

    def watch(fn, pixels, *args):
        seen.extend(max(p.shape[-2:]) for p in pixels)
        return original(fn, pixels, *args)

    app.context.runner.call = watch  # type: ignore[method-assign]
    try:
        set_size(page, 250)  # snapped to 256; the example is 451 px wide, so the model sees 256
        for _ in range(100):  # the model's answer comes back
            if counted.passes:
                break
            page.wait_for_timeout(100)
        expect(tag_string(page)).to_have_value(expected_string(app, small))
        assert counted.passes == 1 and seen == [256], (counted.passes, seen)
        # Focus and blur without a change: no model call (Gradio sends the release; it is skipped).
        page.locator("#tag-size input[type=number]").focus()
        page.locator("#tag-size input[type=number]").blur()
        page.wait_for_timeout(500)
        assert counted.passes == 1
        # A filter change: no request at all.
        before = len(calls)
        number = page.locator("#threshold input[type=number]")
        number.fill("0.5")
        number.press("Enter")
        page.wait_for_timeout(500)
        assert counted.passes == 1 and len(calls) == before, calls[before:]
    finally:
        app.context.runner.call = original  # type: ignore[method-assign]
    page.screenshot(path=ARTIFACTS / f"resolution_{width}_{theme}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_category_cards_fold_and_take_their_threshold_in_the_header(app, open_page, scores, width, theme):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app, THEMES[theme])
    calls = queue_calls(page)
    # Contributor and unassigned start unticked, as on the authors' page.
    for name in ("contributor", "unassigned"):
        box = page.locator(f"#category-filter input[name={name}]")
        if box.count():
            expect(box).not_to_be_checked()
    card = page.locator("#tag-view .tv-category").first
    name = card.get_attribute("data-category")
    chevron = card.locator(".tv-chevron")
    expect(chevron).to_have_attribute("aria-expanded", "true")
    chevron.click()
    expect(card.locator(".tv-bars")).to_be_hidden()
    expect(chevron).to_have_attribute("aria-expanded", "false")
    # The card's threshold, typed in its header, is a filter like any other: drawn in the page.
    field = page.locator(f"#tag-view .tv-cat-threshold[data-category='{name}']")
    expect(field).to_have_value("0.85" if name == "character" else "0.35")
    field.fill("0.6")
    field.press("Enter")
    expect(tag_string(page)).to_have_value(expected_string(app, scores, category_thresholds=f"{name}=0.6"))
    expect(page.locator("#category-thresholds textarea")).to_have_value(f"{name}=0.6")
    folded = page.locator(f"#tv-{name}")
    if folded.count():
        expect(folded).to_have_class("tv-category tv-collapsed")  # still folded after the redraw
        folded.locator(".tv-chevron").click()
        expect(folded.locator(".tv-bars")).to_be_visible()
    assert not calls, calls
    if width == "phone":
        for selector in (".tv-tag", ".tv-x", ".tv-copy", ".tv-chevron"):
            box = page.locator(f"#tag-view {selector}").first.bounding_box()
            assert box and box["height"] >= 44 and box["width"] >= 44, (selector, box)
    page.screenshot(path=ARTIFACTS / f"card_headers_{width}_{theme}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
def test_light_mode_contrast_and_pale_colours(app, open_page, theme):
    page = open_page(DESKTOP)
    open_tagged(page, app, THEMES[theme])
    assert contrast(page, "#tag-view .tv-x") >= 4.5
    assert contrast(page, "#threshold div.info-text") >= 4.5
    dark = theme == "dark"
    for card in page.locator("#tag-view .tv-category").all():
        bar = card.locator(".tv-bar").first.evaluate("e => getComputedStyle(e).backgroundColor")
        back = page.evaluate("getComputedStyle(document.body).backgroundColor")
        a, b = sorted((luminance(bar), luminance(back)), reverse=True)
        if not dark:  # drawn on white: at least 3:1, WCAG's contrast for graphics
            assert (a + 0.05) / (b + 0.05) >= 3, (card.get_attribute("data-category"), bar)
    page.screenshot(path=ARTIFACTS / f"contrast_{theme}.png", full_page=False)


def test_back_to_the_image_clears_the_heatmap_caption(app, open_page):
    page = open_page(DESKTOP)
    open_tagged(page, app)
    page.locator("#tag-view .tv-row").first.locator(".tv-tag").click()
    caption = page.locator("#tag-heatmap-caption")
    expect(caption).not_to_be_empty()
    page.locator("#tag-heatmap-back").click()
    expect(page.locator("#tag-image img")).to_be_visible()
    expect(caption).to_have_text("")


@pytest.mark.parametrize("width", VIEWPORTS)
def test_the_batch_tab_tags_with_the_tag_tabs_settings(app, open_page, image_files: list[Path], width):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app)
    number = page.locator("#threshold input[type=number]")
    number.fill("0.6")
    number.press("Enter")
    page.get_by_role("tab", name="Batch").click()
    settings = page.locator("#batch-settings")
    expect(settings).to_contain_text("Tagged with the Tag tab's settings")
    expect(settings).to_contain_text("threshold 0.6")
    expect(settings).to_contain_text("512 px")
    page.locator("#batch-files input[type=file]").set_input_files(image_files)
    page.locator("#batch-run").click()
    expect(page.locator("#batch-summary")).to_contain_text(f"{len(image_files)} images tagged")
    tagger = app.context.tagger
    expected = []
    for path in image_files:
        probabilities = tagger.run([tagger.prepare(path, max_size=512)])[0]
        expected.append(str(len(selected(app, probabilities, threshold=0.6))))
    cells = page.locator("#batch-table .virtual-row [data-col='2']")
    expect(cells).to_have_count(len(image_files))
    assert sorted(cells.all_inner_texts()) == sorted(expected)
    page.screenshot(path=ARTIFACTS / f"batch_settings_{width}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
def test_a_phone_reaches_every_tab_and_the_api_tables_scroll_sideways(app, open_page, theme):
    page = open_page(PHONE)
    page.goto(app.url + THEMES[theme])
    for name in ("Tag", "Batch", "Features", "Similarity", "API"):
        tab = page.get_by_role("tab", name=name, exact=True)
        expect(tab).to_be_visible()
        box = tab.bounding_box()
        assert box and box["height"] >= 44, (name, box)
    page.get_by_role("tab", name="API", exact=True).click()
    expect(page.locator("#api-tab table").first).to_be_visible()
    height = page.evaluate("document.documentElement.scrollHeight")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    assert height < 12_000, height
    page.screenshot(path=ARTIFACTS / f"phone_api_{theme}.png", full_page=False)


def test_the_similarity_has_its_band_and_bar(app, open_page):
    page = open_page(DESKTOP)
    open_tagged(page, app)
    page.get_by_role("tab", name="Similarity", exact=True).click()
    page.locator("#similarity-b input[type=file]").set_input_files(IMAGE)
    expect(page.locator("#similarity-result")).to_contain_text("Similarity 1.0000 · near-identical")
    bar = page.locator("#similarity-bar .sim-bar span")
    expect(bar).to_be_visible()
    assert bar.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(21, 128, 61)"
    page.screenshot(path=ARTIFACTS / "similarity_band.png", full_page=False)


def test_features_on_a_phone_scrolls_to_the_maps(app, open_page):
    page = open_page(PHONE)
    open_tagged(page, app)
    page.evaluate("window.scrollTo(0, 0)")
    page.get_by_role("tab", name="Features", exact=True).click()
    expect(page.locator("#features-summary")).to_contain_text("as the model sees it")
    page.wait_for_timeout(800)
    top = page.locator("#features-summary").evaluate("e => e.getBoundingClientRect().top")
    assert -10 <= top < PHONE["height"] / 2, top
    page.screenshot(path=ARTIFACTS / "phone_features.png", full_page=False)
