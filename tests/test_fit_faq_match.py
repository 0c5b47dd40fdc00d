"""bench/fit_faq_match.py: the topics its clarify threshold counts are the ones serving offers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import fit_faq_match as ffm  # noqa: E402


class _Fixed:
    """A fitted model stand-in: P of each hit is its first feature."""

    def predict_proba(self, x):
        p = np.asarray(x, float)[:, 0]
        return np.stack([1 - p, p], 1)


def _group(ps, questions, right):
    return {"x": [[p] for p in ps], "questions": questions, "right": right, "row": {"kind": "in_scope"}}


def test_offered_is_the_likeliest_and_close_entries_with_other_questions():
    # Hit 2 is likeliest; hit 0 repeats its question; hit 3 is below half its P.
    g = _group([0.30, 0.20, 0.40, 0.15], ["a", "b", "a", "c"], [False, True, False, False])
    assert ffm.offered(_Fixed(), g, ratio=0.5, topics=3) == [2, 1]
    assert ffm.offered(_Fixed(), g, ratio=0.3, topics=3) == [2, 1, 3]
    assert ffm.offered(_Fixed(), g, ratio=0.3, topics=2) == [2, 1]


def test_the_clarify_threshold_counts_an_entry_offered_below_the_retrievers_first_two():
    # The expected entry is the retriever's third hit but the matcher's second likeliest: serving
    # offers it, so asking back is useful for this question.
    g = _group([0.30, 0.05, 0.25], ["a", "b", "c"], [False, False, True])
    assert 2 in ffm.offered(_Fixed(), g)
    assert not any(g["right"][:2])
