"""The prompt's prefill in 8-bit integer matrix products, for the lean Llama forward on x86 CPUs.

A grounded prompt of 512 tokens is a real matrix product per projection, compute-bound: in
float32 on 2 AVX2 cores the GEMMs run near the CPUs' peak and the prefill is most of the time to
first token. The same products in int8 (oneDNN's u8 x s8 kernels through PyTorch's dynamic
quantized linear: activations quantized per call, weights per output channel) run markedly
faster per projection (``bench/generate.py``; figures in the README). What it takes to
keep the model's quality:

* **SmoothQuant** (Xiao et al., 2023): a few input channels of q/k/v and gate/up carry values far
  larger than the rest, and one scale per call for all of them would flatten the others. Each
  input channel ``j`` is divided by ``s_j = amax_j ** alpha / wmax_j ** (1 - alpha)`` and the
  weight's column multiplied by it, which leaves the product unchanged; the division is folded
  into the RMSNorm weight before it (q/k/v, gate/up) or into the ``up`` rows (down's input is
  ``silu(gate) * up``), so it costs nothing at run time. ``amax`` comes from one float32
  calibration prefill at load (``calibrate``).
* **Outlier tokens in float32**: the first token of a prompt (the attention sink) reaches ~3,000
  at down_proj's input in some layers of SmolLM2, against a median row peak of ~1. Rows of down's
  input whose largest value exceeds ``outlier`` (4) times the median row's go through the model's
  float32 weight instead (a few rows), the rest through int8.
* o_proj's input is not smoothed (its channels are even; smoothing it measured no better).
* Causal attention in two query blocks (``causal_attention``): PyTorch's CPU flash kernel takes up
  to 512 keys in one block and so also computes the masked half of the causal square.
* The last layer computes keys/values for every position, and the rest only for the last one (in
  the model's dtype): no other position's output is used.

The keys/values the prefill writes to the cache, and every decode step after it, are unchanged
in kind (float32 cache; float16 decode weights by default). Only prefills of at least
``min_tokens`` tokens go through here (a median over two rows means nothing); shorter ones, and
single-token steps, take ``fast_llama``'s own path.

On SmolLM2-135M, 2 AVX2 cores, calibrated on the built-in support prompt below (not on the
measured prompts), the first token comes clearly sooner than with the float32 prefill for a
teacher-forced perplexity only slightly above float32's and mostly the same next token;
``bench/generate.py`` re-measures both (``prefill_quality``). ``ALPHA`` and ``OUTLIER`` were
chosen by a sweep on DSTC11 and sample-FAQ prompts; plain dynamic int8 without smoothing or
float32 rows more than doubled the perplexity. Figures in the README.

PyTorch marks its quantized-tensor API deprecated (``torch.quantize_per_channel``): it is there in
the pinned torch; ``available()`` says False where the oneDNN engine is missing (non-x86 CPUs),
and the generator then prefills in the model's dtype.
"""
from __future__ import annotations

import itertools
import platform
import threading
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A grounded prompt of the product's shape (system prompt, numbered sources, question), written
# for calibration: the statistics are the model's (which channels run large), not the site's.
CALIBRATION_SOURCES = [
    {"title": "Shipping", "text": "Orders placed before 2 pm ship the same business day. Standard "
     "delivery takes 3-5 business days within the country and 7-14 days abroad. Express delivery "
     "(1-2 days) costs $12.50. We ship to most countries, except where carriers cannot deliver."},
    {"title": "Returns and refunds", "text": "You can return unused items within 30 days of "
     "delivery for a full refund. Start a return from Orders > Return an item; print the label and "
     "drop the parcel at any post office. Refunds reach your card 5-10 business days after we "
     "receive the item. Sale items can be exchanged but not refunded."},
    {"title": "Hotel: parking and check-in", "text": "Guests park for free in the garage under "
     "the hotel; spaces cannot be reserved. Check-in starts at 3:00 pm and check-out is at 11:00 "
     "am. Early check-in from 10:00 am is possible when a room is ready, for a fee of 20 EUR. "
     "Pets up to 10 kg are welcome at 15 EUR per night."},
    {"title": "Account", "text": "To reset your password, choose 'Forgot password' on the sign-in "
     "page and follow the link we email you; it is valid for one hour. Two-step verification can "
     "be turned on under Settings > Security. Deleting an account removes its order history."},
    {"title": "Billing", "text": "We accept Visa, Mastercard, American Express, PayPal and bank "
     "transfer. Invoices are emailed when an order ships, and can be downloaded as PDF. Prices "
     "include VAT for EU customers; business customers with a VAT number are not charged VAT."},
    {"title": "Wi-Fi and breakfast", "text": "Wi-Fi is free in all rooms and public areas (network "
     "'Guest', no password). Breakfast is served 6:30-10:30 am on weekdays and until 11:00 am on "
     "weekends, in the restaurant on the ground floor; it is included in most rates."},
]
CALIBRATION_QUESTION = "Hi! I ordered a jacket last week and it is too small. Can I send it back " \
    "and how long until I get my money? Also, do you take PayPal?"


def available() -> bool:
    """True where PyTorch has oneDNN's quantized engine on an x86 CPU with AVX2 or better."""
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return False
    if ENGINE not in torch.backends.quantized.supported_engines:
        return False
    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX")


_ENGINE_LOCK = threading.Lock()
ENGINE = "onednn"  # PyTorch's quantized engine the weights are packed for (see available())
ALPHA = 0.65  # smoothing strength (module docstring)
OUTLIER = 4.0  # down_proj rows above this x the median row's peak run in float32


def _pack(weight: torch.Tensor, column_scale: torch.Tensor | None = None):
    """``weight`` (out, in) times ``column_scale`` per input column, quantized to int8 per output
    row (symmetric) and packed for oneDNN."""
    w = weight.detach().float()
    if column_scale is not None:
        w = w * column_scale
    scale = (w.abs().amax(1) / 127.5).clamp(min=1e-8).double()
    with warnings.catch_warnings(), _ENGINE_LOCK:
        warnings.simplefilter("ignore")  # the quantized-tensor API's deprecation notice
        q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = ENGINE  # the packed weight keeps its engine
        try:
            return torch.ops.quantized.linear_prepack(q, None)
        finally:
            torch.backends.quantized.engine = before


def _smoothing(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    w_amax = weight.detach().float().abs().amax(0).clamp(min=1e-5)
    return (act_amax.float().clamp(min=1e-5).pow(alpha) / w_amax.pow(1 - alpha)).clamp(min=1e-5)


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float,
                     chunks: int = 2) -> torch.Tensor:
    """Causal attention of ``q`` (1, H, T, d), at positions ``start ...``, over ``k``/``v``
    (1, KV, start + T, d) (grouped-query heads): (1, H, T, d).

    PyTorch's CPU flash kernel takes keys in one block up to 512 of them and so computes the
    masked half of a causal square too. Split into ``chunks`` query blocks, each block attends
    causally to its own keys and fully to the keys before it (two kernel calls, merged by their
    log-sum-exp): 3/4 of the work for two chunks. A prefix-cached start is the same "keys before".
    """
    t = q.shape[2]
    if _FLASH is None:  # pragma: no cover - other torch builds: one masked call
        mask = torch.arange(start, start + t)[:, None] >= torch.arange(start + t)[None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    bounds = [t * j // chunks for j in range(chunks + 1)]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        a, b = start + lo, start + hi
        o, lse = _FLASH(q[:, :, lo:hi], k[:, :, a:b], v[:, :, a:b], 0.0, True, scale=scale)
        if a > 0:
            o2, lse2 = _FLASH(q[:, :, lo:hi], k[:, :, :a], v[:, :, :a], 0.0, False, scale=scale)
            top = torch.maximum(lse, lse2)
            w, w2 = (lse - top).exp_(), (lse2 - top).exp_()
            total = w + w2
            o = o * (w / total).unsqueeze(-1) + o2 * (w2 / total).unsqueeze(-1)
        out.append(o)
    return torch.cat(out, dim=2)


def outlier_rows(x: torch.Tensor, outlier: float) -> torch.Tensor:
    """Indices of rows of ``x`` (T, C) whose largest |value| exceeds ``outlier`` x the median row's."""
    peak = torch.maximum(x.amax(-1), x.amin(-1).neg())  # (faster than linalg's inf-norm; README)
    return (peak > outlier * peak.median()).nonzero().flatten()


@dataclass
class _Layer:
    norm1: torch.Tensor  # input RMSNorm weight / qkv smoothing
    qkv: object  # packed int8 [q; k; v] x smoothing
    o: object  # packed int8 o_proj
    norm2: torch.Tensor  # post-attention RMSNorm weight / gate-up smoothing
    gate_up: object  # packed int8 [gate; up / down smoothing] x smoothing
    down: object  # packed int8 down_proj x down smoothing
    down_scale: torch.Tensor  # down smoothing (to undo on the float32 outlier rows)


class Int8Prefill:
    """Int8 prefill over a ``fast_llama.FastLlama``'s model; ``run(ids, cache)`` as its forward."""

    def __init__(self, runner, act_amax: dict[tuple[int, str], torch.Tensor], alpha: float = ALPHA,
                 outlier: float = OUTLIER, min_tokens: int = 16):
        self.runner, self.outlier, self.min_tokens = runner, outlier, min_tokens
        self.layers: list[_Layer] = []
        with torch.inference_mode():
            for i, layer in enumerate(runner.layers):
                a, m = layer.self_attn, layer.mlp
                w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight])
                s_qkv = _smoothing(act_amax[(i, "qkv")], w_qkv, alpha)
                s_gu = _smoothing(act_amax[(i, "gate_up")], w_gu, alpha)
                s_down = _smoothing(act_amax[(i, "down")], m.down_proj.weight, alpha)
                rows = torch.cat([torch.ones_like(s_down), 1.0 / s_down])[:, None]  # up rows / s_down
                self.layers.append(_Layer(
                    norm1=(layer.input_layernorm.weight.float() / s_qkv).to(runner.dtype),
                    qkv=_pack(w_qkv, s_qkv),
                    o=_pack(a.o_proj.weight),
                    norm2=(layer.post_attention_layernorm.weight.float() / s_gu).to(runner.dtype),
                    gate_up=_pack(w_gu * rows, s_gu),
                    down=_pack(m.down_proj.weight, s_down),
                    down_scale=s_down.to(runner.dtype),
                ))

    @classmethod
    def calibrate(cls, runner, prompts: list[list[int]], alpha: float = ALPHA,
                  outlier: float = OUTLIER, min_tokens: int = 16) -> Int8Prefill:
        """Per input channel, the largest |activation| of each projection over float32 prefills of
        ``prompts`` (down's outlier rows left out, as ``run`` keeps them in float32)."""
        amax: dict[tuple[int, str], torch.Tensor] = {}

        def record(key, x: torch.Tensor, drop_outliers: bool = False):
            x = x.detach().reshape(-1, x.shape[-1])
            if drop_outliers and x.shape[0] > 2:
                keep = torch.ones(x.shape[0], dtype=torch.bool)
                keep[outlier_rows(x, outlier)] = False
                x = x[keep]
            seen = x.abs().amax(0).float()
            amax[key] = torch.maximum(amax[key], seen) if key in amax else seen

        hooks = []
        for i, layer in enumerate(runner.layers):
            for module, name, drop in ((layer.self_attn.q_proj, "qkv", False),
                                       (layer.mlp.gate_proj, "gate_up", False),
                                       (layer.mlp.down_proj, "down", True)):
                hooks.append(module.register_forward_hook(
                    lambda _m, inputs, _out, key=(i, name), drop=drop: record(key, inputs[0], drop)))
        try:
            with torch.inference_mode():
                for ids in prompts:
                    ids = torch.as_tensor(ids, dtype=torch.long, device=runner.device)
                    runner._run(ids, runner.new_cache(len(ids)), half=False)
        finally:
            for hook in hooks:
                hook.remove()
        return cls(runner, amax, alpha=alpha, outlier=outlier, min_tokens=min_tokens)

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Feed ``ids`` (T,) at positions ``cache.length ...``; the last position's logits (V,)."""
        r = self.runner
        last = r._rms_norm(self.hidden(ids, cache, last_only=True)[-1:], r.norm_w, r.norm_eps)
        return r.lm_head(last)[-1].float()

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor, cache, last_only: bool = False) -> torch.Tensor:
        """The layers over ``ids`` (T,), keys/values written to ``cache``: the last hidden states
        (T, C) before the final norm. ``last_only``: only the last position's (1, C); the last
        layer then computes its keys/values for all and the rest for that one row alone, in the
        model's dtype (a matrix-vector product: bound by reading the weights, not by arithmetic)."""
        r = self.runner
        t = ids.shape[0]
        start, end = cache.length, cache.length + t
        if end > cache.k.shape[2]:
            raise RuntimeError(f"KV cache full: {end} > {cache.k.shape[2]} tokens")
        cos, sin = r._rotary(torch.arange(start, end, device=r.device))  # (T, d)
        h = r.embed(ids)  # (T, C)
        hd, nh, nkv = r.head_dim, r.n_heads, r.n_kv
        width = (h.shape[-1],)
        linear = torch.ops.quantized.linear_dynamic
        chunks = 2 if t >= 128 else 1  # (below, the second kernel call costs more than it saves)
        for i, (layer, q8) in enumerate(zip(r.layers, self.layers)):
            x = F.rms_norm(h, width, q8.norm1, layer.input_layernorm.variance_epsilon)
            qkv = linear(x, q8.qkv, False)
            # Rotary on q and k heads together: (H + KV, T, d).
            qk = qkv[:, : (nh + nkv) * hd].view(t, nh + nkv, hd).transpose(0, 1)
            qk = r._rotate(qk, cos, sin)
            cache.k[i, :, start:end] = qk[nh:]
            cache.v[i, :, start:end] = qkv[:, (nh + nkv) * hd:].view(t, nkv, hd).transpose(0, 1)
            if last_only and i == len(self.layers) - 1:
                cache.length = end
                return self._last_row(layer, qk[:nh, -1:], cache.k[i, :, :end], cache.v[i, :, :end], h[-1:])
            o = causal_attention(qk[:nh].unsqueeze(0), cache.k[i, :, :end].unsqueeze(0),
                                 cache.v[i, :, :end].unsqueeze(0), start, r.scaling, chunks)  # (1, H, T, d)
            h = h + linear(o[0].transpose(0, 1).reshape(t, nh * hd), q8.o, False)
            x = F.rms_norm(h, width, q8.norm2, layer.post_attention_layernorm.variance_epsilon)
            gate, up = linear(x, q8.gate_up, False).chunk(2, dim=-1)
            act = F.silu(gate).mul_(up)
            big = outlier_rows(act, self.outlier)
            if big.numel():
                kept = act[big] * q8.down_scale
                act[big] = 0
                out = linear(act, q8.down, False)
                out[big] = F.linear(kept, layer.mlp.down_proj.weight)  # (float32: float16 costs ppl)
            else:
                out = linear(act, q8.down, False)
            h = h + out
        cache.length = end
        return h

    def _last_row(self, layer, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  h: torch.Tensor) -> torch.Tensor:
        """The rest of the last layer for the last position only: ``q`` (H, 1, d) over every key."""
        r = self.runner
        o = F.scaled_dot_product_attention(q.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0),
                                           scale=r.scaling, enable_gqa=r.n_kv != r.n_heads)  # (1, H, 1, d)
        h = h + layer.self_attn.o_proj(o[0].transpose(0, 1).reshape(1, -1))
        norm = layer.post_attention_layernorm
        x = r._rms_norm(h, norm.weight, norm.variance_epsilon)
        mlp = layer.mlp
        return h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
