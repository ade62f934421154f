"""Layout and errors in a real browser: a phone (390 × 844) gets the results first and is
scrolled to them, the Batch table keeps its numbers whole, the dark theme stays readable, and
an error never wipes the last good output (its sentence shows instead of red "Error" pills).

One app and one browser for the module. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from app_server import RunningApp
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    DESKTOP,
    IMAGE,
    PHONE,
    contrast,
    error_pills,
    expected_string,
    new_page,
    open_tagged,
)
from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[dict], Page]]:
    """``open_page(viewport)`` → a ``new_page``; each is closed after the test, which fails
    on any error in a page."""
    made: list[Page] = []

    def open_one(viewport: dict) -> Page:
        made.append(new_page(browser, viewport))
        return made[-1]

    yield open_one
    errors = [e for page in made for e in page.errors]  # type: ignore[attr-defined]
    for page in made:
        page.context.close()
    assert not errors, errors


def tag_in_batch_tab(page: Page, app: RunningApp, files: list[Path]) -> None:
    """The app's Batch tab with ``files`` tagged."""
    page.goto(app.url)
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files(files)
    page.locator("#batch-run").click()
    expect(page.locator("#batch-summary")).to_contain_text(f"{len(files)} images tagged")


def top(page: Page, selector: str) -> float:
    return page.locator(selector).evaluate("e => e.getBoundingClientRect().top")


# -- item 4: phones -------------------------------------------------------------------------------


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_a_phone_gets_the_results_first_and_is_scrolled_to_them(app, open_page, theme):
    scores = app.context.tagger.probabilities([IMAGE])[0]
    page = open_page(PHONE)
    open_tagged(page, app, "" if theme == "light" else "?__theme=dark")
    expect(page.locator("#tag-string textarea")).to_have_value(expected_string(app, scores))
    # Upload, then results, then the controls.
    assert top(page, "#tag-input") < top(page, "#tag-results") < top(page, "#tag-controls")
    # The page scrolled down to the results of the new image.
    page.wait_for_function("window.scrollY > 200")
    page.wait_for_timeout(600)  # the smooth scroll ends
    results = top(page, "#tag-results")
    assert -10 <= results < PHONE["height"] / 2, results
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page must not scroll sideways"
    page.screenshot(path=ARTIFACTS / f"phone_tag_{theme}.png", full_page=False)
    page.screenshot(path=ARTIFACTS / f"phone_tag_{theme}_full.png", full_page=True)


def test_the_phone_batch_tab_shows_results_first_with_whole_numbers(app, open_page, image_files: list[Path]):
    page = open_page(PHONE)
    tag_in_batch_tab(page, app, image_files)
    assert top(page, "#batch-input") < top(page, "#batch-results") < top(page, "#batch-controls")
    cells = page.locator("#batch-table .virtual-row [data-col='2']")  # the "tags" column
    expect(cells).to_have_count(3)
    for cell in cells.all():
        # One line per number: "29", never "2" above "9".
        lines = cell.evaluate(
            """cell => {
              const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
              let text = walker.nextNode();
              while (text && !text.textContent.trim()) text = walker.nextNode();
              const range = document.createRange();
              range.selectNodeContents(text);
              return new Set(Array.from(range.getClientRects(), r => Math.round(r.top))).size;
            }"""
        )
        if lines != 1:
            page.screenshot(path=ARTIFACTS / "phone_batch.png", full_page=True)
        assert lines == 1, (cell.inner_text(), cell.evaluate("e => e.outerHTML"))
    page.locator("#batch-table").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "phone_batch.png", full_page=False)


# -- dark theme -----------------------------------------------------------------------------------


def test_the_dark_theme_keeps_the_tags_readable(app, open_page):
    page = open_page(DESKTOP)
    open_tagged(page, app, "?__theme=dark")
    assert page.evaluate("document.querySelector('.dark') !== null")
    for selector in (".tv-label", ".tv-string", ".tv-name", "#summary"):
        assert contrast(page, f"#tag-view {selector}") >= 4.5, selector
    assert contrast(page, "#tag-view .tv-score") >= 3.0  # secondary text
    page.screenshot(path=ARTIFACTS / "tag_tab_dark.png", full_page=True)


# -- item 3: errors keep the last good output --------------------------------------------------


def test_an_unknown_heatmap_tag_keeps_the_last_heatmap(app, open_page):
    page = open_page(DESKTOP)
    open_tagged(page, app)
    page.get_by_role("tab", name="Features").click()
    expect(page.locator("#features-seen img")).to_be_visible()
    page.locator("#heatmap-button").click()  # the top tag is chosen already
    heatmap = page.locator("#heatmap-overlay img")
    expect(heatmap).to_be_visible()
    source = heatmap.get_attribute("src")

    page.locator("#heatmap-tag input").fill("no such tag at all")
    page.locator("#heatmap-button").click()
    expect(page.locator("#heatmap-summary")).to_contain_text("Unknown tag 'no such tag at all'")
    assert heatmap.get_attribute("src") == source
    expect(heatmap).to_be_visible()
    for selector in ("#heatmap-overlay", "#heatmap", "#heatmap-summary"):
        assert error_pills(page, selector) == 0, selector
    page.screenshot(path=ARTIFACTS / "features_unknown_tag.png", full_page=True)


def test_tag_all_without_files_keeps_the_last_results(app, open_page, image_files: list[Path]):
    page = open_page(DESKTOP)
    tag_in_batch_tab(page, app, image_files)
    summary = page.locator("#batch-summary")
    rows = page.locator("#batch-table .virtual-row")
    expect(rows).to_have_count(3)
    before = (summary.inner_text(), rows.all_inner_texts())

    page.locator("#batch-files button[aria-label='Clear']").first.click()
    page.locator("#batch-run").click()
    expect(page.locator("#batch-message")).to_contain_text("Please upload images or a zip of images first.")
    assert (summary.inner_text(), rows.all_inner_texts()) == before
    for selector in ("#batch-summary", "#batch-table", "#batch-message"):
        assert error_pills(page, selector) == 0, selector
    # The settings are the Tag tab's, summed up here.
    expect(page.locator("#batch-settings")).to_contain_text("Tagged with the Tag tab's settings")
    page.screenshot(path=ARTIFACTS / "batch_empty_run.png", full_page=True)


def test_a_file_that_is_not_an_image_or_a_missing_zip_gets_a_sentence(app, open_page, tmp_path: Path):
    page = open_page(DESKTOP)
    page.goto(app.url)
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    page.locator("#tag-image input[type=file]").set_input_files(fake)
    error = page.locator("#tag-view .tv-error")
    expect(error).to_contain_text("notes.png")
    expect(error).to_be_visible()
    assert error_pills(page, "#tag-view") == 0
    page.screenshot(path=ARTIFACTS / "tag_tab_not_an_image.png", full_page=False)

    page.get_by_role("tab", name="Similarity").click()
    page.locator("#similarity-batch-button").click()
    expect(page.locator("#similarity-batch-summary")).to_contain_text("Please upload a zip first.")
    assert error_pills(page, "#similarity-batch-table") == 0
