"""bench/train_faq_embedder.py: its examples and its training step (the FAQ matcher's embedder)."""
from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import train_faq_embedder as tfe  # noqa: E402


def _row(q, kind, right, site="acme", part="fit"):
    faq = [{"question": f"Q{j}?", "text": f"Q{j}?\nAnswer {j}.", "right": j == right} for j in range(3)]
    return {"q": q, "kind": kind, "site": site, "part": part, "faq": faq}


def test_a_typo_is_one_edit_inside_a_long_word():
    rng = random.Random(1)
    for _ in range(50):
        out = tfe.typo("can I return used gear", rng)
        changed = [(a, b) for a, b in zip("can I return used gear".split(), out.split()) if a != b]
        assert len(changed) == 1 and len(changed[0][0]) >= 4
        assert abs(len(changed[0][0]) - len(changed[0][1])) <= 1
    assert tfe.typo("a b c", rng) == "a b c"


def test_unanswered_questions_become_none_of_them_examples():
    rows = [_row("how much is it", "in_scope", 1), _row("what is the capital of France", "out_of_scope", None),
            _row("held out", "in_scope", 0, site="other", part="held_out")]
    ranked = tfe.corpus_groups(rows, {"fit"})
    assert [(g["q"], g["pos"]) for g in ranked] == [("how much is it", [1])]
    both = tfe.corpus_groups(rows, {"fit"}, unanswered=True)
    removed = [g for g in both if g["q"] == "how much is it" and not g["pos"]]
    assert len(removed) == 1 and removed[0]["removed"] == [("Q1?", "Q1?\nAnswer 1.")]
    assert ("Q1?", "Q1?\nAnswer 1.") not in removed[0]["cands"]
    oos = [g for g in both if g["q"].startswith("what is")]
    assert len(oos) == 1 and oos[0]["pos"] == [] and len(oos[0]["cands"]) == 3


@pytest.mark.slow
def test_training_puts_the_right_entry_first():
    entries = [("How do I reset my password?", "How do I reset my password?\nUse the link on the sign-in page."),
               ("Do you ship abroad?", "Do you ship abroad?\nWe ship to the EU and the UK."),
               ("Can I pay by invoice?", "Can I pay by invoice?\nYes, for business accounts."),
               ("Where is my parcel?", "Where is my parcel?\nTrack it from your orders page.")]
    # visitors' words far from their entry's, near another's
    pairs = [("my login code thing is lost, new one please", 0), ("deliver to france possible?", 1),
             ("send me a bill and I pay later", 2), ("the box hasn't arrived yet", 3)]
    groups = [{"q": q, "cands": entries, "pos": [j], "source": "corpus", "pool": "acme", "removed": []}
              for q, j in pairs]
    args = SimpleNamespace(rank=4, lr=3e-3, epochs=12, batch=4, max_cands=24, typo=0.0, null=0.0)
    before = tfe.ranks(tfe.Encoder(), groups, 1)
    enc, meta = tfe.train(args, groups, random.Random(0))
    after = tfe.ranks(enc, groups, 1)
    assert meta["steps"] == 12 and meta["loss_last"] < meta["loss_first"] / 2
    assert sum(after) <= sum(before) and all(r == 0 for r in after), (before, after)


def test_bitext_requests_are_asked_of_their_own_intents_entry(tmp_path):
    import json

    lines = [{"turns": [{"role": "user", "text": t}, {"role": "agent", "text": "..."}], "metadata": {"intent": i}}
             for t, i in [("i want to cancel order 123", "cancel_order"), ("where's my refund??", "track_refund"),
                          ("cancel purchase {{Order Number}}", "cancel_order"), ("hello", "no_such_intent"),
                          ("how do i stop my order", "cancel_order")]]
    (tmp_path / "transcripts_train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    groups = tfe.bitext_groups(tmp_path, 5, random.Random(0))
    assert sorted(g["q"] for g in groups) == ["how do i stop my order", "i want to cancel order 123", "where's my refund??"]
    for g in groups:
        assert len(g["cands"]) == len(tfe.BITEXT_ENTRIES) and g["pool"] == "bitext" and len(g["pos"]) == 1
    entry = {g["q"]: g["cands"][g["pos"][0]][0] for g in groups}
    assert entry["where's my refund??"] == "Where is my refund?"
    assert entry["i want to cancel order 123"] == "How do I cancel my order?"
    assert len(tfe.bitext_groups(tmp_path, 1, random.Random(0))) == 2  # at most one per intent
