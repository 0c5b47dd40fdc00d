"""`supportbot eval` metrics on tiny hand-made splits whose expected numbers are computed by hand."""
from __future__ import annotations

import json
import math

import pytest

from bot.core.errors import SupportbotError
from bot.evaluate import Record, load_dialogues, oos_in_conversation, selection_counts, summarize


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


def test_out_of_scope_questions_are_also_asked_mid_conversation():
    instances = [{"turns": [{"role": "user", "text": f"book hotel {i}"}, {"role": "agent", "text": "done"},
                            {"role": "user", "text": "is it quiet?"}]} for i in range(4)]
    instances.insert(1, {"turns": [{"role": "user", "text": "hi"}]})  # nothing before: skipped
    convs = oos_in_conversation(instances, ["tell me a joke", "will it rain?"])
    assert [c[-1] for c in convs] == [{"role": "user", "text": "tell me a joke"}, {"role": "user", "text": "will it rain?"}]
    assert [c[0]["text"] for c in convs] == ["book hotel 0", "book hotel 2"], "spread over the file"
    assert all(len(c) == 3 and c[1]["role"] == "agent" for c in convs)
    assert oos_in_conversation(instances[1:2], ["tell me a joke"]) == []
    # counted apart from the questions asked alone
    s = summarize([rec("O1", False, [], [], [], "handoff", out_of_scope=True),
                   rec("C1", False, [], [], [], "answer", out_of_scope=True, extra={"in_conversation": True}),
                   rec("C2", False, [], [], [], "handoff", out_of_scope=True, extra={"in_conversation": True})])
    assert s["out_of_scope_no_answer_rate"] == 1.0 and s["out_of_scope_n"] == 1
    assert s["out_of_scope_conv_no_answer_rate"] == 0.5 and s["out_of_scope_conv_n"] == 2


def test_selection_is_counted_as_the_dstc11_scorer_counts_it():
    """Every instance with gold or selected documents counts, target or not (scripts/scores.py of
    alexa/dstc11-track5): knowledge selected on a turn that needs none is false positives."""
    records = [
        rec("A", True, ["a1", "a2"], ["a1"], ["a1"], "answer"),  # tp 1, fn 1
        rec("N1", False, [], ["x"], ["x1", "x2"], "answer"),  # answered a non-target turn: fp 2
        rec("N2", False, [], ["y"], [], "clarify"),  # nothing on either side: not counted
        rec("C", True, ["c1"], ["z"], [], "handoff"),  # not answered: fn 1
        rec("O", False, [], [], ["o1"], "answer", out_of_scope=True),  # not a dialogue instance
    ]
    s = summarize(records)
    assert s["selection_precision"] == pytest.approx(1 / 3)  # tp 1 / (tp 1 + fp 2)
    assert s["selection_recall"] == pytest.approx(1 / 3)  # tp 1 / (tp 1 + fn 2)
    assert s["selection_f1"] == pytest.approx(1 / 3)
    assert s["selection_instances"] == 3 and s["selection_exact_match"] == 0.0
    # detection: answered 2 dialogue turns, one of them knowledge-seeking, of 2 such turns
    assert s["detection_precision"] == pytest.approx(1 / 2)
    assert s["detection_recall"] == pytest.approx(1 / 2)
    # counting target instances only (the old way) would have said P 1, R 1/3
    assert summarize([r for r in records if r.target])["selection_precision"] == 1.0


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


# ---- end to end: run_eval and the CLI over a tiny hand-made knowledge base ----------------------

KB = [
    {"id": "h:1:faq:0", "title": "ALLENBELL", "question": "Is there free parking at the Allenbell?",
     "answer": "Yes, parking at the Allenbell is free.",
     "text": "Is there free parking at the Allenbell?\nYes, parking at the Allenbell is free.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
    {"id": "h:1:faq:1", "title": "ALLENBELL", "question": "Does the Allenbell allow pets?",
     "answer": "No, pets are not allowed at the Allenbell.",
     "text": "Does the Allenbell allow pets?\nNo, pets are not allowed at the Allenbell.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
    {"id": "h:2:faq:0", "title": "HOBSONS HOUSE", "question": "Is breakfast served at Hobsons House?",
     "answer": "Breakfast is served daily from 7 to 10 at Hobsons House.",
     "text": "Is breakfast served at Hobsons House?\nBreakfast is served daily from 7 to 10 at Hobsons House.",
     "metadata": {"entity_name": "HOBSONS HOUSE", "doc_type": "faq"}},
]
DIALOGUES = [
    {"id": "t1", "dialogue": "a", "target": True,
     "turns": [{"role": "user", "text": "Is there free parking at the Allenbell?"}],
     "gold_doc_ids": ["h:1:faq:0"], "gold_response": "Yes, parking at the Allenbell is free."},
    {"id": "t2", "dialogue": "b", "target": True,
     "turns": [{"role": "user", "text": "I'd like to stay at Hobsons House."},
               {"role": "agent", "text": "Hobsons House is a lovely guesthouse."},
               {"role": "user", "text": "Is breakfast served at Hobsons House?"}],
     "gold_doc_ids": ["h:2:faq:0", "h:1:faq:1"], "gold_response": "Yes, from 7 to 10 every day."},
    {"id": "n1", "dialogue": "c", "target": False,
     "turns": [{"role": "user", "text": "Thanks, that is all."}]},
]


@pytest.fixture
def tiny_split(tmp_path):
    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps(d) + "\n" for d in KB))
    dialogues = tmp_path / "dialogues.jsonl"
    dialogues.write_text("".join(json.dumps(d) + "\n" for d in DIALOGUES))
    return kb, dialogues


def test_run_eval_end_to_end_with_extractive_replies(settings, tiny_split):
    from bot.components import Components
    from bot.evaluate import run_eval
    from bot.generators import build_generator
    from retrieval.embedder import HashingEmbedder

    kb, dialogues = tiny_split
    # Exact-question turns: the top hit is the gold FAQ; one source each, everything answered.
    settings.dialogue.answer_threshold = 0.0
    settings.dialogue.clarify_threshold = 0.0
    settings.dialogue.max_sources = 1
    settings.dialogue.direct_answer_threshold = 1.1  # the backend writes every reply (timed)
    settings.generator.backend = "extractive"
    gen = build_generator(settings.generator, settings.data_dir)
    comps = Components(settings, parts={"embedder": HashingEmbedder(dim=256)})
    report = run_eval(settings, kb, dialogues, progress=False, components=comps, generator=gen,
                      out_of_scope=False)
    assert report["direct_answer_rate"] == 0.0
    # t1: tp 1; t2: tp 1, fn 1 (the second gold id); n1 (needs no knowledge, answered because the
    # thresholds are 0): its one source is a false positive -> P 2/3, R 2/3
    assert report["n"] == 2 and report["n_instances"] == 3
    assert report["selection_precision"] == pytest.approx(2 / 3)
    assert report["selection_recall"] == pytest.approx(2 / 3)
    assert report["selection_f1"] == pytest.approx(2 / 3)
    assert report["selection_instances"] == 3
    assert report["recall@5"] == 1.0 and report["mrr"] == 1.0
    # t1's extractive reply is the gold answer plus " [1]": ROUGE-1 P 7/8 (the citation token "1"
    # is extra), R 1 -> F 14/15; t2 shares "7", "to", "10" with its gold reply
    assert report["n_generated"] == 2
    assert report["rouge1"] > (14 / 15) / 2
    assert report["model"] == gen.model_id and report["tokens_per_s"] > 0
    # the non-target turn answered (thresholds are 0): decision accuracy 2/3
    assert report["decision_accuracy"] == pytest.approx(2 / 3)


def test_direct_faq_replies_are_scored_but_not_timed(settings, tiny_split, tiny_lm_dir):
    from bot.components import Components
    from bot.evaluate import run_eval
    from bot.generators import build_generator
    from retrieval.embedder import HashingEmbedder

    kb, dialogues = tiny_split
    settings.dialogue.answer_threshold = 0.0
    settings.dialogue.clarify_threshold = 0.0
    settings.dialogue.max_sources = 1
    settings.dialogue.direct_answer_threshold = 0.0  # every answered turn's top hit is an FAQ entry
    settings.generator.model = str(tiny_lm_dir)
    gen = build_generator(settings.generator, settings.data_dir)
    comps = Components(settings, parts={"embedder": HashingEmbedder(dim=256)})
    report = run_eval(settings, kb, dialogues, progress=False, components=comps, generator=gen,
                      out_of_scope=False)
    assert report["direct_answer_rate"] == 1.0 and report["n_generated"] == 2
    # t1's reply is the gold FAQ's own answer plus " [1]"
    assert report["rouge1"] > (14 / 15) / 2
    # the model wrote nothing, so there is no model speed to report
    assert report["ttft_ms_p50"] is None and report["tokens_per_s"] is None


def test_eval_cli_writes_the_report(tmp_path, tiny_split, monkeypatch):
    from click.testing import CliRunner

    from bot.cli import main

    kb, dialogues = tiny_split
    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "eval", "--kb", str(kb),
                                       "--dialogues", str(dialogues), "--out", str(out), "--no-generate"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("n", "selection_precision", "selection_recall", "selection_f1", "recall@5", "mrr", "bleu",
                "rouge1", "rouge2", "rougeL", "ttft_ms_p50", "tokens_per_s"):
        assert key in report
    assert report["n"] == 2 and report["bleu"] is None and report["out_of_scope_n"] == 60
    assert report["out_of_scope_conv_n"] == 60 and "mid-conversation" in result.output
    assert "selection F1" in result.output and "report written to" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": "nope"}\n')
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "eval", "--kb", str(kb),
                                       "--dialogues", str(bad), "--no-generate"])
    assert result.exit_code != 0 and "bad.jsonl:1" in result.output
