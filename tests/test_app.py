"""End-to-end tests of the Gradio app over HTTP: the ``/tag`` endpoint through ``gradio_client``,
the public contract (``view_api`` and "Use via API"), the option widgets and the API reference
derived from the options' declaration, the API tab's curl and JavaScript recipes run as
written, and the API tab's address filling.

One app (demo mode: tiny random model) runs in this process for the whole module, so the
tests can compare what the server answers with what the engine computes directly, and
count the model's forward passes.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from app_server import RunningApp
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from starlette.requests import Request
from support import DISPLAY_ORDER

from tagger.engine.vocab import CATEGORIES
from tagger.tags.options import OPTION_FIELDS, OPTION_NAMES, option_info
from tagger.web.controls import present_categories
from tagger.web.tabs.api import client_examples, fill_address, markdown_text, parameters_table, space_address

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CAT = EXAMPLES / "cat.jpg"
JS_DIR = Path(__file__).resolve().parent / "js"  # package.json of the JavaScript recipe's client
TAG_KEYS = {"tag", "score", "category"}
CATEGORY_KEYS = {"id", "name", "color", "tags"}
CATEGORY_TAG_KEYS = {"tag", "score"}


@pytest.fixture(scope="module")
def engine_scores(app: RunningApp):
    """``engine_scores(path)`` → the engine's probabilities for the file, computed directly."""
    cache: dict[Path, np.ndarray] = {}

    def scores(path: Path) -> np.ndarray:
        if path not in cache:
            tagger = app.context.tagger  # at the size /tag runs at by default
            cache[path] = tagger.run([tagger.prepare(path, max_size=app.context.default_size)])[0]
        return cache[path]

    return scores


def tag(client: Client, path: Path = CAT, **kwargs) -> dict:
    return client.predict(handle_file(str(path)), api_name="/tag", **kwargs)


def names(result: dict) -> list[str]:
    return [t["tag"] for t in result["tags"]]


def by_category(result: dict) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for t in result["tags"]:
        groups.setdefault(t["category"], []).append(t["tag"])
    return groups


def expected_threshold_tags(app: RunningApp, scores: np.ndarray, thresholds: dict[str, float], floor: float) -> set:
    """Threshold mode written out independently: per-category threshold, then the floor."""
    vocab = app.context.vocab
    return {
        vocab.tags[i]
        for i in range(len(vocab))
        if scores[i] >= thresholds[vocab.category_of(i).name] and scores[i] >= floor
    }


def check_schema(result: dict) -> None:
    assert set(result) == {"tags", "categories", "count", "tag_string"}
    assert isinstance(result["count"], int)
    assert isinstance(result["tag_string"], str)
    for t in result["tags"]:
        assert set(t) == TAG_KEYS
        assert isinstance(t["tag"], str)
        assert isinstance(t["score"], float)
        assert t["category"] in DISPLAY_ORDER
    for c in result["categories"]:
        assert set(c) == CATEGORY_KEYS
        assert isinstance(c["id"], int)
        assert re.fullmatch(r"#[0-9a-f]{6}", c["color"])
        for t in c["tags"]:
            assert set(t) == CATEGORY_TAG_KEYS


# -- /tag with the image only ---------------------------------------------------------------


def test_tag_with_only_the_image_returns_the_documented_json(app, client):
    result = tag(client)
    check_schema(result)
    tags = result["tags"]
    assert 3 <= len(tags) < len(app.context.vocab)  # a real cut: some tags, not all
    scores = [t["score"] for t in tags]
    assert scores == sorted(scores, reverse=True)
    assert result["count"] == len(tags)
    assert len(set(names(result))) == len(tags)

    # Categories: display order, only non-empty ones, each holding exactly its flat-list tags.
    category_names = [c["name"] for c in result["categories"]]
    assert category_names == [n for n in DISPLAY_ORDER if n in category_names]
    assert set(category_names) == {t["category"] for t in tags}
    known = {c.name: c for c in CATEGORIES}
    flat = {t["tag"]: t for t in tags}
    for c in result["categories"]:
        assert c["tags"], c["name"]
        assert (c["id"], c["color"]) == (known[c["name"]].id, known[c["name"]].color)
        for t in c["tags"]:
            assert flat[t["tag"]] == {**t, "category": c["name"]}
        assert [t["tag"] for t in c["tags"]] == by_category(result)[c["name"]]

    assert result["tag_string"] == ", ".join(names(result))


@pytest.mark.parametrize("filename", ["cat.jpg", "cat_sticker.png", "coffee.jpg", "astronaut.jpg"])
def test_api_scores_equal_the_engine_scores(app, client, engine_scores, filename):
    path = EXAMPLES / filename
    result = tag(client, path)
    scores = engine_scores(path)
    index = app.context.vocab.index
    for t in result["tags"]:
        assert t["score"] == pytest.approx(float(scores[index[t["tag"]]]), abs=1e-5), t["tag"]
    # ... and the selection is the documented default: 0.35, characters 0.85, floor 0.05.
    thresholds = {c.name: 0.35 for c in CATEGORIES} | {"character": 0.85}
    assert set(names(result)) == expected_threshold_tags(app, scores, thresholds, 0.05)


# -- optional arguments ---------------------------------------------------------------------


def test_higher_threshold_returns_a_subset(app, client, engine_scores):
    default, strict, loose = tag(client), tag(client, threshold=0.55), tag(client, threshold=0.2)
    assert set(names(strict)) < set(names(default)) < set(names(loose))
    scores = engine_scores(CAT)
    thresholds = {c.name: 0.55 for c in CATEGORIES} | {"character": 0.85}
    assert set(names(strict)) == expected_threshold_tags(app, scores, thresholds, 0.05)
    assert all(t["score"] >= 0.55 for t in strict["tags"])
    assert strict["count"] == len(strict["tags"])


@pytest.mark.parametrize("k", [1, 3])
def test_topk_keeps_the_k_best_of_each_category(app, client, engine_scores, k):
    result = tag(client, mode="topk", topk_per_category=k)
    groups = by_category(result)
    assert groups and all(len(g) <= k for g in groups.values())
    # Exactly the k best of each category (above the default floor of 0.05).
    vocab, scores = app.context.vocab, engine_scores(CAT)
    for category in CATEGORIES:
        idx = [i for i in np.flatnonzero(vocab.category_ids == category.id) if scores[i] >= 0.05]
        best = sorted(idx, key=lambda i: -scores[i])[:k]
        assert set(groups.get(category.name, [])) == {vocab.tags[i] for i in best}, category.name


def test_mcut_uses_the_largest_gap_of_each_category(app, client, engine_scores):
    result = tag(client, mode="mcut")
    check_schema(result)
    vocab, scores = app.context.vocab, engine_scores(CAT)
    expected = set()
    for category in CATEGORIES:
        idx = np.flatnonzero(vocab.category_ids == category.id)
        if idx.size < 2:
            continue
        ordered = sorted(idx, key=lambda i: -scores[i])
        gaps = [scores[a] - scores[b] for a, b in itertools.pairwise(ordered)]
        keep = ordered[: int(np.argmax(gaps)) + 1]  # everything above the widest gap
        expected |= {vocab.tags[i] for i in keep if scores[i] >= 0.05}
    assert set(names(result)) == expected
    assert set(names(result)) != set(names(tag(client)))  # not just the default thresholds


def test_floor_removes_every_tag_below_it(client):
    result = tag(client, mode="topk", topk_per_category=50, floor=0.4)
    assert result["tags"] and all(t["score"] >= 0.4 for t in result["tags"])
    unfloored = tag(client, mode="topk", topk_per_category=50)
    assert names(result) == [t["tag"] for t in unfloored["tags"] if t["score"] >= 0.4]


def test_categories_keeps_only_the_named_ones(client):
    default = tag(client)
    result = tag(client, categories="general, Character")
    assert result["tags"] and {t["category"] for t in result["tags"]} <= {"general", "character"}
    assert [c["name"] for c in result["categories"]] == [
        c["name"] for c in default["categories"] if c["name"] in ("character", "general")
    ]
    assert names(result) == [t["tag"] for t in default["tags"] if t["category"] in ("general", "character")]


@pytest.mark.parametrize("value", [0.9, 0.1])
def test_category_thresholds_override_one_category(client, value):
    default = tag(client)
    result = tag(client, category_thresholds=f"general={value}")
    general = [t for t in result["tags"] if t["category"] == "general"]
    assert all(t["score"] >= value for t in general)
    if value < 0.35:
        assert len(general) > len(by_category(default).get("general", []))
    # Other categories are untouched.
    others = [t["tag"] for t in result["tags"] if t["category"] != "general"]
    assert others == [t["tag"] for t in default["tags"] if t["category"] != "general"]


def test_exclude_removes_a_tag_given_with_underscores(client):
    default = tag(client)
    victim = next(n for n in names(default) if " " in n)
    result = tag(client, exclude=f"{victim.replace(' ', '_').upper()}, not a tag")
    assert victim not in names(result)
    assert victim not in result["tag_string"].split(", ")
    assert names(result) == [n for n in names(default) if n != victim]
    assert result["count"] == default["count"] - 1


def test_prepend_puts_tags_first_once(client):
    default = tag(client)
    existing = names(default)[3]
    result = tag(client, prepend=f"masterpiece, {existing}")
    parts = result["tag_string"].split(", ")
    assert parts[:2] == ["masterpiece", existing]
    assert parts.count(existing) == 1
    assert parts[2:] == [n for n in names(default) if n != existing]
    assert names(result) == names(default)  # the tag list itself is unchanged


def test_tag_string_formats(client):
    default = tag(client)
    plain = names(default)
    assert any("(" in n for n in plain) and any(" " in n for n in plain), "demo tags need spaces and ( )"

    result = tag(client, underscores=True)
    assert result["tag_string"] == ", ".join(n.replace(" ", "_") for n in plain)
    assert names(result) == plain  # only the string changes, never the tags

    result = tag(client, escape_parentheses=True)
    assert result["tag_string"] == ", ".join(n.replace("(", "\\(").replace(")", "\\)") for n in plain)

    result = tag(client, order="category")
    by_display = [t["tag"] for c in default["categories"] for t in c["tags"]]
    assert result["tag_string"] == ", ".join(by_display)
    assert result["tag_string"] != default["tag_string"]
    assert names(result) == plain  # the flat list stays best first

    result = tag(client, underscores=True, escape_parentheses=True, order="category")
    assert result["tag_string"] == ", ".join(
        n.replace(" ", "_").replace("(", "\\(").replace(")", "\\)") for n in by_display
    )


# -- the API description ----------------------------------------------------------------------


def test_view_api_lists_tag_with_only_the_image_required(app, client):
    info = client.view_api(return_format="dict", print_info=False)
    assert "/tag" in info["named_endpoints"]
    parameters = info["named_endpoints"]["/tag"]["parameters"]
    assert [p["parameter_name"] for p in parameters if not p["parameter_has_default"]] == ["image"]
    assert [p["parameter_name"] for p in parameters] == [
        "image",
        "mode",
        "threshold",
        "character_threshold",
        "topk_per_category",
        "floor",
        "categories",
        "category_thresholds",
        "exclude",
        "include",
        "prepend",
        "underscores",
        "escape_parentheses",
        "order",
        "implied",
        "max_size",  # appended: positional callers of the parameters before it keep working
    ]
    # UI-only events (image change, re-render, lookup, page load, examples) are not API endpoints.
    ui_only = {"/tag_image", "/rerender", "/run_lookup", "/on_load", "/load_example", "/lambda"}
    assert not ui_only & set(info["named_endpoints"])
    private = {f"/{fn.api_name}" for fn in app.demo.fns.values() if fn.api_visibility != "public"}
    assert ui_only & private  # the names above are the real ones
    assert not private & set(info["named_endpoints"])
    assert not info["unnamed_endpoints"]


def test_tag_and_tag_batch_share_one_option_definition(client):
    """Both endpoints take the declared options, in declaration order, with the same types and
    defaults (one definition, not restated per endpoint)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    tag_options, batch_options = (endpoints[name]["parameters"][1:-1] for name in ("/tag", "/tag_batch"))
    assert [p["parameter_name"] for p in tag_options] == list(OPTION_NAMES)
    keys = ("parameter_name", "parameter_has_default", "parameter_default", "python_type", "type")
    assert [{k: p[k] for k in keys} for p in tag_options] == [{k: p[k] for k in keys} for p in batch_options]
    by_name = {p["parameter_name"]: p for p in tag_options}
    for field in OPTION_FIELDS:
        assert by_name[field.name]["parameter_default"] == field.default, field.name
    assert by_name["mode"]["python_type"]["type"] == "Literal['threshold', 'topk', 'mcut']"
    assert by_name["categories"]["python_type"]["type"] == "str | list[str]"


def test_categories_as_a_list_or_a_string(client, tmp_path):
    as_text = tag(client, categories="general, Character")
    as_list = tag(client, categories=["general", "Character"])
    assert as_list == as_text and {t["category"] for t in as_list["tags"]} <= {"general", "character"}
    # /tag_batch takes the same two forms.
    shutil.copy(CAT, tmp_path / "cat.jpg")
    tables = [
        client.predict([handle_file(str(tmp_path / "cat.jpg"))], categories=value, api_name="/tag_batch")[0]
        for value in ("general, character", ["general", "character"])
    ]
    assert tables[0]["data"] == tables[1]["data"]
    assert tables[0]["data"][0][3] == ", ".join(names(as_text)[:8])  # the top tags, in the same order


def snippets(app: RunningApp) -> dict[str, dict]:
    """What Gradio's "Use via API" page shows: /info's parameters and code snippets per endpoint."""
    return httpx.get(app.url + "gradio_api/info", timeout=30).json()["named_endpoints"]


def test_use_via_api_suggests_a_real_image_and_a_real_tag(app):
    info = snippets(app)
    for name in ("/tag", "/tag_batch", "/pca", "/heatmap", "/similarity"):
        code = json.dumps(info[name]["code_snippets"])
        assert "sample_file.pdf" not in code and "Hello!!" not in code, name
        assert "scikit-image/main/skimage/data/chelsea.png" in info[name]["code_snippets"]["python"], name
        images = [p for p in info[name]["parameters"] if p["python_type"]["type"] in ("filepath", "list[filepath]")]
        assert images and all(p["python_type"]["description"] for p in images), name
    # Images are typed as images (Gradio's ImageData), not as any file.
    assert info["/tag"]["parameters"][0]["type"]["title"] == "ImageData"
    heatmap_tag = info["/heatmap"]["parameters"][1]
    assert not heatmap_tag["parameter_has_default"]  # an empty tag was never a valid call
    assert heatmap_tag["example_input"] in app.context.vocab.tags
    assert f'tag="{heatmap_tag["example_input"]}"' in info["/heatmap"]["code_snippets"]["python"]


def test_option_widgets_follow_the_declaration(app):
    """Every option has a widget with the declared label, default, range, choices and help;
    the categories box lists the categories this vocabulary has."""
    config = {c["props"].get("elem_id"): c for c in app.demo.config["components"] if c["props"].get("elem_id")}
    present = [c.name for c in present_categories(app.context.vocab)]
    for prefix in ("",):  # the Batch tab tags with the Tag tab's controls
        for field in OPTION_FIELDS:
            info = option_info(field)
            elem_id = prefix + ("category-filter" if field.name == "categories" else field.name.replace("_", "-"))
            props = config[elem_id]["props"]
            assert (props["label"], props["info"]) == (info.label, info.widget_help or info.help), elem_id
            if field.name == "categories":
                assert [c[1] for c in props["choices"]] == present
                # Ticked: all but contributor and unassigned, as on the authors' page.
                assert props["value"] == [n for n in present if n not in ("contributor", "unassigned")]
                continue
            assert props["value"] == field.default, elem_id
            if info.choices:
                assert [tuple(c) for c in props["choices"]] == list(info.choices), elem_id
            if info.minimum is not None:
                assert (props["minimum"], props["maximum"], props["step"]) == (info.minimum, info.maximum, info.step)


def test_the_api_tab_reference_lists_every_option_with_its_help(app):
    tag_endpoint = next(fn.fn for fn in app.demo.fns.values() if fn.api_name == "tag")
    table = parameters_table(tag_endpoint)
    rows = table.splitlines()[2:]
    assert [re.match(r"\| `(\w+)`", row).group(1) for row in rows] == ["image", *OPTION_NAMES, "max_size"]
    assert "| required |" in rows[0]
    assert "`512` | The long edge the model sees" in rows[-1] and "cap of 1024" in rows[-1]
    for field, row in zip(OPTION_FIELDS, rows[1:-1], strict=True):
        assert markdown_text(option_info(field).help) in row and f"`{field.default!r}`" in row
    config = httpx.get(app.url + "config", timeout=30).json()
    assert any(table in str(c["props"].get("value")) for c in config["components"])


@pytest.mark.parametrize(
    "payload",
    [
        {"path": "/etc/passwd"},  # no meta: Gradio passes it on untouched
        {"path": str(CAT)},  # a real image, but not an upload
        "/etc/passwd",
        {"path": "https://example.com/image.png"},  # not fetched by anyone: refused before any connection
    ],
    ids=["dict-without-meta", "file-outside-uploads", "bare-path", "url-without-meta"],
)
def test_a_file_parameter_reads_only_uploads(app, client, payload, count_passes):
    counted = count_passes(app.context.tagger)
    for endpoint, arguments in (
        ("tag", {"image": payload}),
        ("tag_batch", {"files": [payload]}),
        ("similarity_batch", {"archive": payload}),
    ):
        with httpx.Client(base_url=app.url, timeout=30) as http:
            started = http.post(f"gradio_api/call/v2/{endpoint}", json=arguments).json()["event_id"]
            stream = http.get(f"gradio_api/call/{endpoint}/{started}").text
        assert "event: error" in stream, (endpoint, stream[:300])
        assert "Send files as uploads" in stream and "root:" not in stream, (endpoint, stream[:300])
    assert counted.passes == 0
    check_still_serving(client)


# -- errors -------------------------------------------------------------------------------------


def check_still_serving(client: Client) -> None:
    assert tag(client)["count"] > 0


def test_a_text_file_is_refused_as_not_an_image(app, client, tmp_path, count_passes):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    counted = count_passes(app.context.tagger)
    with pytest.raises(AppError) as error:
        tag(client, text)
    message = str(error.value)
    assert "not an image" in message
    assert "notes.txt" in message
    assert "/tmp" not in message and "gradio" not in message.lower()
    assert counted.passes == 0
    check_still_serving(client)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"threshold": 1.5}, ["1.5"]),
        ({"categories": "general, nonsense"}, ["nonsense", "artist", "general", "unassigned"]),
        ({"category_thresholds": "nonsense=0.5"}, ["nonsense", "artist"]),
        ({"category_thresholds": "general=high"}, ["general", "number"]),
        ({"mode": "best"}, ["best", "threshold", "topk", "mcut"]),
    ],
)
def test_bad_arguments_are_refused_without_running_the_model(app, client, kwargs, words, count_passes):
    counted = count_passes(app.context.tagger)
    with pytest.raises(AppError) as error:
        tag(client, **kwargs)
    for word in words:
        assert word in str(error.value)
    assert counted.passes == 0
    check_still_serving(client)


# -- the model runs once per request ----------------------------------------------------------


def test_each_tag_call_is_exactly_one_forward_pass(app, client, count_passes):
    counted = count_passes(app.context.tagger)
    calls = [
        {},
        {"threshold": 0.9},
        {"mode": "topk", "topk_per_category": 2},
        {"mode": "mcut", "underscores": True},
        {"order": "category", "exclude": "x"},
    ]
    for kwargs in calls:
        tag(client, **kwargs)
    assert (counted.passes, counted.images) == (len(calls), len(calls))


# -- the API tab --------------------------------------------------------------------------------


def recipe_block(markdown: str, language: str) -> str:
    return markdown.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_curl_recipe_works_step_by_step(app):
    """Follow the API tab's three curl steps with httpx: upload, call, read the events."""
    recipe = recipe_block(client_examples(app.url, None), "bash")
    base = re.search(r"^BASE=(\S+)$", recipe, re.M).group(1)
    assert base == app.url.rstrip("/")
    upload_url, call_url = re.findall(r"\$BASE(/\S+)", recipe)[:2]
    events_url = re.search(r"curl -sN \$BASE(\S+)\$EVENT", recipe).group(1)
    body_template = re.search(r"^BODY='(.*)'$", recipe, re.M).group(1)

    with httpx.Client(base_url=base, timeout=30) as http:
        with CAT.open("rb") as f:
            response = http.post(upload_url, files={"files": ("cat.jpg", f, "image/jpeg")})
        response.raise_for_status()
        uploaded = response.json()[0]
        body = body_template.replace("'$FILE'", uploaded)
        response = http.post(call_url, content=body, headers={"Content-Type": "application/json"})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        response = http.get(events_url + event_id)
        response.raise_for_status()

    events = re.findall(r"^event: (\w+)\ndata: (.*)$", response.text, re.M)
    assert events and events[-1][0] == "complete", response.text[:500]
    (result,) = json.loads(events[-1][1])
    check_schema(result)
    assert result["count"] == len(result["tags"]) > 0
    assert result["tag_string"] == ", ".join(names(result))


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("python3") is None, reason="needs curl and python3")
def test_the_curl_recipe_runs_as_written(app, tmp_path):
    shutil.copy(CAT, tmp_path / "image.jpg")
    recipe = recipe_block(client_examples(app.url, None), "bash")
    run = subprocess.run(["bash", "-c", recipe], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "event: complete" in run.stdout, run.stdout[:500]
    (result,) = json.loads(run.stdout.split("event: complete\ndata: ", 1)[1].splitlines()[0])
    check_schema(result)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``tests/js/node_modules`` with ``@gradio/client`` (``scripts/test.sh`` installs it; else here)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the JavaScript recipe test needs node and npm")
    modules = JS_DIR / "node_modules"
    if not (modules / "@gradio" / "client" / "package.json").exists():
        run = subprocess.run(
            [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
    return modules


def test_the_javascript_recipe_runs_and_exits(app, client, node_modules, tmp_path):
    """The API tab's JavaScript, as written, under Node with @gradio/client: it prints the tag
    string and exits (a client left connected would keep Node running)."""
    shutil.copy(CAT, tmp_path / "image.jpg")
    (tmp_path / "recipe.mjs").write_text(recipe_block(client_examples(app.url, None), "js"))
    (tmp_path / "node_modules").symlink_to(node_modules)
    run = subprocess.run(["node", "recipe.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == tag(client, threshold=0.4)["tag_string"]


def test_the_python_recipe_runs_as_written(app, tmp_path):
    shutil.copy(CAT, tmp_path / "image.jpg")
    recipe = recipe_block(client_examples(app.url, None), "python") + "print(result['count'])\n"
    run = subprocess.run([sys.executable, "-c", recipe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()[-2:]
    assert int(second) > 0 and first  # the tag string, then the count of the second call


def fake_request(headers: dict[str, str], scheme: str = "http") -> gr.Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "scheme": scheme, "method": "GET", "path": "/", "query_string": b"", "headers": raw}
    return gr.Request(request=Request(scope))


def test_page_load_fills_the_examples_with_the_apps_address(app, monkeypatch):
    ctx = app.context
    monkeypatch.setattr(ctx, "space_id", None)
    host = app.url.removeprefix("http://").rstrip("/")
    text = fill_address(ctx, fake_request({"host": host}))
    assert f'Client("{app.url}")' in text
    assert f'Client.connect("{app.url}")' in text
    assert f"BASE={app.url.rstrip('/')}\n" in text
    assert text != client_examples("http://127.0.0.1:7860/", None)  # not the placeholder any more

    # Behind a proxy: the forwarded host and scheme.
    text = fill_address(
        ctx, fake_request({"host": host, "x-forwarded-host": "tagger.example", "x-forwarded-proto": "https"})
    )
    assert 'Client("https://tagger.example/")' in text and "BASE=https://tagger.example\n" in text

    # On Spaces: the Space id for the clients, its hf.space address for curl.
    monkeypatch.setattr(ctx, "space_id", "Some_User/My.Tagger")
    text = fill_address(ctx, fake_request({"host": host}))
    assert 'Client("Some_User/My.Tagger")' in text
    assert f"BASE={space_address('Some_User/My.Tagger').rstrip('/')}\n" in text
    assert space_address("Some_User/My.Tagger") == "https://some-user-my-tagger.hf.space/"


def test_the_page_serves_the_api_tab_examples(app):
    """The page itself holds the examples component (filled on load; the browser test checks that)."""
    config = httpx.get(app.url + "config", timeout=30).json()
    examples = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "api-examples"]
    assert len(examples) == 1
    assert "gradio_api/call/v2/tag" in examples[0]["props"]["value"]
    loads = [d for d in config["dependencies"] if any(t[1] == "load" for t in d["targets"])]
    assert any(examples[0]["id"] in d["outputs"] for d in loads)
