"""The API tab: ready-to-copy client code filled with this app's address, and the reference of
the endpoints, read from the endpoint functions themselves (``tagger.web.endpoints``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from tagger.web.context import AppContext
from tagger.web.endpoints import Endpoint, type_name
from tagger.web.gradio_compat import get_function_description

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


def client_examples(address: str, space_id: str | None) -> str:
    """Markdown with Python, JavaScript and curl examples for ``/tag``, and the MCP address."""
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

### JavaScript (Node 20+, `npm install @gradio/client`)
```js
import {{ Client, handle_file }} from "@gradio/client";
import {{ readFile }} from "node:fs/promises";

const client = await Client.connect("{target}");
const image = new Blob([await readFile("image.jpg")]);
const result = await client.predict("/tag", {{ image: handle_file(image), threshold: 0.4 }});
console.log(result.data[0].tag_string);
process.exit(0);  // the client keeps a heartbeat connection open to apps with session state
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

### MCP (agents: Claude, Cursor, VS Code, ...)
Every endpoint is also an MCP tool (`tag`, `tag_batch`, `pca`, `heatmap`, `similarity`,
`similarity_batch`); give images as http(s) or `data:` URLs.
```json
{{"mcpServers": {{"tagger": {{"url": "{base}/gradio_api/mcp/"}}}}}}
```
"""


def markdown_text(text: str) -> str:
    """Text shown as written in Markdown, backslashes included (help texts mention ``\\(``)."""
    return text.replace("\\", "\\\\")


def parameters_table(fn: Callable[..., Any]) -> str:
    """Every parameter of an endpoint: name, type, default and the docstring's description."""
    _, meanings, _ = get_function_description(fn)
    rows = [
        f"| `{p.name}` | {type_name(p.annotation)} | "
        f"{'required' if p.default is p.empty else f'`{p.default!r}`'} | {markdown_text(meanings[p.name])} |"
        for p in inspect.signature(fn).parameters.values()
    ]
    return "| parameter | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows)


def endpoints_table(endpoints: Sequence[Endpoint]) -> str:
    """Each endpoint's parameters (the required ones in bold) and results."""
    rows = []
    for endpoint in endpoints:
        _, _, returns = get_function_description(endpoint.fn)
        parameters = inspect.signature(endpoint.fn).parameters.values()
        takes = ", ".join(f"**`{p.name}`**" if p.default is p.empty else f"`{p.name}`" for p in parameters)
        rows.append(f"| `/{endpoint.name}` | {takes} | {'; '.join(returns)} |")
    return "| endpoint | takes | returns |\n|---|---|---|\n" + "\n".join(rows)


def space_address(space_id: str) -> str:
    owner, _, name = space_id.partition("/")
    subdomain = f"{owner}-{name}".lower().replace("_", "-").replace(".", "-")
    return f"https://{subdomain}.hf.space/"


def build_api_tab(ctx: AppContext, endpoints: Sequence[Endpoint]) -> gr.Markdown:
    gr.Markdown(
        "Call this app from code. `/tag` takes the image as its only required argument and "
        "returns JSON; the other tabs have endpoints too (see *Use via API* at the bottom of the page)."
    )
    examples = gr.Markdown(client_examples("http://127.0.0.1:7860/", ctx.space_id), elem_id="api-examples")
    tag = next(e for e in endpoints if e.name == "tag")
    gr.Markdown("### `/tag` parameters\n" + parameters_table(tag.fn))
    gr.Markdown("### Response\n" + RESPONSE_DOC)
    gr.Markdown(
        "### Other endpoints\n"
        + endpoints_table([e for e in endpoints if e is not tag])
        + "\n\nEach endpoint's parameters, types and defaults: *Use via API* at the bottom of the page."
    )
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
