"""`supportbot eval` metrics on tiny hand-made splits whose expected numbers are computed by hand."""
from __future__ import annotations

import json
import math

import pytest

from bot.errors import SupportbotError
from bot.evaluate import Record, load_dialogues, selection_counts, summarize


def rec(id, target, gold, ranked, selected, decision, reply=None, ref="", **kw) -> Record:
    return Record(id=id, target=target, gold=gold, ranked=ranked, selected=selected,
                  decision=decision, confidence=0.5, reply=reply, gold_response=ref, **kw)


def test_selection_counts_dedupes_predictions():
    assert selection_counts(["a", "b"], ["a", "a", "x"]) == (1, 1, 1)
    assert selection_counts([], ["x"]) == (0, 1, 0)
    assert selection_counts(["a"], []) == (0, 0, 1)


def test_summary_matches_hand_computed_figures():
    records = [
        # gold {a1,a2}, selects a1 and a wrong x: tp 1, fp 1, fn 1; gold first at rank 1
        rec("A", True, ["a1", "a2"], ["a1", "x", "a2"], ["a1", "x"], "answer",
            reply="the pool is open daily", ref="the pool is open daily",
            ttft_ms=100.0, completion_tokens=10, decode_s=1.0),
        # exact selection; gold first at rank 2
        rec("B", True, ["b1"], ["y", "b1"], ["b1"], "answer",
            reply="no idea sorry", ref="parking is free here",
            ttft_ms=300.0, completion_tokens=30, decode_s=2.0),
        # handed off: selects nothing, 3 misses; gold not retrieved
        rec("C", True, ["c1", "c2", "c3"], ["z"], [], "handoff",
            reply="no idea sorry", ref="breakfast is served at eight"),
        # non-target turn, correctly not answered
        rec("D", False, [], ["q"], [], "handoff"),
        # out-of-scope questions: one refused, one (wrongly) answered
        rec("O1", False, [], [], [], "handoff", out_of_scope=True),
        rec("O2", False, [], [], [], "answer", out_of_scope=True),
    ]
    s = summarize(records)
    # tp 2, fp 1, fn 4
    assert s["n"] == 3 and s["n_instances"] == 4
    assert s["selection_precision"] == pytest.approx(2 / 3)
    assert s["selection_recall"] == pytest.approx(2 / 6)
    assert s["selection_f1"] == pytest.approx(2 * (2 / 3) * (1 / 3) / (2 / 3 + 1 / 3))
    assert s["selection_exact_match"] == pytest.approx(1 / 3)
    assert s["recall@5"] == pytest.approx(2 / 3)
    assert s["mrr"] == pytest.approx((1 + 0.5 + 0) / 3)
    # ROUGE: one identical reply, two with no word in common
    assert s["rouge1"] == pytest.approx(1 / 3)
    assert s["rouge2"] == pytest.approx(1 / 3)
    assert s["rougeL"] == pytest.approx(1 / 3)
    # corpus BLEU: matched/total n-grams 5/11, 4/8, 3/5, 2/2; hypothesis 11 words, references 14
    bleu = math.exp(1 - 14 / 11) * (5 / 11 * 4 / 8 * 3 / 5 * 2 / 2) ** 0.25
    assert s["bleu"] == pytest.approx(bleu, abs=1e-4)
    assert s["decision_accuracy"] == pytest.approx(3 / 4)
    assert s["target_answer_rate"] == pytest.approx(2 / 3)
    assert s["non_target_no_answer_rate"] == 1.0
    assert s["out_of_scope_no_answer_rate"] == 0.5 and s["out_of_scope_handoff_rate"] == 0.5
    assert s["ttft_ms_p50"] == pytest.approx(200.0)
    assert s["tokens_per_s"] == pytest.approx(40 / 3)


def test_no_generation_leaves_reply_scores_empty():
    s = summarize([rec("A", True, ["a"], ["a"], ["a"], "answer")])
    assert s["selection_f1"] == 1.0 and s["bleu"] is None and s["rougeL"] is None
    assert s["ttft_ms_p50"] is None and s["tokens_per_s"] is None


def test_load_dialogues_names_the_bad_line(tmp_path):
    good = {"id": "x", "turns": [{"role": "user", "text": "hi"}], "target": False}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"turns": [{"role": "agent", "text": "hello"}]}\n')
    with pytest.raises(SupportbotError, match=r"d.jsonl:2: not a dialogue instance"):
        load_dialogues(path)
    assert [r["id"] for r in load_dialogues(path, limit=1)] == ["x"]
    path.write_text("")
    with pytest.raises(SupportbotError, match="no dialogue instances"):
        load_dialogues(path)
