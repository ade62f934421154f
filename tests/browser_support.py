"""What the browser tests share: Debian's chromium through Playwright, pages of the running
app, and the tags the pure Python functions say a page should show."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from app_server import RunningApp
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tagger.tags.formats import category_tag_strings
from tagger.tags.options import TagOptions
from tagger.tags.selection import TagScore, select_tags
from tagger.web.controls import ticked_categories

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
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium through Playwright, with the settings of every browser test and benchmark."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, viewport: dict, *, clipboard: bool = False) -> Page:
    """A page in a fresh context; page errors are collected in ``page.errors``."""
    context = browser.new_context(
        viewport=viewport,
        permissions=["clipboard-read", "clipboard-write"] if clipboard else [],
        is_mobile=viewport["width"] < 500,
        has_touch=viewport["width"] < 500,
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
    return page


def open_tagged(page: Page, app: RunningApp, query: str = "") -> None:
    """The app's page with ``IMAGE`` uploaded on the Tag tab and its tags shown."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(app.url + query)
    page.locator("#tag-image input[type=file]").set_input_files(IMAGE)
    expect(page.locator("#tag-string textarea")).not_to_have_value("")


def open_format(page: Page) -> None:
    """Open the "Tag string" accordion, ready to type into."""
    page.get_by_text("Tag string", exact=True).click()
    expect(page.locator("#underscores")).to_be_visible()
    # Gradio sets the values of an accordion's first-shown fields a few frames after drawing
    # them (render_previously_invisible_children); text typed before that is overwritten.
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 50))))")


def type_into(page: Page, elem_id: str, text: str) -> None:
    """Type ``text`` into a text option, as a person does, and check that Gradio kept it."""
    box = page.locator(f"#{elem_id} textarea")
    if elem_id == "category-thresholds" and not box.is_visible():
        page.locator("#typed-toggle").click()  # the typed box is shown on request
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value(text)


def options(app: RunningApp, **values: object) -> TagOptions:
    """The options the page holds: the categories ticked when it opens, unless given."""
    return TagOptions.from_values(**{"categories": ticked_categories(app.context.vocab), **values})


def selected(app: RunningApp, scores: np.ndarray, **values: object) -> list[TagScore]:
    return select_tags(scores, app.context.vocab, options(app, **values).selection)


def expected_string(app: RunningApp, scores: np.ndarray, **values: object) -> str:
    """The string of all tags the page should show (the same pure functions as the API)."""
    return options(app, **values).tag_string(selected(app, scores, **values))


def expected_category_strings(app: RunningApp, scores: np.ndarray, **values: object) -> dict[str, str]:
    opts = options(app, **values)
    tags = selected(app, scores, **values)
    strings = category_tag_strings(tags, underscores=opts.underscores, escape_parentheses=opts.escape_parentheses)
    return {category.name: text for category, text in strings}


def shown_categories(page: Page) -> set[str]:
    return set(page.locator("#tag-view .tv-category").evaluate_all("els => els.map(e => e.dataset.category)"))


def queue_calls(page: Page) -> list[str]:
    """Start recording the requests that run a server function; returns the live list."""
    calls: list[str] = []
    page.on(
        "request",
        lambda r: calls.append(r.url) if "/queue/join" in r.url or "/gradio_api/run/" in r.url else None,
    )
    return calls


def error_pills(page: Page, selector: str) -> int:
    """Gradio's red "Error" status over a component (what a raised error puts on outputs)."""
    return page.locator(f"{selector} [data-testid='status-tracker']").get_by_text("Error", exact=True).count()


def luminance(rgb: str) -> float:
    values = [int(v) / 255 for v in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    linear = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in values]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(page: Page, selector: str) -> float:
    """Contrast ratio of an element's text against the first opaque background behind it."""
    colours = page.locator(selector).first.evaluate(
        """e => {
          const text = getComputedStyle(e).color;
          let node = e, back = "rgba(0, 0, 0, 0)";
          while (node && (back === "rgba(0, 0, 0, 0)" || back === "transparent")) {
            back = getComputedStyle(node).backgroundColor;
            node = node.parentElement;
          }
          if (back === "rgba(0, 0, 0, 0)") back = getComputedStyle(document.body).backgroundColor;
          return [text, back];
        }"""
    )
    a, b = sorted((luminance(c) for c in colours), reverse=True)
    return (a + 0.05) / (b + 0.05)
