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


def _one_hit_groups(rng, n, yes_no, right_above):
    """``n`` questions with one FAQ hit each, feature v ~ U(0, 1); right when v > ``right_above``."""
    out = []
    for v in rng.uniform(0, 1, n):
        out.append({"x": [[float(v)], [0.0]], "questions": ["a", "b"], "right": [bool(v > right_above), False],
                    "yes_no": [yes_no, False], "row": {"kind": "in_scope"}})
    return out


def test_entries_that_answer_yes_or_no_get_their_own_direct_threshold():
    # The yes/no entries picked are right only from a higher score than the others: each group's
    # threshold meets the precision target on its own picks; without the split there is one.
    rng = np.random.default_rng(0)
    fit = _one_hit_groups(rng, 300, False, 0.5) + _one_hit_groups(rng, 300, True, 0.85)
    model, th = ffm.fit_matcher(fit, 0.9, split_yes_no=True)
    assert th["direct_yes_no"] > th["direct"] + 0.1
    assert th["clarify"] <= th["direct"]
    yes = [g for g in fit if g["yes_no"][0]]
    assert all(ffm.direct_of(th, model, g) == th["direct_yes_no"] for g in yes)
    assert all(ffm.direct_of(th, model, g) == th["direct"] for g in fit if not g["yes_no"][0])
    for share, group in ((th["direct"], [g for g in fit if not g["yes_no"][0]]), (th["direct_yes_no"], yes)):
        picks = [ffm.best(model, g) for g in group]
        answered = [right for p, right in picks if p >= share]
        assert answered and sum(answered) / len(answered) >= 0.9
    _, one = ffm.fit_matcher(fit, 0.9)  # the default: one threshold
    assert one["direct"] == one["direct_yes_no"]
    assert th["direct"] <= one["direct"] <= th["direct_yes_no"]
