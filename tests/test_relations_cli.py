"""``--implications`` / ``--aliases`` and ``--implied`` in ``tagger`` and ``tagger-bulk`` (tiny model,
CPU): the modes reach the tags, bad files and cycles end in one sentence, the bulk manifest
records the files, and the Ray engine applies them as the local one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bulk_support import captions, run_bulk, start_local_ray, write_images
from test_relations import write_danbooru, write_e621

from tagger.cli import main
from tagger.engine.vocab import Vocabulary
from tagger.tags.options import TagOptions
from tagger.tags.relations import attach, load_relations
from tagger.tags.selection import select_tags

EVERYTHING = ["--mode", "threshold", "--threshold", "0", "--character-threshold", "0", "--floor", "0"]


def model_args(tiny_files) -> list[str]:
    checkpoint, vocab = tiny_files
    return ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture
def everything_implies_the_first(tmp_path: Path, tiny_tagger) -> tuple[Path, str]:
    """Every tag implies the vocabulary's first tag: ``remove`` must drop it whenever another tag is kept."""
    tags = tiny_tagger.vocab.tags
    first = tags[0]
    rows = [(t.replace(" ", "_"), first.replace(" ", "_"), "active") for t in tags[1:]]
    return write_e621(tmp_path / "tag_implications-2024-01-01.csv.gz", rows), first


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_modes_reach_the_tags(capsys, tiny_files, tiny_tagger, image_files, everything_implies_the_first):
    path, first = everything_implies_the_first
    image = str(image_files[0])
    base = ["--images", image, "--format", "json", *EVERYTHING, *model_args(tiny_files), "--implications", str(path)]
    answers = {}
    vocab = Vocabulary(list(tiny_tagger.vocab.tags), tiny_tagger.vocab.category_ids)
    attach(vocab, load_relations([str(path)]))
    scores = tiny_tagger.probabilities([image])[0]
    for mode in ("keep", "remove", "add"):
        code, out, err = run_cli(capsys, *base, "--implied", mode)
        assert code == 0, err
        answers[mode] = [t["tag"] for t in json.loads(out)[0]["tags"]]
        values = {"threshold": 0.0, "character_threshold": 0.0, "floor": 0.0, "implied": mode}
        assert answers[mode] == [t.tag for t in select_tags(scores, vocab, TagOptions(**values).selection)]
    assert first in answers["keep"] and first not in answers["remove"]
    assert answers["add"][0] == first or len(answers["add"]) == len(answers["keep"])


def test_cli_refuses_a_mode_without_files_and_a_cycle_with_one_sentence(capsys, tiny_files, image_files, tmp_path):
    image = str(image_files[0])
    code, out, err = run_cli(capsys, "--images", image, "--implied", "remove", *model_args(tiny_files))
    assert code == 2 and out == ""
    assert err.strip() == "error: --implied remove needs --implications FILE (README: Tag implications)."
    cycle = write_danbooru(tmp_path / "tag_implications.json", [("a", "b", "active"), ("b", "a", "active")])
    code, out, err = run_cli(capsys, "--images", image, "--implications", str(cycle), *model_args(tiny_files))
    assert code == 2 and "form a cycle: a → b → a" in err and "Traceback" not in err


def test_bulk_applies_the_mode_and_records_the_files(capsys, tmp_path, tiny_files, everything_implies_the_first):
    path, first = everything_implies_the_first
    folder = tmp_path / "data"
    write_images(folder, ["a.png", "b.png"])
    args = [str(folder), "--txt-location", "out", *EVERYTHING, "--implications", str(path)]
    keep = run_bulk(capsys, tiny_files, *args, "--out", str(tmp_path / "keep"))
    remove = run_bulk(capsys, tiny_files, *args, "--out", str(tmp_path / "remove"), "--implied", "remove")
    assert keep.code == 0 and remove.code == 0, remove.err
    for text in captions(tmp_path / "keep" / "txt").values():
        assert first in text.split(", ")
    for text in captions(tmp_path / "remove" / "txt").values():
        assert first not in text.split(", ") and text
    manifest = json.loads((tmp_path / "remove" / "bulk.json").read_text())
    (recorded,) = manifest["implications"]
    assert recorded.startswith(str(path) + " (sha256 ")

    # Another file's content under the same name: the run cannot resume with it.
    write_e621(path, [("a", "b", "active")])
    again = run_bulk(capsys, tiny_files, *args, "--out", str(tmp_path / "remove"), "--implied", "remove")
    assert again.code != 0 and "--implications was" in again.err


def test_bulk_without_files_refuses_a_mode(capsys, tmp_path, tiny_files):
    folder = tmp_path / "data"
    write_images(folder, ["a.png"])
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(tmp_path / "o"), "--implied", "add")
    assert result.code != 0 and "--implied add needs --implications FILE" in result.err


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray Data's own settings
def test_ray_engine_applies_the_relations_as_the_local_engine(
    capsys, tmp_path, tiny_files, everything_implies_the_first
):
    ray = pytest.importorskip("ray")
    started = start_local_ray()
    path, first = everything_implies_the_first
    folder = tmp_path / "data"
    write_images(folder, ["a.png", "b.png", "c.png"])
    args = [str(folder), "--txt-location", "out", *EVERYTHING, "--implications", str(path), "--implied", "remove"]
    local = run_bulk(capsys, tiny_files, *args, "--out", str(tmp_path / "local"))
    ray_run = run_bulk(capsys, tiny_files, *args, "--out", str(tmp_path / "ray"), "--engine", "ray")
    if started:
        ray.shutdown()
    assert local.code == 0 and ray_run.code == 0, ray_run.err
    assert captions(tmp_path / "ray" / "txt") == captions(tmp_path / "local" / "txt")
    assert all(first not in text.split(", ") for text in captions(tmp_path / "ray" / "txt").values())
