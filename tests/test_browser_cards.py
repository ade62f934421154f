"""The Tag tab's controls beside the results, in Chromium at 1280 × 900 and 390 × 844, light and
dark: the bar above the cards (mode, threshold or k, categories) drives the Tag tab's controls
and stays in view (a sticky results column on a desktop, a sticky bar on a phone); each card's
header switches its rule between a threshold and the top k, and its handle moves the card, which
the ``order=category`` string follows; the typed per-category box is shown only on request. All
of it in the page: no request, no model call. Then the other tabs: Features and Similarity at the
Tag tab's resolution, the PCA blend's colour stops, and similarity pairs from image addresses.

Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import dataclasses
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
    expected_category_strings,
    expected_string,
    new_page,
    open_format,
    open_tagged,
    options,
    queue_calls,
)
from playwright.sync_api import Browser, Page, expect

from tagger.tags.selection import select_tags

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}
THEMES = {"light": "", "dark": "?__theme=dark"}


@pytest.fixture(scope="module")
def scores(app: RunningApp) -> np.ndarray:
    tagger = app.context.tagger
    return tagger.run([tagger.prepare(IMAGE, max_size=app.context.default_size)])[0]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[dict], Page]]:
    made: list[Page] = []

    def open_one(viewport: dict) -> Page:
        made.append(new_page(browser, viewport))
        return made[-1]

    yield open_one
    errors = [e for page in made for e in page.errors]  # type: ignore[attr-defined]
    for page in made:
        page.context.close()
    assert not errors, errors


def tag_string(page: Page):
    return page.locator("#tag-string textarea")


def card_names(page: Page) -> list[str]:
    return page.locator("#tag-view .tv-category").evaluate_all("els => els.map(e => e.dataset.category)")


def top(page: Page, selector: str) -> float:
    return page.locator(selector).first.evaluate("e => e.getBoundingClientRect().top")


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_the_bar_above_the_cards_drives_the_controls_and_stays_in_view(
    app, open_page, scores, count_passes, width, theme
):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app, THEMES[theme])
    counted = count_passes(app.context.tagger)
    calls = queue_calls(page)
    bar = page.locator("#tag-view .tv-quick")
    expect(bar).to_be_visible()

    bar.locator("select").select_option("topk")
    expect(page.locator("#mode input[value=topk]")).to_be_checked()
    k = bar.locator("input[data-field=topk_per_category]")
    k.fill("3")
    k.press("Enter")
    expect(page.locator("#topk-per-category input[type=number]")).to_have_value("3")
    expect(tag_string(page)).to_have_value(expected_string(app, scores, mode="topk", topk_per_category=3))

    bar.locator("select").select_option("threshold")
    threshold = bar.locator("input[data-field=threshold]")
    threshold.fill("0.5")
    threshold.press("Enter")
    expect(page.locator("#threshold input[type=number]")).to_have_value("0.5")
    expect(tag_string(page)).to_have_value(expected_string(app, scores, threshold=0.5))

    dropped = card_names(page)[0]
    bar.locator("summary").click()
    bar.locator(f"input[data-field=categories][value={dropped}]").uncheck()
    expect(page.locator(f"#category-filter input[name={dropped}]")).not_to_be_checked()
    kept = [c for c in options(app).categories if c != dropped]
    expect(tag_string(page)).to_have_value(expected_string(app, scores, threshold=0.5, categories=kept))
    expect(bar.locator("details")).to_have_attribute("open", "")  # the list stays open over the redraw
    assert not calls, f"a filter change went to the server: {calls}"
    assert counted.passes == 0

    if width == "desktop":
        # The results column stays on screen while the controls beside it scroll by.
        page.locator("#tag-controls #implied").scroll_into_view_if_needed()
        assert page.evaluate("window.scrollY") > 100
        assert -1 <= top(page, "#tag-results") <= 1
        assert 0 <= top(page, "#tag-view .tv-quick") < DESKTOP["height"] / 2
    else:
        # On a phone the bar sticks to the top of the screen over the cards.
        cards = page.locator("#tag-view .tv-category")
        cards.nth(cards.count() // 2).evaluate("e => e.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(300)
        assert -1 <= top(page, "#tag-view .tv-quick") <= 1
        box = bar.bounding_box()
        assert box and box["height"] < PHONE["height"] / 3, box  # small: the cards stay readable
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=ARTIFACTS / f"quick_bar_{width}_{theme}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_a_card_switches_to_top_k_and_its_handle_moves_it(app, open_page, scores, count_passes, width, theme):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app, THEMES[theme])
    counted = count_passes(app.context.tagger)
    calls = queue_calls(page)
    expect(page.locator("#category-thresholds")).to_be_hidden()  # the cards' headers replace it

    names = card_names(page)
    name = names[0]
    page.locator(f"#tv-{name} .tv-rule-switch").click()
    k = page.locator(f"#tv-{name} .tv-cat-topk")
    expect(k).to_have_value("20")
    k.fill("2")
    k.press("Enter")
    expect(page.locator(f"#tv-{name} .tv-row")).to_have_count(2)
    opts = options(app)
    selection = dataclasses.replace(opts.selection, category_topk={name: 2})
    expect(tag_string(page)).to_have_value(opts.tag_string(select_tags(scores, app.context.vocab, selection)))
    page.locator(f"#tv-{name} .tv-rule-switch").click()
    expect(page.locator(f"#tv-{name} .tv-cat-threshold")).to_be_visible()
    expect(tag_string(page)).to_have_value(expected_string(app, scores))

    # The handle: the arrow keys move a card; the "by category" string follows the cards.
    open_format(page)
    page.get_by_label("By category").check()
    page.locator(f"#tv-{name} .tv-drag").focus()
    page.keyboard.press("ArrowDown")
    moved = [names[1], name, *names[2:]]
    expect(page.locator("#tag-view .tv-category").first).to_have_attribute("data-category", names[1])
    assert card_names(page) == moved
    expect(page.locator(f"#tv-{name} .tv-drag")).to_be_focused()
    strings = expected_category_strings(app, scores)
    expect(tag_string(page)).to_have_value(", ".join(strings[n] for n in moved if strings.get(n)))
    if width == "desktop":
        # A drag with the pointer: the last card dropped on the first goes before it.
        last = page.locator(f"#tv-{moved[-1]} .tv-drag").bounding_box()
        first = page.locator(f"#tv-{moved[0]} header").bounding_box()
        assert last and first
        page.mouse.move(last["x"] + 4, last["y"] + 4)
        page.mouse.down()
        page.mouse.move(first["x"] + 10, first["y"] + 4, steps=5)
        page.mouse.up()
        expect(page.locator("#tag-view .tv-category").first).to_have_attribute("data-category", moved[-1])
    else:
        for selector in (".tv-drag", ".tv-rule-switch"):
            box = page.locator(f"#tag-view {selector}").first.bounding_box()
            assert box and box["height"] >= 44 and box["width"] >= 44, (selector, box)

    # The typed box, on request, for whoever prefers it.
    page.locator("#typed-toggle").click()
    expect(page.locator("#category-thresholds")).to_be_visible()
    assert not calls, f"a card change went to the server: {calls}"
    assert counted.passes == 0
    page.screenshot(path=ARTIFACTS / f"card_rules_{width}_{theme}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_features_and_similarity_follow_the_tag_tabs_resolution(app, open_page, width, theme):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app, THEMES[theme])
    seen: list[int] = []
    runner = app.context.runner
    call, descriptors = runner.call, runner.descriptors

    def watch_call(fn, pixels, *args):
        seen.extend(max(p.shape[-2:]) for p in pixels)
        return call(fn, pixels, *args)

    def watch_descriptors(pixels):
        seen.extend(max(p.shape[-2:]) for p in pixels)
        return descriptors(pixels)

    runner.call, runner.descriptors = watch_call, watch_descriptors  # type: ignore[method-assign]
    try:
        number = page.locator("#tag-size input[type=number]")
        number.fill("250")  # snapped to 256; the example is 451 px wide
        number.press("Enter")
        number.blur()
        for _ in range(100):  # the Tag tab re-runs at the new size first
            if seen:
                break
            page.wait_for_timeout(100)
        assert seen == [256], seen
        seen.clear()
        page.get_by_role("tab", name="Features").click()
        expect(page.locator("#features-summary")).to_contain_text("256×")
        assert seen and set(seen) == {256}, seen
        page.get_by_role("tab", name="Similarity").click()
        page.locator("#similarity-b input[type=file]").set_input_files(IMAGE)
        expect(page.locator("#similarity-result")).to_contain_text("Similarity")
        assert set(seen) == {256}, seen
    finally:
        runner.call, runner.descriptors = call, descriptors  # type: ignore[method-assign]
    page.screenshot(path=ARTIFACTS / f"features_resolution_{width}_{theme}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_pca_colour_stops_are_added_and_removed_without_the_model(app, open_page, count_passes, width, theme):
    page = open_page(VIEWPORTS[width])
    open_tagged(page, app, THEMES[theme])
    page.get_by_role("tab", name="Features").click()
    blend = page.locator("#features-blend img")
    expect(blend).to_be_visible()
    counted = count_passes(app.context.tagger)
    pickers = [page.locator(f"#pca-colour-{i}") for i in (1, 2, 3)]
    shown = blend.get_attribute("src")
    page.locator("#pca-remove-stop").click()
    expect(pickers[2]).to_be_hidden()
    expect(blend).not_to_have_attribute("src", shown or "")
    page.locator("#pca-remove-stop").click()
    page.locator("#pca-remove-stop").click()  # one stays
    expect(pickers[1]).to_be_hidden()
    expect(pickers[0]).to_be_visible()
    page.locator("#pca-add-stop").click()
    expect(pickers[1]).to_be_visible()
    expect(pickers[2]).to_be_hidden()
    assert counted.passes == 0, "a colour change must not run the model"
    page.screenshot(path=ARTIFACTS / f"pca_stops_{width}_{theme}.png", full_page=False)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("width", VIEWPORTS)
def test_url_pairs_are_scored_with_csv_and_jsonl_downloads(app, open_page, image_server, width, theme):
    page = open_page(VIEWPORTS[width])
    page.goto(app.url + THEMES[theme])
    page.get_by_role("tab", name="Similarity").click()
    cat, coffee = f"{image_server}/cat.jpg", f"{image_server}/coffee.jpg"
    refused = "http://127.0.0.1:9/x.png"  # loopback, not the allowed server
    page.locator("#similarity-urls textarea").fill(
        f'[["{cat}", "{cat}"], ["{cat}", "{coffee}"], ["{cat}", "{refused}"]]'
    )
    page.locator("#similarity-urls-button").click()
    summary = page.locator("#similarity-batch-summary")
    expect(summary).to_contain_text("2 pairs")
    expect(summary).to_contain_text("not a public internet address")
    expect(page.locator("#similarity-batch-table .virtual-row")).to_have_count(2)
    for button, suffix in (("#similarity-csv", ".csv"), ("#similarity-jsonl", ".jsonl")):
        with page.expect_download() as download:
            page.locator(button).click()
        assert download.value.suggested_filename.endswith(suffix)
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()  # the JSONL
    assert len(lines) == 2 and cat in lines[0]
    page.locator("#similarity-urls textarea").fill("not json")
    page.locator("#similarity-urls-button").click()
    expect(summary).to_contain_text("Write the pairs as JSON")
    expect(page.locator("#similarity-batch-table .virtual-row")).to_have_count(2)  # the last good table stays
    page.screenshot(path=ARTIFACTS / f"similarity_urls_{width}_{theme}.png", full_page=False)
