"""The right-answers gate (training/answer_gate.py, promotion with answer_fn, `supportbot promote`):
a candidate that contradicts a trap answer is refused, one that states the FAQ's facts passes.

The corpus is written here: one company, two questions (a trap whose true answer is "no", an
in-scope question), asked through the real turn pipeline over a hashing embedder."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bot.generators.base import GenerationStream

FAQ = """# Acme Rockets FAQ

## Shipping

### Q: Do you ship to Mars?
**A:** No, we do not ship to Mars; we deliver on Earth only.

### Q: How long does delivery take?
**A:** Delivery takes 3 business days anywhere on Earth.
"""
QUESTIONS = [
    {"q": "can u ship my rocket to mars", "kind": "trap", "entry": "Do you ship to Mars?",
     "expect": ["do not ship to Mars"], "contradiction": ["yes, we ship to mars"]},
    {"q": "how many days is delivery", "kind": "in_scope", "entry": "How long does delivery take?",
     "expect": ["3 business days"]},
]


class Scripted:
    """Replies the same text to every prompt."""

    tokenizer = None

    def __init__(self, text: str, model_id: str):
        self.text, self.model_id = text, model_id
        self.prompts = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, **params):
        self.prompts.append(messages)

        def pieces(handle):
            for word in self.text.split(" "):
                yield word + " "

        return GenerationStream(pieces, self.model_id)


LIAR = "Yes, we ship to Mars. Delivery takes 3 business days."
HONEST = "No, we do not ship to Mars. Delivery takes 3 business days."


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "acme").mkdir(parents=True)
    (root / "acme" / "faq.md").write_text(FAQ)
    (root / "acme" / "questions.json").write_text(json.dumps({"company": "Acme", "questions": QUESTIONS}))
    (root / "split.json").write_text(json.dumps({"acme": "held_out"}))
    return root


@pytest.fixture
def gate(settings, corpus):
    from bot.components import Components
    from retrieval.embedder import HashingEmbedder
    from training import answer_gate

    settings.dialogue.answer_threshold = 0.0
    settings.dialogue.clarify_threshold = 0.0
    sites = answer_gate.corpus_sites(corpus, sample_faq=None, parts=("held_out",))
    comps = Components(settings, parts={"embedder": HashingEmbedder(dim=256)})
    answer_gate.ingest_sites(comps, sites)
    return settings, comps, sites


def test_scoring_counts_the_contradiction_and_the_missing_fact(gate):
    from training import answer_gate

    settings, comps, sites = gate
    liar = answer_gate.summary(answer_gate.ask(sites, comps, Scripted(LIAR, "liar"), settings.dialogue))
    honest = answer_gate.summary(answer_gate.ask(sites, comps, Scripted(HONEST, "honest"), settings.dialogue))
    assert (liar["answers_n"], liar["answers_traps"]) == (2, 1)
    assert liar["answers_trap_contradictions"] == 1 and liar["answers_right"] == 0.5
    assert honest["answers_trap_contradictions"] == 0 and honest["answers_right"] == 1.0
    assert honest["answers"]["held_out"]["right"] == 1.0 and "fit" not in honest["answers"]
    reasons = answer_gate.compare_answers(liar, honest)
    assert reasons[0].startswith("answers: 1 contradictions on 1 trap questions, more than the serving model's 0")
    assert "share right would drop from 1.0000 to 0.5000" in reasons[1]
    assert answer_gate.compare_answers(honest, liar) == []
    # A tolerance forgives a lower share right, never a contradiction.
    assert len(answer_gate.compare_answers(liar, honest, tolerance=0.6)) == 1


def test_the_prompt_is_grounded_in_the_company_faq(gate):
    from training import answer_gate

    settings, comps, sites = gate
    gen = Scripted(HONEST, "honest")
    answer_gate.ask(sites, comps, gen, settings.dialogue)
    assert len(gen.prompts) == 2  # every question answered by the model (no direct FAQ reply)
    assert "do not ship to Mars" in gen.prompts[0][-1]["content"]


def test_promote_refuses_a_candidate_that_contradicts_a_trap(gate, tmp_path, tiny_lm_dir):
    from training import answer_gate
    from training.promotion import promote
    from training.registry import ModelRegistry

    settings, comps, sites = gate
    reg = ModelRegistry(settings.data_dir)
    calls = []

    def answers(candidate_text, serving_text):
        def fn(s, model=None, backend=None, progress=True):
            calls.append((model, backend, s.generator.adapter, s.dialogue.direct_answer_threshold))
            gen = Scripted(candidate_text if model else serving_text, "scripted")
            return answer_gate.summary(answer_gate.ask(sites, comps, gen, s.dialogue))
        return fn

    bad = promote(reg, tiny_lm_dir, settings, None, None, progress=False, answer_fn=answers(LIAR, HONEST))
    assert not bad.promoted and reg.current() is None
    assert any("contradictions" in r for r in bad.reasons)
    assert (bad.candidate_metrics["answers_trap_contradictions"], bad.serving_metrics["answers_trap_contradictions"]) == (1, 0)
    # The candidate is asked as a served hf model with no adapter on top; direct replies off.
    assert calls[0] == (str(tiny_lm_dir.resolve()), "hf", "", 2.0) and calls[1][:2] == (None, None)

    good = promote(reg, tiny_lm_dir, settings, None, None, progress=False, answer_fn=answers(HONEST, LIAR))
    assert good.promoted and good.version == 1 and not good.reasons
    rec = reg.record()
    assert rec["evaluation"]["candidate"]["answers_right"] == 1.0


def test_limit_questions_round_robin():
    from training.answer_gate import limit_questions

    sites = [{"name": "a", "questions": [1, 2, 3]}, {"name": "b", "questions": [4]}, {"name": "c", "questions": [5, 6]}]
    assert [s["questions"] for s in limit_questions(sites, 4)] == [[1, 2], [4], [5]]
    assert [s["name"] for s in limit_questions(sites, 2)] == ["a", "b"]
    assert limit_questions(sites, None) == sites


def test_cli_promote_runs_the_answer_gate(corpus, tmp_path, tiny_lm_dir, monkeypatch):
    """Serving: the extractive backend (the FAQ's own words: right, no contradiction); candidate: a
    random tiny model, whose replies hold neither fact: refused on the share right."""
    from bot.cli import main

    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__BACKEND", "extractive")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__MAX_NEW_TOKENS", "6")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__DEVICE", "cpu")
    monkeypatch.setenv("SUPPORTBOT_DIALOGUE__ANSWER_THRESHOLD", "0")
    monkeypatch.setenv("SUPPORTBOT_DIALOGUE__CLARIFY_THRESHOLD", "0")
    res = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "promote", str(tiny_lm_dir),
                                    "--answer-corpus", str(corpus), "--answer-limit", "2"], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "share right would drop from 1.0000 to 0.0000" in res.output
    assert "answers_trap_contradictions" in res.output and "not promoted" in res.output
    res = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "promote", str(tiny_lm_dir),
                                    "--answer-corpus", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "no FAQ corpus for the answer benchmark" in res.output


def test_right_after_choice_counts_an_asked_back_question_once_its_topic_is_chosen():
    from training.answer_gate import right_after_choice, score

    asked = {"kind": "in_scope", "decision": "clarify", "model": "", "reply": "Are you asking about ...?",
             "expect": ["3 business days"], "ttft_ms": 10.0}
    chosen_right = {**asked, "chosen": {"decision": "answer", "model": "extractive",
                                        "reply": "Delivery takes 3 business days.", "ttft_ms": 5.0}}
    chosen_wrong = {**asked, "chosen": {"decision": "answer", "model": "extractive",
                                        "reply": "Delivery takes a week.", "ttft_ms": 5.0}}
    assert right_after_choice(chosen_right) and not right_after_choice(chosen_wrong)
    assert not right_after_choice(asked)  # no topic of theirs was offered
    figures = score([asked, chosen_right, chosen_wrong])
    assert figures["right"] == 0.0 and figures["right_after_choice"] == round(1 / 3, 4)
