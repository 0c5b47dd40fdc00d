"""The parts that make the trainer fast: length-bucketed batches, the dtype and thread choices, the
capped dev set, token-weighted accumulation, no per-log TensorBoard flush, and the speed bench's
output on the tiny model (its figures are not checked: nothing in the suite times anything)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from bot.core.settings import TrainingSettings
from bot.prompting import build_messages
from training.finetune import load_model
from training.sft_dataset import Collator, SFTData, SFTExample
from training import trainer as trainer_mod
from training.trainer import (LengthBucketSampler, TrainConfig, Trainer, dev_subset,
                              physical_cores, resolve_mixed_precision, training_threads)

ROOT = Path(__file__).resolve().parents[1]


def _lengths(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 700) for _ in range(n)]


# -- the sampler -----------------------------------------------------------------------------------
def test_every_example_once_per_epoch_and_only_the_last_batch_short():
    lengths = _lengths(1003)
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=3, pool_batches=16)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 126
        assert sorted(i for b in batches for i in b) == list(range(1003))
        assert [len(b) for b in batches[:-1]] == [8] * 125 and len(batches[-1]) == 1003 % 8


def test_batches_hold_similar_lengths():
    lengths = _lengths(2000)
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=0, pool_batches=64)

    def padding(batches):
        real = sum(lengths[i] for b in batches for i in b)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    bucketed = list(sampler)
    perm = list(range(2000))
    random.Random(0).shuffle(perm)
    shuffled = [perm[i:i + 8] for i in range(0, 2000, 8)]
    assert padding(bucketed) < 0.02 < 0.3 < padding(shuffled)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bucketed]
    assert max(spread) < 60  # lengths spread over 20..700: random batches span hundreds


def test_order_is_fixed_by_seed_and_epoch_and_shuffled_by_bucket():
    lengths = _lengths(400)
    a = LengthBucketSampler(lengths, 4, seed=7)
    b = LengthBucketSampler(lengths, 4, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    first = list(LengthBucketSampler(lengths, 4, seed=7))
    assert list(a) != first  # another epoch, another order
    assert list(LengthBucketSampler(lengths, 4, seed=8)) != first
    # Batch order is shuffled, not sorted by length.
    means = [sum(lengths[i] for i in bt) / len(bt) for bt in first]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_unshuffled_batches_are_sorted_by_length():
    lengths = _lengths(50)
    batches = list(LengthBucketSampler(lengths, 8, shuffle=False))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(50))
    assert [lengths[i] for i in flat] == sorted(lengths)


# -- dtype and threads -------------------------------------------------------------------------------
@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (True, True, "bf16"), (True, False, "bf16"), (False, True, "bf16"), (False, False, "no"),
])
def test_auto_precision_on_a_cpu_follows_its_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_mixed_precision("auto", "cpu") == expected
    assert resolve_mixed_precision("no", "cpu") == "no"
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"


def test_auto_precision_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_mixed_precision("auto", "cuda") == "no"
    assert resolve_mixed_precision("auto", "mps") == "no"


def test_thread_count(monkeypatch):
    assert physical_cores() >= 1
    assert training_threads(3) == 3
    monkeypatch.setattr(trainer_mod, "physical_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert training_threads(0) == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert training_threads(0) == 8


# -- on the tiny model -------------------------------------------------------------------------------
def _examples(n: int, seed: int = 0) -> list[SFTExample]:
    rng = random.Random(seed)
    words = "refund parcel hotel room parking order invoice card wifi breakfast".split()
    out = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) + "?"
        a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 20))) + "."
        out.append(SFTExample(f"c{i}", 1, build_messages(q, [], [], "Be brief."), a))
    return out


def _trainer(tiny_lm_dir, out, n_train=8, n_dev=0, method="full", **cfg):
    torch.manual_seed(0)
    model, tok = load_model(str(tiny_lm_dir), TrainingSettings(), method)
    train = SFTData(_examples(n_train), tok, 256)
    dev = SFTData(_examples(n_dev, seed=1), tok, 256) if n_dev else None
    config = TrainConfig(**{"log_every": 1, "eval_every": 100, "warmup_ratio": 0.0, **cfg})
    return Trainer(model, train, dev, Collator(tok.pad_token_id), config, out), model


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "no")])
def test_the_trainer_uses_the_detected_dtype(tiny_lm_dir, tmp_path, monkeypatch, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native_bf16)
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, batch_size=4, max_steps=1, threads=1)
    assert trainer.mixed_precision == expected
    assert torch.get_num_threads() == 1
    trainer.fit()
    trainer.close()


def test_dev_loss_on_a_capped_fixed_sample(tiny_lm_dir, tmp_path):
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, n_dev=10, batch_size=4, max_steps=2,
                          max_dev_examples=3, lr=1e-2)
    metrics = trainer.fit()
    assert trainer.dev_available == 10 and trainer.dev_size == metrics["dev_examples"] == 3
    assert sum(len(b["input_ids"]) for b in trainer.dev_loader) == 3
    data = list(range(10))
    assert list(dev_subset(data, 3, seed=0)) == list(dev_subset(data, 3, seed=0))
    assert dev_subset(data, 0, seed=0) is data and dev_subset(data, 20, seed=0) is data
    assert metrics["dev_loss_last"] < metrics["dev_loss_before"]


def test_a_training_step_reduces_the_loss(tiny_lm_dir, tmp_path):
    # The default precision for this machine (bf16 autocast where the CPU has native bf16).
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, n_train=4, n_dev=0, batch_size=4, lr=1e-2, max_steps=1)
    batch = {k: v.to(trainer.accelerator.device) for k, v in next(iter(trainer.train_loader)).items()}
    with torch.no_grad():
        before = trainer.model(**batch).loss.item()
    trainer.fit()
    with torch.no_grad():
        after = trainer.model(**batch).loss.item()
    assert after < before


def _first_step_grads(trainer) -> dict[str, torch.Tensor]:
    grads = {}
    step = trainer.optimizer.step

    def record(*a, **k):
        if not grads:
            for name, p in trainer.model.named_parameters():
                if p.grad is not None:
                    grads[name] = p.grad.detach().clone()
        return step(*a, **k)

    trainer.optimizer.step = record
    trainer.fit()
    return grads


def test_accumulation_weights_micro_batches_by_their_label_tokens(tiny_lm_dir, tmp_path):
    # Two examples of different lengths: one batch of 2, or 2 micro-batches of 1 accumulated.
    common = dict(n_train=2, max_steps=1, mixed_precision="no", max_grad_norm=0.0)
    whole, _ = _trainer(tiny_lm_dir, tmp_path / "a", batch_size=2, grad_accum=1, **common)
    lengths = whole.sampler.lengths
    assert lengths[0] != lengths[1]
    split, _ = _trainer(tiny_lm_dir, tmp_path / "b", batch_size=1, grad_accum=2, **common)
    ga, gb = _first_step_grads(whole), _first_step_grads(split)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6), name


def test_no_tensorboard_flush_per_log_line(tiny_lm_dir, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    calls = []
    flush = SummaryWriter.flush
    monkeypatch.setattr(SummaryWriter, "flush", lambda self: (calls.append(1), flush(self))[1])
    trainer, _ = _trainer(tiny_lm_dir, tmp_path, batch_size=2, max_steps=8, log_every=1,
                          checkpoint_every=100)
    trainer.fit()
    assert len(calls) <= 3  # configuration, the final checkpoint, closing; not one per step
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


# -- the bench ---------------------------------------------------------------------------------------
def test_the_speed_bench_reports_both_loops_on_the_tiny_model(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import train_speed
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "speed.json"
    result = train_speed.main(["--tiny", "--steps", "2", "--warmup", "1", "--rounds", "2",
                               "--batch-size", "2", "--grad-accum", "2", "--json", str(out)])
    for key in ("trainer_tok_s", "plain_loop_tok_s", "ratio", "cpu", "features", "dtype", "batch", "seq_len"):
        assert key in result, key
    assert result["trainer_tok_s"] > 0 and result["plain_loop_tok_s"] > 0 and result["ratio"] > 0
    assert result["dtype"] in ("bfloat16", "float32") and result["batch"] == 2
    # 2 rounds of 1 timed step of 2 accumulated batches: 4 micro-batches' tokens timed
    assert result["grad_accum"] == 2 and result["steps"] == 2
    assert result["timed_tokens"] == pytest.approx(4 * result["mean_tokens_per_batch"], abs=0.2)
    assert [r["order"] for r in result["rounds"]] == [["plain", "trainer"], ["trainer", "plain"]]
    assert out.is_file()
