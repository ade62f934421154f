"""The API tab: ready-to-copy client code filled with this app's address, and the reference
of every ``/tag`` parameter and of the response."""

from __future__ import annotations

import gradio as gr

from tagger.options import MODES, ORDERS, TagOptions
from tagger.ui.context import AppContext

_D = TagOptions()

# (name, type, default, meaning) in the endpoint's parameter order.
TAG_PARAMETERS: list[tuple[str, str, str, str]] = [
    ("image", "file", "required", "The image: any format Pillow reads (PNG, JPEG, WebP, GIF first frame, …)."),
    ("mode", "str", repr(_D.mode), f"One of {', '.join(MODES)}: fixed thresholds, k best per category, or MCut."),
    ("threshold", "float", str(_D.threshold), "Threshold for every category without its own (mode threshold)."),
    ("character_threshold", "float", str(_D.character_threshold), "Threshold for character tags (mode threshold)."),
    ("topk_per_category", "int", str(_D.topk_per_category), "Tags kept per category (mode topk)."),
    ("floor", "float", str(_D.floor), "No tag below this score is returned, in any mode."),
    ("categories", "str", '""', "Comma-separated category names to keep, e.g. `general, character`; empty: all."),
    ("category_thresholds", "str", '""', "Per-category overrides (mode threshold), e.g. `artist=0.6, copyright=0.7`."),
    ("exclude", "str", '""', "Comma-separated tags never returned (case, `_` and `\\(` escapes ignored)."),
    ("prepend", "str", '""', "Comma-separated tags put first in `tag_string`."),
    ("underscores", "bool", "False", "`tag_string` uses underscores instead of spaces."),
    ("escape_parentheses", "bool", "False", "`tag_string` writes `\\(` and `\\)` as prompt tools expect."),
    ("order", "str", repr(_D.order), f"`tag_string` order: {' or '.join(ORDERS)} (display order of categories)."),
]

RESPONSE_DOC = """\
```
{
  "tags": [{"tag": "solo", "score": 0.98, "category": "general"}, ...],   // best first
  "categories": [{"id": 5, "name": "character", "color": "#60a5fa",
                  "tags": [{"tag": "...", "score": 0.91}]}, ...],          // display order
  "count": 42,
  "tag_string": "solo, smile, ..."
}
```
Errors (an unreadable image, a bad argument) come back as a Gradio error whose message says
what is wrong; `gradio_client` raises it as `AppError`."""


# (endpoint, takes, returns)
_OTHER_ENDPOINTS = [
    (
        "/tag_batch",
        "`files` (images and/or zips), then the options of `/tag` (`categories` as a list)",
        "results table, captions zip (kohya `.txt` per image), JSONL (authors' schema), summary",
    ),
    ("/pca", "`image`, `color_1`–`color_3`, `alpha`, `upscale`", "PCA map, PCA over the image, colour blend (PNG)"),
    (
        "/heatmap",
        "`image`, `tag`, `layers_from_end`, `alpha`, `upscale`",
        "relevance over the image, relevance alone (PNG), details (JSON)",
    ),
    ("/similarity", "`image_a`, `image_b`", "cosine similarity of the descriptors"),
    (
        "/similarity_batch",
        "`archive`: a zip with two folders, files paired by name",
        "pairs, summary (mean, min, max), unmatched files (JSON)",
    ),
]
OTHER_ENDPOINTS = (
    "| endpoint | takes | returns |\n|---|---|---|\n"
    + "\n".join(f"| `{name}` | {takes} | {returns} |" for name, takes, returns in _OTHER_ENDPOINTS)
    + "\n\nEach endpoint's parameters, types and defaults: *Use via API* at the bottom of the page."
)


def client_examples(address: str, space_id: str | None) -> str:
    """Markdown with Python, JavaScript and curl examples for ``/tag``."""
    target = space_id or address
    base = address.rstrip("/")
    return f"""\
### Python (`pip install gradio_client`)
```python
from gradio_client import Client, handle_file

client = Client("{target}")
result = client.predict(handle_file("image.jpg"), api_name="/tag")
print(result["tag_string"])
# Every other parameter is optional, by name:
result = client.predict(handle_file("image.jpg"), mode="topk", topk_per_category=10,
                        underscores=True, api_name="/tag")
```

### JavaScript (`npm install @gradio/client`)
```js
import {{ Client, handle_file }} from "@gradio/client";

const client = await Client.connect("{target}");
const image = await (await fetch("https://example.com/image.jpg")).blob();
const result = await client.predict("/tag", {{ image: handle_file(image), threshold: 0.4 }});
console.log(result.data[0].tag_string);
```

### curl
```bash
# 1. upload the file, 2. start the call, 3. read the result (server-sent events)
# call/v2 takes parameters by name and fills in the defaults of the ones left out.
BASE={base}
FILE=$(curl -s -F "files=@image.jpg" $BASE/gradio_api/upload \\
  | python3 -c "import sys, json; print(json.load(sys.stdin)[0])")
BODY='{{"image": {{"path": "'$FILE'", "meta": {{"_type": "gradio.FileData"}}}}}}'
EVENT=$(curl -s -H "Content-Type: application/json" -d "$BODY" $BASE/gradio_api/call/v2/tag \\
  | python3 -c "import sys, json; print(json.load(sys.stdin)['event_id'])")
curl -sN $BASE/gradio_api/call/tag/$EVENT
```
"""


def parameters_table() -> str:
    rows = "\n".join(f"| `{n}` | {t} | `{d}` | {m} |" for n, t, d, m in TAG_PARAMETERS)
    return "| parameter | type | default | meaning |\n|---|---|---|---|\n" + rows


def space_address(space_id: str) -> str:
    owner, _, name = space_id.partition("/")
    subdomain = f"{owner}-{name}".lower().replace("_", "-").replace(".", "-")
    return f"https://{subdomain}.hf.space/"


def build_api_tab(ctx: AppContext) -> gr.Markdown:
    gr.Markdown(
        "Call this app from code. `/tag` takes the image as its only required argument and "
        "returns JSON; the other tabs have endpoints too (see *Use via API* at the bottom of the page)."
    )
    examples = gr.Markdown(client_examples("http://127.0.0.1:7860/", ctx.space_id), elem_id="api-examples")
    gr.Markdown("### `/tag` parameters\n" + parameters_table())
    gr.Markdown("### Response\n" + RESPONSE_DOC)
    gr.Markdown("### Other endpoints\n" + OTHER_ENDPOINTS)
    return examples


def fill_address(ctx: AppContext, request: gr.Request | None) -> str:
    """The examples with the address the visitor used (or the Space id on Spaces)."""
    if ctx.space_id:
        return client_examples(space_address(ctx.space_id), ctx.space_id)
    address = "http://127.0.0.1:7860/"
    if request is not None:
        host = request.headers.get("x-forwarded-host") or request.headers.get("host")
        scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
        if host:
            address = f"{scheme}://{host}/"
    return client_examples(address, None)
