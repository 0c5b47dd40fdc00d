"""Approved fixes as regression cases (``supportbot fixes export``, ``supportbot eval
--regressions``, the promotion gate) and as training examples (``supportbot build-dataset``),
with tiny real models and the hashing embedder."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from bot.cli import main
from bot.core.store.models import Conversation
from web_fixtures import SAMPLE_FAQ

GIFT_Q, GIFT_A = "Do you offer gift wrapping?", "Gift wrap costs $4."


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__BACKEND", "extractive")
    monkeypatch.setenv("SUPPORTBOT_INDEX__RELOAD_INTERVAL_S", "0")
    data_dir = tmp_path / "var"
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["--data-dir", str(data_dir), *map(str, args)], catch_exceptions=False)

    return data_dir, run


def components_of(data_dir, **generator):
    from bot.components import Components
    from bot.core.settings import load_settings

    settings = load_settings(data_dir=data_dir)
    settings.generator = settings.generator.model_copy(update=generator)
    return settings, Components(settings)


def publish_fix(comps, question=GIFT_Q, answer=GIFT_A) -> dict:
    from bot.fixes import Fixes

    return Fixes(comps.db, comps.knowledge, comps.embedder).write("default", question, answer, created_by="alice")


def test_regressions_are_exported_and_run_by_eval(env, tmp_path):
    data_dir, run = env
    assert run("ingest", SAMPLE_FAQ).exit_code == 0
    _, comps = components_of(data_dir)
    fix = publish_fix(comps)
    comps.db.dispose()

    out = tmp_path / "regressions.jsonl"
    res = run("fixes", "export", "--regressions", out)
    assert res.exit_code == 0 and "1 regression cases" in res.output
    [case] = [json.loads(line) for line in out.read_text().splitlines()]
    assert case == {"id": f"fix-{fix['id']}", "fix_id": fix["id"], "question": GIFT_Q,
                    "expected_answer": GIFT_A, "expected_decision": "answer"}

    res = run("eval", "--regressions")
    assert res.exit_code == 0, res.output
    assert "regressions (approved fixes of bot 'default'): 1 of 1 answered right" in res.output
    # A case the bot gets wrong is counted wrong, and shown.
    out.write_text(json.dumps({**case, "expected_answer": "Gift wrap is free for orders over $50."}) + "\n")
    res = run("eval", "--regressions-file", out, "--out", tmp_path / "report.json")
    assert "0 of 1 answered right" in res.output and "wrong: fix-1" in res.output
    assert json.loads((tmp_path / "report.json").read_text())["regressions"][0]["right"] is False
    assert run("eval").exit_code != 0  # nothing to evaluate: a clear error


def test_holds_answer_needs_the_answers_words_and_numbers():
    from bot.evaluate import holds_answer

    assert holds_answer("Gift wrap costs $4. [1]", GIFT_A)[0]
    assert holds_answer("Yes: gift wrap costs $4 per item at checkout.", GIFT_A)[0]
    assert not holds_answer("Gift wrap costs $5.", GIFT_A)[0]  # a wrong number
    assert not holds_answer("We ship to Canada in 5 to 8 days.", GIFT_A)[0]
    assert not holds_answer("", GIFT_A)[0]


def test_the_training_export_includes_fixes_and_never_emails(env, tmp_path):
    data_dir, run = env
    _, comps = components_of(data_dir)
    cid = comps.conversations.create(comps.db.bot_id("default"), "visitor-7")
    comps.conversations.add_message(cid, "user", "Can you gift wrap? Reply to jo@example.com")
    with comps.db.session() as s:
        s.execute(update(Conversation).where(Conversation.id == cid).values(visitor_email="visitor7@example.org"))
    publish_fix(comps, "Can you gift wrap? Reply to jo@example.com", GIFT_A)
    comps.db.dispose()

    res = run("build-dataset", "--out", tmp_path / "ds", "--sources", "none", "--tokenizer", "none")
    assert res.exit_code == 0, res.output
    assert "1 approved fixes added to the train split" in res.output
    train = (tmp_path / "ds" / "train.jsonl").read_text()
    [example] = [json.loads(line) for line in train.splitlines()]
    assert example["reply"] == GIFT_A and example["conversation"] == "fix-1"
    assert example["messages"][-1]["content"].endswith("Can you gift wrap? Reply to [EMAIL]")
    assert "jo@example.com" not in train and "visitor7@example.org" not in train
    assert json.loads((tmp_path / "ds" / "stats.json").read_text())["fixes"] == 1
    res = run("build-dataset", "--out", tmp_path / "ds2", "--sources", "none", "--tokenizer", "none", "--no-fixes")
    assert res.exit_code != 0 and "give transcript files" in res.output


def test_the_gate_refuses_a_candidate_that_gets_fewer_fixes_right(env, tmp_path, tiny_lm_dir):
    """Trained on the fix (the build-dataset export), a tiny model answers it and is promoted
    over the untuned one; a random model, which does not, is then refused."""
    from tiny_models import build_tiny_causal_lm

    from bot.evaluate import run_regressions
    from bot.fixes import Fixes
    from bot.generators.following import current_model
    from training.finetune import finetune
    from training.promotion import promote
    from training.registry import ModelRegistry

    data_dir, run = env
    gen = dict(backend="hf", model=str(tiny_lm_dir), device="cpu", max_new_tokens=16)
    settings, comps = components_of(data_dir, **gen)
    settings.dialogue = settings.dialogue.model_copy(update={"answer_threshold": 0.0, "clarify_threshold": 0.0,
                                                             "max_sources": 1})
    comps.knowledge.ingest("default", [SAMPLE_FAQ])
    publish_fix(comps)
    cases = Fixes(comps.db).regression_cases("default")

    res = run("build-dataset", "--out", tmp_path / "ds", "--tokenizer", "none")  # sources retrieved
    assert res.exit_code == 0 and "1 approved fixes" in res.output, res.output
    tuned = tmp_path / "tuned"
    ts = settings.training.model_copy(update={"method": "full", "patience": 0})
    finetune(tmp_path / "ds", str(tiny_lm_dir), tuned, ts, max_steps=40, batch_size=1, lr=1e-2,
             eval_every=40, warmup_ratio=0.0)

    def regressions(gated, cases, model=None, backend=None, progress=False):
        return run_regressions(gated, cases, comps, "default", model=model, backend=backend)

    reg = ModelRegistry(settings.data_dir)
    good = promote(reg, tuned, settings, None, None, progress=False, regressions=cases, regression_fn=regressions)
    assert good.promoted, good
    assert (good.candidate_metrics["regressions_right"], good.serving_metrics["regressions_right"]) == (1, 0)
    served = current_model(settings.data_dir)

    worse = build_tiny_causal_lm(tmp_path / "random", seed=7)
    bad = promote(reg, worse, settings, None, None, progress=False, regressions=cases, regression_fn=regressions)
    assert not bad.promoted
    assert bad.reasons == ["regressions: 0 of 1 fixes answered right, fewer than the serving model's 1"]
    assert current_model(settings.data_dir) == served
