"""The page's selection with tag relations (``tag_rules.js`` under node) against Python's
(``select_tags``, ``tag_string``) on seeded random vocabularies, implication graphs and
aliases, with what people type (``test_rules_parity``'s ``typed`` values): for each ``implied``
mode, the same tags in the same order, the same strings and the same error sentences, from
the payload ``page_scores`` sends and the aliases ``rules_config`` sends. Any difference fails."""

from __future__ import annotations

import random

import numpy as np
import pytest
from js_support import NODE, differences, python_answer, run_page_rules
from test_rules_parity import random_scores, random_tag, random_values, variant

from tagger.engine.vocab import CATEGORIES, Vocabulary
from tagger.errors import RelationsError
from tagger.tags.options import TagOptions
from tagger.tags.relations import Relations, attach
from tagger.tags.selection import select_tags
from tagger.web.page_scores import page_scores
from tagger.web.tabs.tag import rules_config

CASES = 1500

pytestmark = pytest.mark.skipif(NODE is None, reason="the parity test runs the page's rules under node")


def written(rng: random.Random, name: str) -> str:
    """A name as the boorus' files write it: underscores, maybe without the vocabulary's ``by ``."""
    if name.lower().startswith("by ") and rng.random() < 0.7:
        name = name[3:]
    return name.replace(" ", "_") if rng.random() < 0.8 else name


def random_relations(rng: random.Random, vocab: Vocabulary) -> Relations:
    tags = list(vocab.tags)
    order = rng.sample(range(len(tags)), len(tags))  # edges go forward in this order: no cycle among tags
    missing = [f"missing {k}" for k in range(rng.randint(0, 4))]
    implications = []
    for _ in range(rng.randint(0, 2 * len(tags))):
        a, b = sorted(rng.sample(range(len(order)), 2)) if len(order) > 1 else (0, 0)
        if a == b:
            continue
        implications.append((written(rng, tags[order[a]]), written(rng, tags[order[b]])))
    for name in missing:  # chains through names the vocabulary lacks
        if len(order) > 1 and rng.random() < 0.7:
            a, b = sorted(rng.sample(range(len(order)), 2))
            implications += [(written(rng, tags[order[a]]), name), (name, written(rng, tags[order[b]]))]
    aliases = []
    for k in range(rng.randint(0, 4)):
        aliases.append((f"old name {k}", written(rng, rng.choice(tags))))  # typed old names
    if rng.random() < 0.5:
        aliases.append((written(rng, rng.choice(tags)), f"new name {rng.randint(0, 9)}"))  # shown renamed
    if rng.random() < 0.3 and len(tags) > 1:
        old, new = rng.sample(tags, 2)
        aliases.append((written(rng, old), written(rng, new)))  # two tags shown under one name
    return Relations.from_pairs(implications, aliases)


def random_vocab(rng: random.Random) -> Vocabulary:
    size = rng.randint(2, 40)
    tags: list[str] = []
    while len(tags) < size:
        tag = random_tag(rng, typed=True)
        if rng.random() < 0.15:
            tag = "by " + tag
        if tag.strip().lower() not in {t.strip().lower() for t in tags}:
            tags.append(tag)
    present = rng.sample([c.id for c in CATEGORIES], rng.randint(1, 4))
    return Vocabulary(tags, np.array([rng.choice(present) for _ in tags], dtype=np.int16))


def typed_with_aliases(rng: random.Random, vocab: Vocabulary, values: dict) -> None:
    """Old names and globs in the typed fields, so that the aliases are used."""
    for name in ("exclude", "include", "prepend"):
        if rng.random() < 0.4:
            extra = rng.choice(
                [f"old_name_{rng.randint(0, 4)}", variant(rng, f"old name {rng.randint(0, 4)}", typed=True), "*a*"]
            )
            values[name] = f"{values[name] or ''}, {extra}" if rng.random() < 0.5 else extra
    if rng.random() < 0.3:
        values["include"] = ""


def test_the_pages_rules_with_relations_equal_pythons_in_every_mode():
    rng = random.Random(20261203)
    cases, wanted = [], []
    modes = {"keep": 0, "remove": 0, "add": 0}
    while len(cases) < CASES:
        vocab = random_vocab(rng)
        try:
            attach(vocab, random_relations(rng, vocab))
        except RelationsError:
            continue  # an alias turned the graph into a cycle: refused, as it should be
        scores = random_scores(rng, len(vocab))
        values = random_values(rng, vocab, scores, typed=True)
        values["implied"] = rng.choice(["keep", "remove", "add"])
        typed_with_aliases(rng, vocab, values)
        floor = values["floor"]
        valid_floor = isinstance(floor, float) and 0.0 <= floor <= 1.0
        cutoff = rng.uniform(0.0, floor) if valid_floor and rng.random() < 0.7 else 0.0
        cases.append({"config": rules_config(vocab), "payload": page_scores(scores, vocab, cutoff), "values": values})
        want = python_answer(scores, vocab, values)
        wanted.append(want)
        if want.get("tags") and want != python_answer(scores, vocab, {**values, "implied": "keep"}):
            modes[values["implied"]] += 1  # the mode changed the answer
        elif want.get("tags"):
            modes["keep"] += 1
    got = run_page_rules({"cases": cases})  # no ruling: the page reads every case itself
    assert all(n > CASES // 30 for n in modes.values()), modes  # each mode changes the answer often
    assert not differences(cases, wanted, got)[:3]


def test_the_modes_differ_on_these_cases():
    """The comparison above is not vacuous: remove and add change the selection."""
    vocab = Vocabulary(["wolf", "canine", "mammal"], np.array([6, 6, 6], dtype=np.int16))
    attach(vocab, Relations.from_pairs([("wolf", "canine"), ("canine", "mammal")]))
    scores = np.array([0.9, 0.5, 0.1], dtype=np.float32)
    picked = {
        mode: [t.tag for t in select_tags(scores, vocab, TagOptions(implied=mode).selection)]
        for mode in ("keep", "remove", "add")
    }
    assert picked == {"keep": ["wolf", "canine"], "remove": ["wolf"], "add": ["wolf", "canine", "mammal"]}
