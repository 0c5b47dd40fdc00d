"""The promotion gate over the real evaluation (bot.evaluate.run_eval) with tiny real models.

A tiny model fine-tuned on the exact prompts the bot builds for two dev dialogues (sources
retrieved and selected by the dialogue manager) is promoted over the untuned one; a fresh random
model is then refused because its replies' ROUGE-L would drop, and the pointer stays put.
"""
from __future__ import annotations

import json

import pytest

KB = [
    {"id": "h:1:faq:0", "title": "ALLENBELL", "question": "Is there free parking at the Allenbell?",
     "answer": "Yes, parking at the Allenbell is free.",
     "text": "Is there free parking at the Allenbell?\nYes, parking at the Allenbell is free.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
    {"id": "h:2:faq:0", "title": "HOBSONS HOUSE", "question": "Is breakfast served at Hobsons House?",
     "answer": "Breakfast is served daily from 7 to 10 at Hobsons House.",
     "text": "Is breakfast served at Hobsons House?\nBreakfast is served daily from 7 to 10 at Hobsons House.",
     "metadata": {"entity_name": "HOBSONS HOUSE", "doc_type": "faq"}},
]
DIALOGUES = [
    {"id": "t1", "dialogue": "a", "target": True,
     "turns": [{"role": "user", "text": "Is there free parking at the Allenbell?"}],
     "gold_doc_ids": ["h:1:faq:0"], "gold_response": "Yes, parking is free."},
    {"id": "t2", "dialogue": "b", "target": True,
     "turns": [{"role": "user", "text": "Is breakfast served at Hobsons House?"}],
     "gold_doc_ids": ["h:2:faq:0"], "gold_response": "Yes, from 7 to 10 every day."},
]


@pytest.fixture
def setup(settings, tmp_path, tiny_lm_dir):
    from bot.components import Components
    from retrieval.embedder import HashingEmbedder

    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps(d) + "\n" for d in KB))
    dialogues = tmp_path / "dev.jsonl"
    dialogues.write_text("".join(json.dumps(d) + "\n" for d in DIALOGUES))
    settings.dialogue.answer_threshold = 0.0
    settings.dialogue.clarify_threshold = 0.0
    settings.dialogue.max_sources = 1
    settings.generator.model = str(tiny_lm_dir)
    settings.generator.device = "cpu"
    settings.generator.max_new_tokens = 12
    comps = Components(settings, parts={"embedder": HashingEmbedder(dim=256)})
    return settings, comps, kb, dialogues


def test_gate_promotes_the_better_model_and_refuses_a_worse_one(setup, tmp_path, tiny_lm_dir):
    from tiny_models import build_tiny_causal_lm

    from bot.eval_kb import EVAL_BOT
    from bot.evaluate import run_eval
    from training.finetune import finetune
    from training.importers import import_transcripts
    from training.pii import PIIScrubber
    from training.promotion import promote
    from bot.generators.following import current_model
    from training.registry import ModelRegistry
    from training.sft_dataset import RetrievedSources, build_examples, write_dataset

    settings, comps, kb, dialogues = setup
    # Training prompts built exactly as the evaluated bot builds them.
    comps.knowledge.ingest(EVAL_BOT, [kb], progress=False)
    pipeline = comps.pipeline(EVAL_BOT, with_generator=False)
    transcripts, _ = import_transcripts([dialogues], PIIScrubber())
    examples = list(build_examples(transcripts, settings.dialogue, RetrievedSources(pipeline)))
    assert [e.sources for e in examples] == [["h:1:faq:0"], ["h:2:faq:0"]]
    write_dataset(tmp_path / "ds", examples, examples, {"sources": "retrieve"})
    tuned = tmp_path / "tuned"
    ts = settings.training.model_copy(update={"method": "full", "patience": 0})
    finetune(tmp_path / "ds", str(tiny_lm_dir), tuned, ts, max_steps=40, batch_size=2, lr=1e-2,
             eval_every=40, warmup_ratio=0.0)

    reg = ModelRegistry(settings.data_dir)

    def evaluate(*args, **kw):  # supportbot eval on these components' knowledge base
        return run_eval(*args, components=comps, **kw)

    good = promote(reg, tuned, settings, kb, dialogues, progress=False, eval_fn=evaluate)
    assert good.promoted, good
    assert good.candidate_metrics["rougeL"] > 0.8 > good.serving_metrics["rougeL"]
    assert good.candidate_metrics["selection_f1"] == good.serving_metrics["selection_f1"] == 1.0
    served = current_model(settings.data_dir)

    worse = build_tiny_causal_lm(tmp_path / "random", seed=7)
    bad = promote(reg, worse, settings, kb, dialogues, progress=False, eval_fn=evaluate)
    assert not bad.promoted and bad.reasons and bad.reasons[0].startswith("rougeL would drop")
    assert bad.serving_metrics["rougeL"] == pytest.approx(good.candidate_metrics["rougeL"])
    assert current_model(settings.data_dir) == served
