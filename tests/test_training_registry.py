"""Model registry (atomic CURRENT pointer), the promotion gate, and live model switching."""
from __future__ import annotations

import json
import threading

import pytest

from bot.core.errors import NotFound, SupportbotError
from training.model_card import read_card, write_card
from training.promotion import compare, promote
from bot.generators.following import FollowingGenerator, current_model
from training.registry import ModelRegistry


def _model(path, name="m"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": name}))
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "big.bin").write_bytes(b"x" * 10)
    write_card(path, {"name": name, "metrics": {}})
    return path


class ScriptedEval:
    """Stands in for bot.evaluate.run_eval: fixed metrics per model, and records the calls."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, settings, kb, dialogues, model=None, limit=None, progress=True, components=None,
                 backend=None):
        assert backend == ("hf" if model else None)
        self.calls.append((model, str(kb), str(dialogues), limit))
        key = model.rsplit("/", 1)[-1] if model else None
        return {"n": 10, "bleu": 0.1, **self.table[key]}


def test_pointer_versions_install_and_history(tmp_path):
    reg = ModelRegistry(tmp_path / "var")
    assert current_model(tmp_path / "var") is None
    a = _model(tmp_path / "train" / "ft-a")
    v1 = reg.set_current(a)
    path, version = current_model(tmp_path / "var")
    assert version == v1 == 1 and path == (tmp_path / "var" / "models" / "ft-a").resolve()
    assert (path / "config.json").is_file() and not (path / "checkpoints").exists()  # copied, lean
    b = _model(tmp_path / "train" / "ft-b")
    assert reg.set_current(b) == 2
    assert current_model(tmp_path / "var")[0].name == "ft-b"
    assert [h["path"] for h in reg.history()] == ["ft-a", "ft-b"] and reg.record()["previous"] == "ft-a"
    assert reg.resolve("ft-a") == (tmp_path / "var" / "models" / "ft-a").resolve()
    with pytest.raises(NotFound, match="not a model folder"):
        reg.resolve(tmp_path / "nowhere")


def test_concurrent_promotions_get_distinct_versions(tmp_path):
    reg = ModelRegistry(tmp_path / "var")
    folders = [_model(tmp_path / "train" / f"ft-{i}") for i in range(6)]
    versions: list[int] = []
    threads = [threading.Thread(target=lambda f=f: versions.append(reg.set_current(f))) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert reg.record()["version"] == 6 and len(reg.history()) == 6


def test_gate_refuses_a_worse_model_and_keeps_serving(settings, tmp_path):
    reg = ModelRegistry(settings.data_dir)
    good = _model(tmp_path / "train" / "good")
    worse = _model(tmp_path / "train" / "worse")
    evals = ScriptedEval({
        None: {"rougeL": 0.17, "selection_f1": 0.60},  # the configured (untuned) generator
        "good": {"rougeL": 0.28, "selection_f1": 0.60},
        "worse": {"rougeL": 0.29, "selection_f1": 0.55},
    })
    kb, dialogues = tmp_path / "kb.jsonl", tmp_path / "dev.jsonl"

    first = promote(reg, good, settings, kb, dialogues, limit=50, eval_fn=evals, progress=False)
    assert first.promoted and first.version == 1 and not first.reasons
    # Both models were evaluated on the same dialogues, knowledge base and limit.
    assert {c[1:] for c in evals.calls} == {(str(kb), str(dialogues), 50)}
    served = current_model(settings.data_dir)[0]
    assert read_card(served)["evaluation"]["candidate"]["rougeL"] == 0.28

    second = promote(reg, worse, settings, kb, dialogues, eval_fn=evals, progress=False)
    assert not second.promoted and second.version is None
    assert second.reasons == ["selection_f1 would drop from 0.6000 to 0.5500"]
    assert evals.calls[-1][0] == str(served)  # compared against the model being served
    assert current_model(settings.data_dir) == (served, 1)

    forced = promote(reg, worse, settings, kb, dialogues, force=True, eval_fn=evals, progress=False)
    assert forced.promoted and forced.version == 2
    assert reg.record()["evaluation"]["refusal_overridden"] == second.reasons


def test_gate_needs_evaluation_data_unless_forced(settings, tmp_path):
    reg = ModelRegistry(settings.data_dir)
    m = _model(tmp_path / "m")
    with pytest.raises(SupportbotError, match="--kb and --dialogues"):
        promote(reg, m, settings, None, None)
    assert promote(reg, m, settings, None, None, force=True).version == 1
    with pytest.raises(SupportbotError, match="already the serving model"):
        promote(reg, "m", settings, None, None, force=True)


def test_compare_tolerance_and_missing_metric():
    assert compare({"rougeL": 0.30, "selection_f1": 0.5}, {"rougeL": 0.30, "selection_f1": 0.5}) == []
    assert compare({"rougeL": 0.295, "selection_f1": 0.5}, {"rougeL": 0.30, "selection_f1": 0.5}, 0.01) == []
    assert len(compare({"rougeL": 0.2, "selection_f1": 0.4}, {"rougeL": 0.3, "selection_f1": 0.5})) == 2
    with pytest.raises(SupportbotError, match="'selection_f1'"):
        compare({"rougeL": 0.3}, {"rougeL": 0.3, "selection_f1": 0.5})


class Scripted:
    """A scripted generator: streams the name of the model it was built for."""

    def __init__(self, path):
        self.model_id = path.name if path else "configured"
        self.last_usage = {"model": self.model_id}

    def stream(self, messages, **params):
        yield from (self.model_id, "!")

    def count_tokens(self, text):
        return len(text.split())


def test_following_generator_switches_without_restart(tmp_path):
    data_dir = tmp_path / "var"
    built = []

    def build(path):
        if path is not None and path.name == "broken":
            raise RuntimeError("corrupt weights")
        built.append(path.name if path else None)
        return Scripted(path)

    gen = FollowingGenerator(build, data_dir, poll_interval_s=0.0)
    assert "".join(gen.stream([])) == "configured!" and gen.version is None
    reg = ModelRegistry(data_dir)
    reg.set_current(_model(tmp_path / "ft-1"))
    running = gen.stream([])  # a stream started before the switch ...
    assert next(running) == "ft-1"
    reg.set_current(_model(tmp_path / "ft-2"))
    assert list(running) == ["!"]  # ... finishes on its model
    assert "".join(gen.stream([])) == "ft-2!" and gen.version == 2 and gen.model_id == "ft-2"
    assert gen.last_usage == {"model": "ft-2"} and gen.count_tokens("a b") == 2
    reg.set_current(_model(tmp_path / "broken"))
    assert "".join(gen.stream([])) == "ft-2!"  # a model that fails to load is not swapped in
    assert built == [None, "ft-1", "ft-2"]


def test_following_generator_polls_at_most_every_interval(tmp_path, monkeypatch):
    import bot.generators.following as following

    calls = []
    real = following.current_model
    monkeypatch.setattr(following, "current_model", lambda d: calls.append(1) or real(d))
    gen = FollowingGenerator(Scripted, tmp_path, poll_interval_s=3600)
    for _ in range(5):
        "".join(gen.stream([]))
    assert len(calls) == 1


def test_following_generator_on_the_hf_backend(tiny_lm_dir, settings, tmp_path):
    from tiny_models import build_tiny_causal_lm

    from bot.generators.following import following_generator

    gs = settings.generator.model_copy(update={"model": str(tiny_lm_dir), "device": "cpu",
                                               "dtype": "float32", "max_new_tokens": 6})
    gen = following_generator(gs, settings.data_dir, poll_interval_s=0)
    messages = [{"role": "user", "content": "Is parking free?"}]
    assert "".join(gen.stream(messages)) and gen.model_id == str(tiny_lm_dir)
    other = build_tiny_causal_lm(tmp_path / "other", seed=1)
    ModelRegistry(settings.data_dir).set_current(other)
    stream = gen.stream(messages)
    assert "".join(stream) and stream.usage["completion_tokens"] > 0  # the backend's own stream
    assert gen.version == 1 and gen.model_id == str((settings.data_dir / "models" / "other").resolve())
