"""The scores the Tag tab's page selects and formats tags from itself (``assets/tag_rules.js``)."""

from __future__ import annotations

import numpy as np

from tagger.engine.vocab import CATEGORIES, Vocabulary
from tagger.errors import SelectionError
from tagger.tags.selection import _check_probability, mcut_threshold


def page_scores(scores: np.ndarray, vocab: Vocabulary, cutoff: float) -> dict:
    """As JSON: every tag scoring at least ``cutoff`` as ``[tag, score, category id, index]`` in
    vocabulary order, and each category's MCut threshold over all of its tags; selections with a
    floor at or above ``cutoff`` then give exactly what ``select_tags`` gives. With relations, tags
    are sent as shown (aliases), the rows also hold every tag a sent tag implies, and ``relations``
    holds the rows each row implies and the MCut thresholds of the ``add`` scores, so the page can
    follow ``implied`` (size: the sent tags times their implied)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != len(vocab):
        raise SelectionError(f"Got {scores.shape[0]} scores for a vocabulary of {len(vocab)} tags.")
    cutoff = _check_probability("cutoff", cutoff)
    ids = vocab.category_ids
    present = [c.id for c in CATEGORIES if np.any(ids == c.id)]
    picked = np.flatnonzero(scores >= cutoff)
    relations = vocab.relations
    names = vocab.tags if relations is None else relations.names
    if relations is not None and picked.size:
        picked = np.union1d(picked, relations.ancestors_of(picked)[0]).astype(np.int64)
    payload = {
        "cutoff": cutoff,
        # float(float32) is exact, and JSON keeps a float64 exactly: the page compares the same numbers.
        "tags": [[names[i], float(scores[i]), int(ids[i]), int(i)] for i in picked],
        "mcut": {str(c): mcut_threshold(scores[ids == c]) for c in present},
    }
    if relations is not None:
        # Every implied tag of a sent row is sent (above), so each maps to a row position.
        above, counts = relations.ancestors_of(picked)
        per_row = np.split(np.searchsorted(picked, above), np.cumsum(counts)[:-1])
        lifted = relations.lift(scores)
        payload["relations"] = {
            "implies": [[p, rows.tolist()] for p, rows in enumerate(per_row) if rows.size],
            "mcut_add": {str(c): mcut_threshold(lifted[ids == c]) for c in present},
        }
    return payload
