"""Slider change -> updated tag string, in Chromium: the Tag tab against a bare Gradio app.

Starts the app in demo mode (tiny random model) and a bare Gradio slider -> textbox app (a
server function, as any Gradio app does it) on loopback ports, then in Debian's chromium
(Playwright) moves each slider ``--runs`` times and measures, in the page, the time from the
slider's input event to the first frame after the text box holds the new text. Prints the
median and 90th percentile of each and their ratio. Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/bench_ui_latency.py --runs 40
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from app_server import free_port, start_app  # noqa: E402
from browser_support import CHROMIUM, DESKTOP, IMAGE, chromium  # noqa: E402

# In the page: move the range input to ``value`` and resolve with the milliseconds until the
# first animation frame after the text box's value changed (the textarea's value setter is
# watched, so no polling competes with the page for the CPU).
MEASURE = """
([slider, box, value]) => new Promise((resolve, reject) => {
  const area = document.querySelector(box + " textarea");
  const range = document.querySelector(slider + " input[type=range]");
  const before = area.value;
  const proto = Object.getPrototypeOf(area);
  const native = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value");
  const timer = setTimeout(() => { delete area.value; reject(new Error("no update in 10 s")); }, 10000);
  Object.defineProperty(area, "value", {
    configurable: true,
    get() { return native.get.call(this); },
    set(v) {
      native.set.call(this, v);
      if (v !== before) {
        delete area.value;
        requestAnimationFrame(() => { clearTimeout(timer); resolve(performance.now() - start); });
      }
    },
  });
  const start = performance.now();
  range.value = String(value);
  range.dispatchEvent(new Event("input", { bubbles: true }));
  range.dispatchEvent(new Event("change", { bubbles: true }));
})
"""


def bare_app() -> gr.Blocks:
    """The baseline: a slider whose change event writes its value into a text box, server-side."""
    with gr.Blocks() as demo:
        slider = gr.Slider(0, 1, 0.35, step=0.01, elem_id="bare-slider")
        text = gr.Textbox(elem_id="bare-text")
        slider.change(lambda value: f"threshold {value:.2f}", slider, text)
    return demo


def summary(name: str, times: list[float]) -> str:
    times = sorted(times)
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return f"{name:<34} median {statistics.median(times):6.1f} ms   p90 {p90:6.1f} ms   (n={len(times)})"


def machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores, {model}; {version}; Python {platform.python_version()}, gradio {gr.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="slider moves per app (default 40)")
    args = parser.parse_args()

    app = start_app(["--demo"])
    bare = bare_app()
    _, bare_url, _ = bare.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    # Alternate between values that change the demo image's tags (and, trivially, the bare text).
    values = [0.30 if i % 2 else 0.40 for i in range(args.runs + 2)]
    try:
        with chromium() as browser:
            ours_page = browser.new_context(viewport=DESKTOP).new_page()
            bare_page = browser.new_context(viewport=DESKTOP).new_page()
            for page in (ours_page, bare_page):
                page.set_default_timeout(60_000)
            ours_page.goto(app.url)
            ours_page.locator("#tag-image input[type=file]").set_input_files(IMAGE)
            ours_page.wait_for_function("document.querySelector('#tag-string textarea').value.length > 0")
            bare_page.goto(bare_url)
            bare_page.locator("#bare-text textarea").wait_for()
            # Interleaved, so that load from elsewhere on the machine hits both alike.
            ours, baseline = [], []
            for value in values:
                ours.append(ours_page.evaluate(MEASURE, ["#threshold", "#tag-string", value]))
                baseline.append(bare_page.evaluate(MEASURE, ["#bare-slider", "#bare-text", value]))
            ours, baseline = ours[2:], baseline[2:]  # two warm-up moves
    finally:
        app.close()
        bare.close()

    print(machine())
    print(summary("Tag tab: threshold -> tag string", ours))
    print(summary("bare Gradio: slider -> textbox", baseline))
    print(f"ratio of medians: {statistics.median(ours) / statistics.median(baseline):.2f}")


if __name__ == "__main__":
    main()
