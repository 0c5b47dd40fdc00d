"""The training commands end to end on tiny data: import, build-dataset, train, promote, models."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bot.cli import main

KB = [
    {"id": "hotel:1:faq:1", "title": "ALLENBELL", "text": "Is parking free?\nYes, parking is free.",
     "question": "Is parking free?", "answer": "Yes, parking is free.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
    {"id": "hotel:1:faq:2", "title": "ALLENBELL", "text": "Is WiFi free?\nYes, WiFi is free in all rooms.",
     "question": "Is WiFi free?", "answer": "Yes, WiFi is free in all rooms.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
    {"id": "rest:2:faq:1", "title": "GOLDEN WOK", "text": "Do you deliver?\nNo, the Golden Wok does not deliver.",
     "question": "Do you deliver?", "answer": "No, the Golden Wok does not deliver.",
     "metadata": {"entity_name": "GOLDEN WOK", "doc_type": "faq"}},
]


def _dialogues(n):
    rows = []
    for i in range(n):
        rows.append({"id": f"d{i}", "dialogue": f"g{i}", "target": True, "turns": [
            {"role": "user", "text": f"I need a hotel in the north for {i + 1} nights."},
            {"role": "agent", "text": "The Allenbell is in the north. Call +44 20 7946 0958."},
            {"role": "user", "text": "Is parking free at the Allenbell?" if i % 2 else "Is WiFi free there?"},
        ], "gold_doc_ids": ["hotel:1:faq:1" if i % 2 else "hotel:1:faq:2"],
            "gold_response": "Yes, parking is free." if i % 2 else "Yes, WiFi is free in all rooms."})
    return rows


@pytest.fixture
def files(tmp_path):
    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps(d) + "\n" for d in KB))
    dialogues = tmp_path / "dialogues.jsonl"
    dialogues.write_text("".join(json.dumps(d) + "\n" for d in _dialogues(10)))
    return kb, dialogues


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, ["--data-dir", str(tmp_path / "var"), *map(str, args)], catch_exceptions=False)

    return invoke


def test_import_transcripts_reports_and_scrubs(run, files, tmp_path):
    _, dialogues = files
    bad = tmp_path / "bad.csv"
    bad.write_text("conversation_id,role,text\nc1,user,hello\nc1,robot,hi\n")
    res = run("import-transcripts", dialogues, bad, "--out", tmp_path / "t.jsonl")
    assert res.exit_code == 1 and f"{bad}:2: conversation 'c1': turns[1].role 'robot'" in res.output
    assert not (tmp_path / "t.jsonl").exists()  # nothing written from invalid input

    res = run("import-transcripts", dialogues, bad, "--out", tmp_path / "t.jsonl", "--skip-invalid")
    assert res.exit_code == 0, res.output
    assert "10 conversations (20 agent turns), 0 duplicates dropped, 1 invalid; PII replaced: PHONE 10" in res.output
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows[0]["turns"][1]["text"] == "The Allenbell is in the north. Call [PHONE]."


def test_build_train_promote_end_to_end(run, files, tmp_path, tiny_lm_dir):
    kb, dialogues = files
    ds = tmp_path / "ds"
    res = run("build-dataset", dialogues, "--out", ds, "--sources", "gold", "--kb", kb,
              "--tokenizer", tiny_lm_dir, "--dev-fraction", "0.2")
    assert res.exit_code == 0, res.output
    stats = json.loads((ds / "stats.json").read_text())
    # 10 conversations: the shared first agent turn is an example in each, plus the gold reply.
    assert (stats["train_examples"], stats["dev_examples"]) == (16, 4)
    assert stats["pii"] == {"PHONE": 10} and stats["sources"] == "gold"
    gold = [json.loads(line) for line in (ds / "train.jsonl").read_text().splitlines()]
    assert any("[1] ALLENBELL" in ex["messages"][-1]["content"] for ex in gold)

    out = tmp_path / "ft"
    res = run("train", "--data", ds, "--base", tiny_lm_dir, "--out", out, "--max-steps", "3",
              "--batch-size", "4", "--eval-every", "3", "--lr", "0.005")
    assert res.exit_code == 0, res.output
    assert "3 steps, dev loss" in res.output and (out / "model.safetensors").is_file()

    res = run("promote", out, "--force")
    assert res.exit_code == 0 and "promoted" in res.output and "version 1" in res.output
    res = run("models")
    assert "* v1" in res.output and "ft" in res.output


def test_build_dataset_with_retrieved_sources(run, files, tmp_path):
    kb, dialogues = files
    res = run("build-dataset", dialogues, "--out", tmp_path / "ds", "--tokenizer", "none")
    assert res.exit_code == 1 and "supportbot ingest" in res.output  # nothing to retrieve from yet
    assert run("ingest", kb).exit_code == 0
    res = run("build-dataset", dialogues, "--out", tmp_path / "ds", "--tokenizer", "none")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "ds" / "train.jsonl").read_text().splitlines()]
    assert rows and all(r["sources"] for r in rows)  # every prompt grounded in retrieved passages
    assert all(set(r["sources"]) <= {d["id"] for d in KB} for r in rows)


@pytest.mark.parametrize("extra, ending", [
    ({"early_stopped": False}, "1.0 min"),
    ({"early_stopped": True}, "1.0 min, stopped early"),
    ({"early_stopped": True, "stopped_by": "SIGTERM"}, "1.0 min, stopped by SIGTERM after 3 of 20 steps")])
def test_the_summary_line_says_how_a_run_ended(extra, ending):
    from training.cli import _train_line

    metrics = {"dev_loss_before": 2.0, "dev_loss_best": 1.5, "steps": 3, "total_steps": 20,
               "train_tokens_per_s": 10.0, "train_seconds": 60.0, **extra}
    line = _train_line("var/ft", {"metrics": metrics})
    assert line.startswith("var/ft: 3 steps, dev loss 2.0000 -> 1.5000 (best)") and line.endswith(ending)
