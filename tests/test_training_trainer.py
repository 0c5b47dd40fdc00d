"""The trainer and the fine-tune pipeline on the tiny real model: learning, resume, early stop, export."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from bot.prompting import build_messages
from bot.core.settings import TrainingSettings
from training.finetune import finetune, load_model
from training.sft_dataset import Collator, SFTData, SFTExample, write_dataset
from training.trainer import TrainConfig, Trainer

QA = [
    ("How long do refunds take?", "Refunds take five to seven business days."),
    ("Is shipping free?", "Shipping is free for orders over 50 dollars."),
    ("Can I cancel my subscription?", "You can cancel a subscription at any time from the Billing page."),
    ("Is there free parking?", "Yes, parking is free for guests."),
    ("When is the restaurant open?", "The restaurant is open from noon to ten in the evening."),
    ("How fast is email support?", "Our support team answers email within one business day."),
]


def _examples(n: int) -> list[SFTExample]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        msgs = build_messages(q, [], [], "Be brief.")
        out.append(SFTExample(f"c{i}", 1, msgs, a))
    return out


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.losses: dict[int, float] = {}
        self.evals: dict[int, float] = {}
        self.stop_at = stop_at

    def on_step(self, trainer, step, loss):
        self.losses[step] = loss
        if step == self.stop_at:
            raise KeyboardInterrupt("simulated interruption")

    def on_eval(self, trainer, step, dev_loss):
        self.evals[step] = dev_loss


def _trainer(tiny_lm_dir, out, method="full", n=6, callbacks=(), **cfg):
    torch.manual_seed(0)  # LoRA's random A matrices: same start in every run
    model, tok = load_model(str(tiny_lm_dir), TrainingSettings(lora_dropout=0.1), method)
    data = SFTData(_examples(n), tok, 256)
    config = TrainConfig(**{"log_every": 1, "eval_every": 100, "warmup_ratio": 0.0, **cfg})
    return Trainer(model, data, data, Collator(tok.pad_token_id), config, out, callbacks), model


def test_loss_decreases_on_a_fixed_batch(tiny_lm_dir, tmp_path):
    rec = Recorder()
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, n=4, callbacks=[rec], batch_size=4, lr=1e-2, max_steps=8)
    metrics = trainer.fit()
    losses = [rec.losses[s] for s in sorted(rec.losses)]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    assert metrics["dev_loss_last"] < metrics["dev_loss_before"]
    assert metrics["train_tokens"] > 0 and metrics["train_tokens_per_s"] > 0
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*")), "no TensorBoard log written"


def test_lora_trains_only_the_adapters(tiny_lm_dir, tmp_path):
    trainer, model = _trainer(tiny_lm_dir, tmp_path, method="lora", batch_size=6, lr=1e-2, max_steps=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_resume_after_interruption_gives_the_same_model(tiny_lm_dir, tmp_path):
    # 10 examples, micro-batch 2, accumulation 2: 3 optimizer steps per epoch (the last one short).
    cfg = dict(method="lora", n=10, batch_size=2, grad_accum=2, lr=5e-3, max_steps=7,
               checkpoint_every=2, warmup_ratio=0.3)
    straight, model_a = _trainer(tiny_lm_dir, tmp_path / "a", **cfg)
    straight.fit()

    crash = Recorder(stop_at=5)
    first, _ = _trainer(tiny_lm_dir, tmp_path / "b", callbacks=[crash], **cfg)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-2", "step-4"]

    after = Recorder()
    second, model_b = _trainer(tiny_lm_dir, tmp_path / "b", callbacks=[after], **cfg)
    metrics = second.fit(resume=True)
    assert min(after.losses) == 5 and metrics["steps"] == 7  # continued after step 4
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_early_stopping_when_dev_loss_stops_improving(tiny_lm_dir, tmp_path):
    rec = Recorder()
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, callbacks=[rec], batch_size=2, lr=0.0,
                          max_steps=20, eval_every=1, patience=2)
    metrics = trainer.fit()
    assert metrics["early_stopped"] and metrics["steps"] == 2
    assert sorted(rec.evals) == [0, 1, 2]


class Signaller(Recorder):
    """Sends this process ``signals`` at step ``at``, as Ctrl-C or a job scheduler's SIGTERM would."""

    def __init__(self, at: int, signals):
        super().__init__()
        self.at, self.signals = at, list(signals)

    def on_step(self, trainer, step, loss):
        super().on_step(trainer, step, loss)
        if step == self.at:
            for sig in self.signals:
                os.kill(os.getpid(), sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_and_keeps_the_work(tiny_lm_dir, tmp_path, sig):
    before = signal.getsignal(sig)
    rec = Signaller(at=3, signals=[sig])
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, callbacks=[rec], method="lora", batch_size=2, lr=5e-3,
                          max_steps=20, eval_every=100)
    metrics = trainer.fit()
    assert metrics["steps"] == 3 and metrics["stopped_by"] == sig.name and metrics["early_stopped"]
    assert sorted(rec.losses) == [1, 2, 3]
    assert sorted(rec.evals) == [0, 3]  # the stopped weights are still evaluated
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]
    assert signal.getsignal(sig) is before  # the handlers are put back


def test_a_second_ctrl_c_interrupts_at_once(tiny_lm_dir, tmp_path):
    rec = Signaller(at=2, signals=[signal.SIGINT, signal.SIGINT])
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, callbacks=[rec], batch_size=2, max_steps=20, eval_every=100)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert sorted(rec.losses) == [1, 2]
    assert not (tmp_path / "checkpoints").exists()  # aborted: nothing saved since the start


def test_finetune_exports_a_loadable_model_with_a_card(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples = _examples(12)
    stats = write_dataset(tmp_path / "ds", examples[:10], examples[10:],
                          {"sources": "none", "pii": {"EMAIL": 3}})
    out = tmp_path / "ft"
    # float32: the reloaded model's loss below is compared with the trainer's dev loss.
    settings = TrainingSettings(batch_size=4, lr=5e-3, eval_every=2, patience=0, max_length=256,
                                mixed_precision="no")
    card = finetune(tmp_path / "ds", str(tiny_lm_dir), out, settings, max_steps=6, log_every=1)

    assert card["method"] == "lora" and card["merged"]
    assert card["data"]["data_sha256"] == stats["data_sha256"]
    assert card["data"]["pii"] == {"EMAIL": 3}
    assert card["data"]["train_used"] == 10 and card["data"]["dev_used"] == card["data"]["dev_fit"] == 2
    assert card["hyperparameters"]["mixed_precision"] == "no"
    assert card["hyperparameters"]["torch_threads"] >= 1 and card["metrics"]["dev_examples"] == 2
    assert card["hyperparameters"]["lr"] == 5e-3 and card["hyperparameters"]["lora_r"] == 16
    assert card["metrics"]["dev_loss_best"] < card["metrics"]["dev_loss_before"]
    assert json.loads((out / "training_card.json").read_text()) == json.loads(json.dumps(card))
    assert "sha256" in (out / "README.md").read_text()
    assert not (out / "checkpoints").exists() and not (out / "adapter_config.json").exists()

    # Loaded back as a plain model: its dev loss is the best dev loss the trainer saw.
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    dev = SFTData(examples[10:], tok, 256)
    batch = Collator(tok.pad_token_id)(dev.items)
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert loss == pytest.approx(card["metrics"]["dev_loss_best"], rel=1e-3)

    # ... and the serving backend streams from it as it is.
    from bot.generators.hf_generator import HFGenerator

    gen = HFGenerator(out, device="cpu", dtype="float32", max_new_tokens=8)
    stream = gen.stream(examples[10].messages)
    assert "".join(stream) and stream.usage["completion_tokens"] > 0


def test_missing_dataset_is_a_clear_error(tiny_lm_dir, tmp_path):
    from bot.core.errors import SupportbotError

    with pytest.raises(SupportbotError, match="train.jsonl: not found"):
        finetune(tmp_path / "nothing", str(tiny_lm_dir), tmp_path / "out", TrainingSettings())
