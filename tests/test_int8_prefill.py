"""Int8 prefill (bot/generators/int8_prefill.py) on a real tiny Llama-family model."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from bot.core.errors import GeneratorError
from bot.generators import int8_prefill
from bot.generators.fast_llama import FastLlama
from bot.generators.hf_generator import HFGenerator
from bot.generators.int8_prefill import Int8Prefill, causal_attention, outlier_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

needs_int8 = pytest.mark.skipif(not int8_prefill.available(), reason="no oneDNN quantized engine (non-x86 CPU)")

CALIBRATION = [{"role": "system", "content": "Answer from the sources."},
               {"role": "user", "content": "Sources:\n[1] Shipping: orders ship in 2 days.\n[2] Returns: "
                                           "30 days, full refund.\n\nQuestion: can I return shoes?"}]
PROMPT = [{"role": "system", "content": "Answer from the sources, cite them."},
          {"role": "user", "content": "Sources:\n[1] Parking: the garage is free for guests.\n[2] Pets: "
                                      "dogs welcome, 15 EUR a night.\n\nQuestion: is parking free? Ça coûte combien?"}]


@pytest.fixture(scope="module")
def gen(tiny_lm_dir) -> HFGenerator:
    return HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", prefill="model").load()


@pytest.fixture(scope="module")
def int8(gen) -> Int8Prefill:
    runner = FastLlama(gen.model, decode_dtype=None, prefix_cache=False)
    return Int8Prefill.calibrate(runner, [gen.prompt_ids(CALIBRATION)])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("start,t,chunks", [(0, 64, 1), (0, 64, 2), (0, 63, 3), (21, 40, 1), (21, 40, 2)])
def test_causal_attention_in_query_blocks_equals_masked_attention(start, t, chunks):
    torch.manual_seed(0)
    q = torch.randn(1, 6, t, 16)
    k, v = torch.randn(1, 2, start + t, 16), torch.randn(1, 2, start + t, 16)  # grouped-query heads
    mask = torch.arange(start, start + t)[:, None] >= torch.arange(start + t)[None, :]
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
    got = causal_attention(q, k, v, start, 0.25, chunks)
    assert got.shape == reference.shape
    assert torch.allclose(got, reference, atol=1e-5)


def test_outlier_rows_are_the_tokens_far_above_the_median():
    torch.manual_seed(0)
    x = torch.randn(40, 32)
    x[0, 5] = 3000.0  # an attention-sink token
    x[17, 2] = -250.0
    assert outlier_rows(x, 4.0).tolist() == [0, 17]
    assert outlier_rows(torch.randn(40, 32), 4.0).numel() == 0


@needs_int8
def test_int8_prefill_is_close_to_the_float32_prefill_and_fills_the_cache(gen, int8):
    exact = FastLlama(gen.model, decode_dtype=None, prefix_cache=False)
    ids = torch.tensor(gen.prompt_ids(PROMPT))
    assert len(ids) >= int8.min_tokens
    qc, ec = exact.new_cache(len(ids) + 1), exact.new_cache(len(ids) + 1)
    got, want = int8.run(ids, qc), exact.forward(ids, ec)
    assert qc.length == ec.length == len(ids)
    # Rounded, not the same arithmetic, but close: a random 64-wide model has none of the
    # structure a trained one has, so ~8% here (the default model: same argmax at ~94% of positions).
    assert 0 < relative_error(got, want) < 0.15
    n = len(ids)
    assert relative_error(qc.k[:, :, :n], ec.k[:, :, :n]) < 0.15
    assert relative_error(qc.v[:, :, :n], ec.v[:, :, :n]) < 0.15
    assert set(got.topk(5).indices.tolist()) & set(want.topk(5).indices.tolist())
    # A decode step on the int8-filled cache stays close to the exact one.
    step = ids[-1:]
    assert relative_error(exact.forward(step, qc), exact.forward(step, ec)) < 0.15


@needs_int8
def test_int8_prefill_continues_after_a_cached_prefix(gen, int8):
    exact = FastLlama(gen.model, decode_dtype=None, prefix_cache=False)
    ids = torch.tensor(gen.prompt_ids(PROMPT))
    cut = 9
    qc, ec = exact.new_cache(len(ids)), exact.new_cache(len(ids))
    exact.forward(ids[:cut], qc)  # the prefix, as the prefix cache would have it
    got = int8.run(ids[cut:], qc)  # then the rest in int8: keys before it seen in full
    want = exact.forward(ids, ec)
    assert qc.length == len(ids)
    assert relative_error(got, want) < 0.15
    assert torch.allclose(qc.k[:, :, :cut], ec.k[:, :, :cut], atol=1e-5)  # the prefix as it was


@needs_int8
def test_runner_takes_the_int8_path_for_long_chunks_only(gen, int8):
    runner = FastLlama(gen.model, decode_dtype=None, prefix_cache=False)
    exact = FastLlama(gen.model, decode_dtype=None, prefix_cache=False)
    runner.int8 = int8
    ids = torch.tensor(gen.prompt_ids(PROMPT))
    short = ids[: int8.min_tokens - 1]
    assert torch.equal(runner.forward(short, runner.new_cache(len(short))), exact.forward(short, exact.new_cache(len(short))))
    long_ = ids[: int8.min_tokens + 4]
    got = runner.forward(long_, runner.new_cache(len(long_)))
    assert torch.equal(got, int8.run(long_, exact.new_cache(len(long_))))
    assert not torch.equal(got, exact.forward(long_, exact.new_cache(len(long_))))


@needs_int8
def test_smoothing_is_folded_into_the_norms_and_up_rows(gen, int8):
    # The product is unchanged before rounding: norm weight x s_qkv recovers the model's norm.
    layer, q8 = int8.runner.layers[0], int8.layers[0]
    with torch.inference_mode():
        s = layer.input_layernorm.weight / q8.norm1
        assert torch.all(s > 0) and not torch.allclose(s, torch.ones_like(s))
        weight = q8.qkv.unpack()[0].dequantize()  # [q; k; v] x s per column, per-row int8
        w_qkv = torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
                           layer.self_attn.v_proj.weight])
        assert relative_error(weight / s, w_qkv) < 0.02
        # down's smoothing: divided out of the up rows, multiplied into down's columns.
        m = layer.mlp
        gate_up = q8.gate_up.unpack()[0].dequantize()
        n = m.up_proj.weight.shape[0]
        s_gu = layer.post_attention_layernorm.weight / q8.norm2
        assert relative_error(gate_up[n:] / s_gu * q8.down_scale[:, None], m.up_proj.weight) < 0.02
        assert relative_error(q8.down.unpack()[0].dequantize() / q8.down_scale, m.down_proj.weight) < 0.02


@needs_int8
def test_the_generator_setting(tiny_lm_dir):
    shipped = HFGenerator(tiny_lm_dir, device="cpu", dtype="float32").load()
    assert isinstance(shipped.runner.int8, Int8Prefill)  # CPU float32 default: int8 prefill
    reply = "".join(shipped.stream(PROMPT, max_new_tokens=6, ignore_eos=True))
    assert reply and shipped.last_usage["completion_tokens"] == 6
    assert HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", prefill="model").load().runner.int8 is None
    # decode_dtype = "model" asks for exact steps: auto leaves the prefill exact too.
    assert HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", decode_dtype="model").load().runner.int8 is None
    forced = HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", decode_dtype="model", prefill="int8").load()
    assert forced.runner.int8 is not None
    with pytest.raises(GeneratorError, match="prefill='int8' needs a float32"):
        HFGenerator(tiny_lm_dir, device="cpu", dtype="bfloat16", prefill="int8").load()
    with pytest.raises(GeneratorError, match="use auto, model or int8"):
        HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", prefill="fp8").load()


@needs_int8
def test_the_last_layer_runs_for_the_last_position_only(gen, int8):
    ids = torch.tensor(gen.prompt_ids(PROMPT))
    runner = int8.runner
    full_cache, last_cache = runner.new_cache(len(ids)), runner.new_cache(len(ids))
    full = int8.hidden(ids, full_cache)  # every position through every layer
    last = int8.hidden(ids, last_cache, last_only=True)
    assert full.shape == (len(ids), full.shape[-1]) and last.shape == (1, full.shape[-1])
    assert full_cache.length == last_cache.length == len(ids)
    assert torch.equal(full_cache.k, last_cache.k) and torch.equal(full_cache.v, last_cache.v)
    # The last layer's last row in the model's dtype instead of int8: close, not equal.
    assert 0 < relative_error(last[0], full[-1]) < 0.1
