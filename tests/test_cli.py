"""``python -m tagger``: output formats, options and error reporting.

Most tests call ``tagger.cli.main`` in-process (fast); two run the real ``python -m tagger``
in a subprocess. Nothing is downloaded: the model files are the tiny session fixtures, and the
tests without ``--checkpoint`` run with HF_HUB_OFFLINE and an empty, private HF cache.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from tagger.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
RANK_LINE = re.compile(r"^\s*\d+\. \d\.\d{3} [█░]{20} .+$")
TAGGER_ENV = ("TAGGER_CHECKPOINT", "TAGGER_VOCAB", "TAGGER_REPO", "TAGGER_REVISION")


@pytest.fixture
def model_args(tiny_files) -> list[str]:
    checkpoint, vocab = tiny_files
    return ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu", "--dtype", "fp32"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_pretty_format(capsys, model_args, image_files):
    code, out, err = _run(capsys, "--images", str(image_files[0]), str(image_files[2]), *model_args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"== {image_files[0]} (30 tags)"
    assert lines[31] == f"== {image_files[2]} (30 tags)"
    assert len(lines) == 62
    for line in lines[1:31] + lines[32:]:
        assert RANK_LINE.match(line), line
    scores = [float(line.split()[1]) for line in lines[1:31]]
    assert scores == sorted(scores, reverse=True)


def test_tags_format_matches_the_python_api(capsys, model_args, image_files, tiny_tagger):
    images = [str(p) for p in image_files]
    code, out, err = _run(capsys, "--images", *images, "--format", "tags", "--topk", "5", *model_args)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for image, line in zip(images, lines, strict=True):
        assert line.split(", ") == [tag for tag, _ in tiny_tagger.predict(image, topk=5)]


def test_tags_format_underscores_and_escapes(capsys, model_args, image_files):
    args = ["--images", str(image_files[0]), "--format", "tags", *model_args]
    code, out, _ = _run(capsys, *args, "--underscores", "--escape-parentheses")
    assert code == 0
    tags = out.strip().split(", ")
    assert len(tags) == 30
    assert all(" " not in tag for tag in tags)
    assert any("_\\(" in tag and tag.endswith("\\)") for tag in tags)  # e.g. general_tag_4_\(meta\)

    _, plain, _ = _run(capsys, *args)
    assert [t.replace("_", " ").replace("\\", "") for t in tags] == plain.strip().split(", ")


def test_json_format(capsys, model_args, image_files, tiny_tagger):
    images = [str(image_files[0]), str(image_files[2])]
    code, out, err = _run(capsys, "--images", *images, "--format", "json", "--topk", "5", *model_args)
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == 2
    for image, entry in zip(images, data, strict=True):
        assert set(entry) == {"file", "tags"}
        assert entry["file"] == image
        assert len(entry["tags"]) == 5
        assert all(set(t) == {"tag", "score"} for t in entry["tags"])
        expected = tiny_tagger.predict(image, topk=5)
        assert [t["tag"] for t in entry["tags"]] == [tag for tag, _ in expected]
        np.testing.assert_allclose([t["score"] for t in entry["tags"]], [s for _, s in expected], atol=1e-5)


def test_json_default_is_top_30(capsys, model_args, image_files):
    code, out, _ = _run(capsys, "--images", str(image_files[1]), "--format", "json", *model_args)
    assert code == 0
    assert len(json.loads(out)[0]["tags"]) == 30


def test_threshold(capsys, model_args, image_files, tiny_tagger):
    image = str(image_files[0])
    probs = tiny_tagger.probabilities([image])[0]
    threshold = round(float(np.quantile(probs, 0.75)), 4)
    code, out, _ = _run(capsys, "--images", image, "--format", "json", "--threshold", str(threshold), *model_args)
    assert code == 0
    tags = json.loads(out)[0]["tags"]
    assert all(t["score"] >= threshold - 1e-6 for t in tags)
    assert len(tags) == int(np.sum(probs >= np.float32(threshold)))
    assert 0 < len(tags) < 30


def test_missing_image_is_reported_and_the_others_still_run(capsys, model_args, image_files, tmp_path):
    missing = tmp_path / "no_such_picture.png"
    images = [str(image_files[0]), str(missing), str(image_files[2])]
    code, out, err = _run(capsys, "--images", *images, "--format", "json", "--topk", "3", *model_args)
    assert code == 1
    assert str(missing) in err
    assert [entry["file"] for entry in json.loads(out)] == [images[0], images[2]]


def test_all_images_missing_exits_1_with_an_empty_list(capsys, model_args, tmp_path):
    missing = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    code, out, err = _run(capsys, "--images", *missing, "--format", "json", *model_args)
    assert code == 1
    assert json.loads(out) == []
    assert all(name in err for name in missing)


def test_tags_format_prints_one_line_per_image_even_when_empty(capsys, model_args, image_files):
    images = [str(p) for p in image_files]
    code, out, _ = _run(capsys, "--images", *images, "--format", "tags", "--threshold", "1.0", *model_args)
    assert code == 0
    assert out.split("\n") == ["", "", "", ""]  # three empty lines: captions stay aligned with images


def test_corrupt_image_is_reported(capsys, model_args, image_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = _run(capsys, "--images", str(broken), str(image_files[0]), "--format", "tags", *model_args)
    assert code == 1
    assert "broken.jpg" in err
    assert len(out.splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all, just some text\n"])
def test_bad_checkpoint_exits_2_with_one_error_line(capsys, tiny_files, image_files, tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    _, vocab = tiny_files
    code, out, err = _run(
        capsys, "--images", str(image_files[0]), "--checkpoint", str(bad), "--vocab", str(vocab), "--device", "cpu"
    )
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and str(bad) in err


def test_missing_checkpoint_file_exits_2(capsys, tiny_files, image_files, tmp_path):
    _, vocab = tiny_files
    missing = tmp_path / "nowhere.safetensors"
    code, _, err = _run(capsys, "--images", str(image_files[0]), "--checkpoint", str(missing), "--vocab", str(vocab))
    assert code == 2
    assert len(_error_lines(err)) == 1 and str(missing) in err


def test_mismatched_vocabulary_exits_2(capsys, tiny_files, tiny_config, image_files, tmp_path):
    from tagger.engine.synthetic import write_random_vocabulary

    checkpoint, _ = tiny_files
    vocab = write_random_vocabulary(tmp_path / "small_vocab.json", 7)
    code, _, err = _run(capsys, "--images", str(image_files[0]), "--checkpoint", str(checkpoint), "--vocab", str(vocab))
    assert code == 2
    assert len(_error_lines(err)) == 1
    assert str(tiny_config.num_tags) in err and "7" in err


@pytest.mark.parametrize("option", [["--topk", "0"], ["--topk", "-3"], ["--threshold", "1.5"], ["--threshold", "-0.1"]])
def test_out_of_range_options_exit_2(capsys, model_args, image_files, option):
    code, out, err = _run(capsys, "--images", str(image_files[0]), *option, *model_args)
    assert code == 2
    assert out == ""
    assert option[0] in err


def test_topk_and_threshold_are_exclusive(capsys, model_args, image_files):
    with pytest.raises(SystemExit) as info:
        main(["--images", str(image_files[0]), "--topk", "3", "--threshold", "0.5", *model_args])
    assert info.value.code == 2
    assert "not allowed" in capsys.readouterr().err


def test_max_size_below_one_patch_exits_2(capsys, model_args, image_files):
    code, _, err = _run(capsys, "--images", str(image_files[0]), "--max-size", "8", *model_args)
    assert code == 2
    assert "max_size" in err


def test_unknown_device_exits_2(capsys, tiny_files, image_files):
    checkpoint, vocab = tiny_files
    args = ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "banana"]
    code, _, err = _run(capsys, "--images", str(image_files[0]), *args)
    assert code == 2
    assert "banana" in err


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TAGGER_* variables, HF_HUB_OFFLINE on, an empty private HF cache and no sockets."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    for name in TAGGER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these once, at import: the environment alone is not enough in-process.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def test_without_checkpoint_offline_with_empty_cache_exits_2(capsys, offline_hub, image_files):
    code, out, err = _run(capsys, "--images", str(image_files[0]), "--device", "cpu")
    assert code == 2
    assert out == ""
    assert len(_error_lines(err)) == 1
    assert "TAGGER_CHECKPOINT" in err
    assert not [p for p in offline_hub.rglob("*") if p.is_file()]  # nothing was fetched


# -- the real entry point, in a subprocess ------------------------------------------------------


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TAGGER_ENV and not k.startswith("HF_")}
    hf_home = tmp_path / "hf_home"
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


def _python_m_tagger(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tagger", *argv],
        cwd=tmp_path,
        env=_subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def test_python_m_tagger_json(tmp_path, model_args, image_files):
    images = [str(image_files[0]), str(image_files[2])]
    done = _python_m_tagger(tmp_path, "--images", *images, "--format", "json", "--topk", "5", *model_args)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [entry["file"] for entry in data] == images
    assert all(len(entry["tags"]) == 5 for entry in data)
    assert "Traceback" not in done.stderr


def test_python_m_tagger_offline_without_checkpoint(tmp_path, image_files):
    done = _python_m_tagger(tmp_path, "--images", str(image_files[0]), "--device", "cpu")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    errors = _error_lines(done.stderr)
    assert len(errors) == 1
    assert "TAGGER_CHECKPOINT" in errors[0]


@pytest.fixture
def image_server(image_files):
    """A loopback HTTP server for the first image file (the CLI may fetch from its own machine)."""
    import http.server
    import threading

    body = image_files[0].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        yield f"http://127.0.0.1:{port}/picture.png", port
    finally:
        server.shutdown()


def test_url_images_are_fetched_and_tagged_like_files(capsys, model_args, image_files, image_server):
    url, _ = image_server
    code, out, _ = _run(capsys, *model_args, "--format", "json", "--images", url, str(image_files[0]))
    assert code == 0
    by_url, by_file = json.loads(out)
    assert by_url["file"] == url
    assert by_url["tags"] == by_file["tags"]


def test_unusable_address_urls_are_refused_and_the_others_still_run(capsys, model_args, image_files):
    # The CLI's user owns the machine: loopback and private hosts are fine (see above), but an
    # address no download can come from is refused before any connection.
    refused = "http://0.0.0.0:9/x.png"
    code, out, err = _run(capsys, *model_args, "--format", "tags", "--images", refused, str(image_files[0]))
    assert code == 1
    assert len(out.splitlines()) == 1
    (line,) = _error_lines(err)
    assert "0.0.0.0" in line and "unspecified" in line.lower()


# -- every /tag option is a flag ---------------------------------------------------------------


def test_every_declared_option_is_a_flag_and_nothing_else_is_one():
    from tagger.cli import build_parser
    from tagger.tags.options import OPTION_FIELDS

    parser = build_parser()
    flags = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    option_flags = {"--" + f.name.replace("_", "-") for f in OPTION_FIELDS}
    assert option_flags <= flags
    cli_only = {"--help", "--images", "--topk", "--format", "--checkpoint", "--vocab", "--repo", "--revision"}
    cli_only |= {"--demo", "--device", "--dtype", "--max-size", "--no-underscores", "--no-escape-parentheses"}
    cli_only |= {"--backend", "--onnx"}  # the ONNX Runtime backend (tests/test_onnx.py)
    cli_only |= {"--implications", "--aliases"}  # files the process loads, as the app reads TAGGER_IMPLICATIONS
    assert flags - option_flags <= cli_only, "a flag that is neither a declared option nor a CLI setting"


def test_each_option_flag_reaches_the_options():
    from tagger.cli import build_parser
    from tagger.tags.flags import options_from_args
    from tagger.tags.options import OPTION_FIELDS, OPTION_TYPES, choice_values

    samples = {float: "0.5", int: "7"}
    for f in OPTION_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        kind = OPTION_TYPES[f.name]
        if kind is bool:
            argv, expected = [flag], True
        elif f.name in ("mode", "order", "implied"):
            value = choice_values(f.name)[-1]
            argv, expected = [flag, value], value
        elif kind in samples:
            argv, expected = [flag, samples[kind]], kind(samples[kind])
        elif f.name == "category_thresholds":
            argv, expected = [flag, "artist=0.6"], "artist=0.6"
        elif f.name == "categories":
            argv, expected = [flag, "general"], "general"
        else:
            argv, expected = [flag, "some tag"], "some tag"
        options = options_from_args(build_parser().parse_args(["--images", "x.png", *argv]))
        assert getattr(options, f.name) == expected, flag


def test_app_options_select_as_the_app_does(capsys, model_args, image_files, tiny_tagger):
    from tagger.tags.options import TagOptions

    image = str(image_files[0])
    scores = tiny_tagger.probabilities([image])[0]
    everything = tiny_tagger.select(scores, topk=len(tiny_tagger.vocab))
    excluded = everything[0].tag
    argv = ["--images", image, "--format", "json", "--mode", "mcut", "--exclude", excluded, "--floor", "0", *model_args]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    tags = [t["tag"] for t in json.loads(out)[0]["tags"]]
    expected = TagOptions(mode="mcut", exclude=excluded, floor=0.0)
    from tagger.tags.selection import select_tags

    assert tags == [t.tag for t in select_tags(scores, tiny_tagger.vocab, expected.selection)]
    assert excluded not in tags and tags

    # --topk with --mode caps what the mode keeps.
    code, out, _ = _run(capsys, *argv, "--topk", "1")
    assert code == 0
    assert [t["tag"] for t in json.loads(out)[0]["tags"]] == tags[:1]


def test_categories_order_and_prepend_shape_the_tag_string(capsys, model_args, image_files, tiny_tagger):
    image = str(image_files[0])
    argv = ["--images", image, "--format", "tags", "--categories", "general", "--prepend", "trigger word", *model_args]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    tags = out.strip().split(", ")
    assert tags[0] == "trigger word"
    vocab = tiny_tagger.vocab
    assert tags[1:] and all(vocab.category_of(i).name == "general" for t in tags[1:] for i in vocab.find(t))


def test_authors_threshold_keeps_characters_too(capsys, model_args, image_files, tiny_tagger):
    """Without --mode, --threshold T keeps every tag at or above T: the app's character threshold
    (0.85) and floor do not apply, as in the authors' CLI."""
    image = str(image_files[0])
    probs = tiny_tagger.probabilities([image])[0]
    code, out, _ = _run(capsys, "--images", image, "--format", "json", "--threshold", "0.01", *model_args)
    assert code == 0
    assert len(json.loads(out)[0]["tags"]) == int(np.sum(probs >= np.float32(0.01)))


def test_bad_option_value_exits_2_with_one_sentence(capsys, model_args, image_files):
    code, out, err = _run(capsys, "--images", str(image_files[0]), "--categories", "nonsense", *model_args)
    assert code == 2 and out == ""
    assert len(_error_lines(err)) == 1 and "nonsense" in err
