"""Tag implications and aliases from small files in the boorus' real formats (an e621 export
CSV, gzipped, and Danbooru API JSON): reading, merging, matching onto the vocabulary, closure,
cycles, each ``implied`` mode, aliases in typed tags and in output, and wildcards."""

from __future__ import annotations

import csv
import gzip
import http.server
import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from tagger.engine.vocab import Vocabulary
from tagger.errors import RelationsError, SelectionError
from tagger.tags.options import TagOptions
from tagger.tags.relations import Relations, attach, load_relations, read_pairs, resolve_source, sources_from_env
from tagger.tags.selection import Selection, select_tags
from tagger.web.page_scores import page_scores

# e621 category ids as the vocabulary file stores them (shifted by +1 when loaded).
GENERAL, ARTIST, SPECIES = 0, 1, 5
VOCAB_ROWS = [
    ("wolf", SPECIES),
    ("canine", SPECIES),
    ("canid", SPECIES),
    ("mammal", SPECIES),
    ("fox", SPECIES),
    ("renamon (character)", GENERAL),
    ("digimon (species)", SPECIES),
    ("by oldartist", ARTIST),
    ("tail", GENERAL),
    ("censored", GENERAL),
    ("mosaic censorship", GENERAL),
    ("bar censor", GENERAL),
    ("smile", GENERAL),
    ("grin", GENERAL),
]


def make_vocab() -> Vocabulary:
    return Vocabulary.from_data(
        {"idx2tag": [t for t, _ in VOCAB_ROWS], "tag2category": {t: c for t, c in VOCAB_ROWS}}, "test vocab"
    )


def write_e621(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """An e621 db export file: ``id,antecedent_name,consequent_name,created_at,status``, gzipped."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "antecedent_name", "consequent_name", "created_at", "status"])
    for n, (a, c, status) in enumerate(rows, 1):
        writer.writerow([n, a, c, "2020-01-01 00:00:00.000000", status])
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    return path


def write_danbooru(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Danbooru's ``/tag_implications.json`` shape: objects with more fields than we read."""
    objects = [
        {"id": n, "antecedent_name": a, "consequent_name": c, "status": s, "reason": "", "creator_id": 1}
        for n, (a, c, s) in enumerate(rows, 1)
    ]
    path.write_text(json.dumps(objects))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "e621_imp": write_e621(
            tmp_path / "tag_implications-2024-01-01.csv.gz",
            [
                ("wolf", "canine", "active"),
                ("canine", "canid", "active"),
                ("canid", "mammal", "active"),
                ("fox", "canine", "active"),
                ("wolf", "tail", "deleted"),  # not active: ignored
                ("grin", "smile", "active"),
                ("unknown_thing", "mammal", "active"),  # a name the vocabulary lacks
            ],
        ),
        "danbooru_imp": write_danbooru(
            tmp_path / "tag_implications.json",
            [("renamon_(character)", "digimon_(species)", "active"), ("mosaic_censorship", "censored", "active")],
        ),
        "e621_alias": write_e621(
            tmp_path / "tag_aliases-2024-01-01.csv.gz",
            [("oldartist", "newartist", "active"), ("lupine", "wolf", "active"), ("doggo", "canine", "retired")],
        ),
        "danbooru_alias": write_danbooru(tmp_path / "tag_aliases.json", [("mosaic", "mosaic_censorship", "active")]),
    }


@pytest.fixture
def vocab(files) -> Vocabulary:
    v = make_vocab()
    relations = load_relations(
        [str(files["e621_imp"]), str(files["danbooru_imp"])], [str(files["e621_alias"]), str(files["danbooru_alias"])]
    )
    attach(v, relations)
    return v


def scores_for(vocab: Vocabulary, **named: float) -> np.ndarray:
    scores = np.full(len(vocab), 0.01, dtype=np.float32)
    for tag, score in named.items():
        scores[vocab.find(tag.replace("__", " "))] = score
    return scores


def names(tags) -> list[str]:
    return [t.tag for t in tags]


# -- reading ------------------------------------------------------------------------------------


def test_both_formats_read_active_rows_only(files):
    assert read_pairs(files["e621_imp"])[:4] == [
        ("wolf", "canine"),
        ("canine", "canid"),
        ("canid", "mammal"),
        ("fox", "canine"),
    ]
    assert ("wolf", "tail") not in read_pairs(files["e621_imp"])
    assert read_pairs(files["danbooru_imp"]) == [
        ("renamon_(character)", "digimon_(species)"),
        ("mosaic_censorship", "censored"),
    ]
    assert ("doggo", "canine") not in read_pairs(files["e621_alias"])


def test_unreadable_files_get_a_sentence(tmp_path):
    bad_csv = tmp_path / "x.csv"
    bad_csv.write_text("a,b\n1,2\n")
    with pytest.raises(RelationsError, match="not an e621 export"):
        read_pairs(bad_csv)
    bad_json = tmp_path / "x.json"
    bad_json.write_text("[1, 2]")
    with pytest.raises(RelationsError, match="JSON list of objects"):
        read_pairs(bad_json)
    with pytest.raises(RelationsError, match="not found"):
        resolve_source(str(tmp_path / "missing.csv"))


def test_matching_report_counts_matched_and_missing(files):
    v = make_vocab()
    report = attach(v, load_relations([str(files["e621_imp"]), str(files["danbooru_imp"])], [str(files["e621_alias"])]))
    # wolf→canine, canine→canid, canid→mammal, fox→canine, grin→smile, renamon→digimon, mosaic→censored
    assert report.implications_matched == 7
    assert report.implication_rows == 8  # active rows read, over both files
    assert report.missing == 1 and report.missing_examples == ("unknown thing",)
    assert "7 of 8 implications" in report.sentence()


def test_transitive_closure_through_underscored_and_parenthesised_names(vocab):
    relations = vocab.relations
    assert relations is not None

    def ancestors(tag: str) -> set[str]:
        return {vocab.tags[i] for i in relations.ancestors_of(np.asarray(vocab.find(tag)[:1]))[0]}

    assert ancestors("wolf") == {"canine", "canid", "mammal"}
    assert ancestors("renamon (character)") == {"digimon (species)"}


def test_loading_happens_once_per_process(files):
    first = load_relations([str(files["e621_imp"])])
    assert load_relations([str(files["e621_imp"])]) is first


@pytest.mark.parametrize(
    ("rows", "named"),
    [
        ([("a", "b", "active"), ("b", "c", "active"), ("c", "a", "active")], "a → b → c → a"),
        ([("self_tag", "self_tag_", "active"), ("self_tag_", "other", "active"), ("other", "self_tag", "active")], ""),
    ],
)
def test_cycles_are_refused_with_a_sentence_naming_them(tmp_path, rows, named):
    path = write_e621(tmp_path / "cycle.csv.gz", rows)
    with pytest.raises(RelationsError, match="form a cycle") as info:
        load_relations([str(path)])
    assert named in str(info.value)


def test_alias_cycles_are_refused_too():
    with pytest.raises(RelationsError, match="aliases form a cycle: a → b → a"):
        Relations.from_pairs(aliases=[("a", "b"), ("b", "a")])


def test_urls_are_fetched_once_into_the_cache(tmp_path, monkeypatch, files):
    monkeypatch.setenv("TAGGER_CACHE", str(tmp_path / "cache"))
    body = files["e621_imp"].read_bytes()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/tag_implications-2024.csv.gz"
        first = resolve_source(url)
        second = resolve_source(url)
    finally:
        server.shutdown()
        server.server_close()
    assert first == second and len(hits) == 1
    assert read_pairs(first)[0] == ("wolf", "canine")


def test_env_sources_split_on_whitespace_and_commas():
    env = {"TAGGER_IMPLICATIONS": "a.csv.gz, https://x/y.json\nb.json"}
    assert sources_from_env("TAGGER_IMPLICATIONS", env) == ["a.csv.gz", "https://x/y.json", "b.json"]


# -- modes --------------------------------------------------------------------------------------


def test_keep_is_todays_behaviour(vocab):
    plain = make_vocab()
    scores = scores_for(vocab, wolf=0.9, canine=0.6, mammal=0.5, tail=0.4)
    assert names(select_tags(scores, vocab, Selection())) == names(select_tags(scores, plain, Selection()))


def test_remove_keeps_the_most_specific_tag(vocab):
    scores = scores_for(vocab, wolf=0.9, canine=0.6, mammal=0.5, tail=0.4, fox=0.2)
    kept = names(select_tags(scores, vocab, Selection(implied="remove")))
    assert kept == ["wolf", "tail"]  # canine, mammal: implied by wolf (mammal transitively)


def test_remove_keeps_a_parent_whose_child_was_not_selected(vocab):
    scores = scores_for(vocab, wolf=0.2, canine=0.6)
    assert names(select_tags(scores, vocab, Selection(implied="remove"))) == ["canine"]


def test_add_brings_the_parents_along_and_never_lowers_a_score(vocab):
    scores = scores_for(vocab, wolf=0.9, canine=0.1, mammal=0.95)
    tags = {t.tag: t.score for t in select_tags(scores, vocab, Selection(implied="add"))}
    assert tags["canine"] == pytest.approx(0.9) and tags["canid"] == pytest.approx(0.9)
    assert tags["mammal"] == pytest.approx(0.95)  # already higher: not lowered
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.random(len(vocab)).astype(np.float32)
        lifted = vocab.relations.lift(s)
        assert np.all(lifted >= s)


def test_modes_without_relations_change_nothing():
    plain = make_vocab()
    scores = scores_for(plain, wolf=0.9, canine=0.6)
    assert names(select_tags(scores, plain, Selection(implied="remove"))) == ["wolf", "canine"]


def test_implied_is_a_declared_option_with_a_sentence_for_bad_values():
    assert TagOptions(implied="remove").selection.implied == "remove"
    with pytest.raises(SelectionError, match="implied must be one of keep, remove, add; got 'drop'"):
        TagOptions(implied="drop")


# -- aliases ------------------------------------------------------------------------------------


def test_aliases_rewrite_typed_tags(vocab):
    scores = scores_for(vocab, wolf=0.9, censored=0.8, mosaic__censorship=0.7, tail=0.5)
    assert "wolf" not in names(select_tags(scores, vocab, Selection(exclude="lupine")))
    assert names(select_tags(scores, vocab, Selection(include="mosaic, tail"))) == ["mosaic censorship", "tail"]
    options = TagOptions(prepend="lupine, trigger")
    tags = select_tags(scores, vocab, options.selection)
    assert options.tag_string(tags, vocab).startswith("wolf, trigger, censored")


def test_aliased_vocabulary_names_are_shown_under_their_new_name(vocab):
    scores = scores_for(vocab, by__oldartist=0.9)
    assert names(select_tags(scores, vocab, Selection())) == ["by newartist"]
    assert names(select_tags(scores, vocab, Selection(exclude="by oldartist"))) == []
    assert names(select_tags(scores, vocab, Selection(exclude="by_newartist"))) == []


# -- wildcards ----------------------------------------------------------------------------------


def test_wildcards_match_the_shown_and_the_underscored_form():
    plain = make_vocab()
    scores = scores_for(plain, censored=0.9, mosaic__censorship=0.8, bar__censor=0.7, smile=0.6, by__oldartist=0.5)
    assert names(select_tags(scores, plain, Selection(exclude="*censor*"))) == ["smile", "by oldartist"]
    assert names(select_tags(scores, plain, Selection(exclude="by *"))) == [
        "censored",
        "mosaic censorship",
        "bar censor",
        "smile",
    ]
    assert names(select_tags(scores, plain, Selection(include="*_censor*"))) == ["mosaic censorship", "bar censor"]
    assert names(select_tags(scores, plain, Selection(include="sm?le"))) == ["smile"]
    assert names(select_tags(scores, plain, Selection(exclude="nothing*"))) == names(select_tags(scores, plain))


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [("exclude", "tail, *", "exclude: '*' matches every tag"), ("include", "a*b*c*d*e*f*g*h*i*j", "more than 8")],
)
def test_malformed_patterns_get_a_sentence(field, value, fragment):
    with pytest.raises(SelectionError, match=re.escape(fragment)):
        TagOptions(**{field: value})


# -- the page's payload -------------------------------------------------------------------------


def test_page_payload_carries_the_implied_rows_bounded(vocab):
    scores = scores_for(vocab, wolf=0.9)
    payload = page_scores(scores, vocab, 0.05)
    sent = [row[0] for row in payload["tags"]]
    assert sent == ["wolf", "canine", "canid", "mammal"]  # wolf and what it implies, nothing else
    assert payload["relations"]["implies"] == [[0, [1, 2, 3]], [1, [2, 3]], [2, [3]]]


def test_the_readme_example_of_each_mode(tmp_path):
    path = write_e621(
        tmp_path / "tag_implications-x.csv.gz",
        [("wolf", "canine", "active"), ("canine", "canid", "active"), ("canid", "mammal", "active")],
    )
    vocab = make_vocab()
    attach(vocab, load_relations([str(path)]))
    scores = scores_for(vocab, wolf=0.9, canine=0.6, mammal=0.5, tail=0.4)
    strings = {
        mode: TagOptions(implied=mode).tag_string(select_tags(scores, vocab, TagOptions(implied=mode).selection))
        for mode in ("keep", "remove", "add")
    }
    assert strings == {
        "keep": "wolf, canine, mammal, tail",
        "remove": "wolf, tail",
        "add": "wolf, canine, canid, mammal, tail",
    }


def test_hub_sources_are_files_of_the_models_repo(monkeypatch, files):
    import tagger.engine.hub as hub
    from tagger.errors import ResolutionError

    asked = []

    def hub_file(filename, repo, revision=None):
        asked.append((filename, repo, revision))
        if filename == "absent.csv.gz":
            raise ResolutionError(f"{repo} has no file {filename} (EntryNotFoundError).")
        return files["e621_imp"]

    monkeypatch.setattr(hub, "hub_file", hub_file)
    monkeypatch.setenv("TAGGER_REPO", "someone/tagger")
    assert resolve_source("hub:tag_implications.csv.gz") == files["e621_imp"]
    assert asked == [("tag_implications.csv.gz", "someone/tagger", None)]
    with pytest.raises(RelationsError, match=re.escape("someone/tagger has no file absent.csv.gz")):
        resolve_source("hub:absent.csv.gz")
