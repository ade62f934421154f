"""The app in a real browser (Debian's chromium through Playwright): upload an image on the
Tag tab, change filters, and read the API tab, as a visitor would.

Screenshots go to ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from app_server import RunningApp
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tagger.options import TagOptions
from tagger.results import group_by_category, select_tags
from tagger.ui.tag_tab import present_categories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "cat_sticker.png"
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def scores(app: RunningApp) -> np.ndarray:
    """The engine's scores for the image, computed directly (before the browser test counts passes)."""
    return app.context.tagger.probabilities([IMAGE])[0]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(app: RunningApp, browser: Browser, scores: np.ndarray) -> Iterator[Page]:
    """The app's page with ``IMAGE`` uploaded on the Tag tab and its tags shown."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app.url)
    page.locator("#tag-image input[type=file]").set_input_files(IMAGE)
    expect(page.locator("#tag-string textarea")).not_to_have_value("")
    yield page
    page.close()
    assert not errors, errors


def expected_string(app: RunningApp, scores: np.ndarray, **options) -> str:
    """The tag string the UI should show for these options (the same pure functions the UI uses)."""
    names = [c.name for c in present_categories(app.context.vocab)]
    opts = TagOptions(**{"categories": names, **options})
    return opts.tag_string(select_tags(scores, app.context.vocab, opts.selection))


def shown_categories(app: RunningApp, scores: np.ndarray, **options) -> set[str]:
    opts = TagOptions(**options)
    return {c.name for c, _ in group_by_category(select_tags(scores, app.context.vocab, opts.selection))}


def check_labels(app: RunningApp, page: Page, shown: set[str]) -> None:
    """Label bars for the categories with tags; the others hidden."""
    assert shown
    for category in present_categories(app.context.vocab):
        label = page.locator(f"#label-{category.name}")
        if category.name in shown:
            expect(label).to_be_visible()
            expect(label.locator(".bar").first).to_be_visible()
        else:
            expect(label).to_be_hidden()


def test_upload_shows_the_engines_tags(app, page, scores):
    expect(page.locator("#tag-string textarea")).to_have_value(expected_string(app, scores))
    shown = shown_categories(app, scores)
    check_labels(app, page, shown)
    expect(page.locator("#summary")).to_contain_text(re.compile(r"\d+ tags · model [\d.]+ s on cpu"))
    # Each category's bars take the category's colour (gr.Label's own `color` does not reach them).
    for category in present_categories(app.context.vocab):
        if category.name in shown:
            bar = page.locator(f"#label-{category.name} .bar").first
            red, green, blue = (int(category.color[i : i + 2], 16) for i in (1, 3, 5))
            assert bar.evaluate("e => getComputedStyle(e).backgroundColor") == f"rgb({red}, {green}, {blue})"
    expect(page.locator("#demo-warning")).to_be_visible()
    expect(page.locator("#demo-warning")).to_contain_text("Demo mode")
    page.screenshot(path=ARTIFACTS / "tag_tab.png", full_page=True)


def test_filters_rerender_without_running_the_model(app, page, scores):
    stats = app.context.tagger.stats
    passes = stats.forward_passes
    tags = page.locator("#tag-string textarea")
    before = tags.input_value()
    names = [c.name for c in present_categories(app.context.vocab)]
    shown = shown_categories(app, scores)
    dropped = next(n for n in names if n in shown)  # a category that has tags now
    kept = [n for n in names if n != dropped]

    # Untick a category.
    page.locator(f"#category-filter input[name={dropped}]").uncheck()
    expect(tags).to_have_value(expected_string(app, scores, categories=kept))
    assert tags.input_value() != before
    check_labels(app, page, shown_categories(app, scores, categories=kept))

    # Type a threshold into the slider's number box.
    number = page.locator("#threshold input[type=number]")
    number.fill("0.5")
    number.press("Enter")
    expect(tags).to_have_value(expected_string(app, scores, categories=kept, threshold=0.5))

    # Underscores (in the closed "Tag string" accordion).
    page.get_by_text("Tag string", exact=True).click()
    page.locator("#underscores input[type=checkbox]").check()
    expected = expected_string(app, scores, categories=kept, threshold=0.5, underscores=True)
    assert "_" in expected and "_" not in before
    expect(tags).to_have_value(expected)

    page.screenshot(path=ARTIFACTS / "tag_tab_filtered.png", full_page=True)
    assert stats.forward_passes == passes, "re-rendering must not run the model"


def test_api_tab_examples_hold_the_apps_address(app, page):
    page.get_by_role("tab", name="API").click()
    examples = page.locator("#api-examples")
    expect(examples).to_be_visible()
    base = app.url.rstrip("/")
    expect(examples).to_contain_text(f'Client("{app.url}")')
    expect(examples).to_contain_text(f"BASE={base}")
    if not base.endswith(":7860"):
        expect(examples).not_to_contain_text("127.0.0.1:7860")
    page.screenshot(path=ARTIFACTS / "api_tab.png", full_page=True)
