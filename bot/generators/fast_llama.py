"""A lean forward pass for Llama-family models (Llama, SmolLM2, Mistral, Qwen2) at batch 1.

transformers' forward is general: per layer it goes through module wrappers, keyword plumbing,
mask construction, cache objects and an attention dispatcher, about sixty small operations for
the handful that carry the weights. At batch 1 on a CPU, the per-operation overhead is a large
part of each decode step. This runs the same arithmetic directly on the model's own parameters
(no copies): the same RMSNorm, rotary, attention and gated-MLP formulas in the same dtypes, so
greedy output matches ``model.generate()`` (tested), with

* rotary cos/sin computed once per call for all positions (not per layer);
* a per-call KV cache preallocated for prompt + max new tokens, written in place;
* attention through ``scaled_dot_product_attention`` with the arguments transformers uses
  (causal prefill, unmasked single-token steps, grouped-query heads), so its numerics match;
* logits for the last position only;
* single-token decode steps on half-precision copies of the projection weights (``decode_dtype``,
  float16 by default on the CPU), with q/k/v and gate/up fused into one matrix each. A decode step
  multiplies one vector by every weight, so it is bound by memory traffic, not arithmetic: half
  the bytes is nearly half the time (PyTorch's fp16 matrix-vector kernel accumulates in fp32). The
  prompt's prefill is a real matrix product, compute-bound, and stays in the model's dtype (this
  CPU class has no fast half-precision GEMM). The residual stream, norms, rotary, attention and the
  KV cache stay in the model's dtype too; only the inputs of the matrix products are rounded. A
  step whose logits come out non-finite (a half-precision overflow) is redone in the model's dtype.
  On SmolLM2-135M this nearly halves the step time at a negligible perplexity change and the same
  argmax on teacher-forced knowledge-base text (``bench/generate.py``; figures in the README);
* optionally (``int8``, set by the ``hf`` backend on x86 CPUs), prompt chunks of 16+ tokens in
  int8 matrix products: see ``int8_prefill``;
* decode steps on ``decode_threads`` torch threads (the prompt's prefill on all of them). A step
  is ~200 small kernels; with two threads each one wakes the other OpenMP worker. When more than
  one thread of the process runs torch (a web server's request threads embed queries), libgomp
  throttles its spinning and every wake-up goes through the kernel: on 2 cores a two-thread step
  is then no faster than a one-thread step and costs more CPU. (In a process where only one
  thread ever runs torch, two threads are faster.) ``bench/generate.py``; figures in the README.
* a prefix cache (``prefill``): the keys/values of the last ``prefix_slots`` prompts are kept, and
  a prompt that starts like one of them only computes the rest: the bot's system prompt and
  chat-template header for every visitor, and for a follow-up in the same conversation everything
  up to where it differs (often the sources too). What is reused is what a full prefill computes
  for those positions, up to float rounding. About 46 KB per token for SmolLM2-135M (4 x 512
  tokens: 94 MB).

``supports(model)`` says whether a model can use it; other models use their own forward.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bot.core.threads import torch_threads

_ARCHS = {"llama", "mistral", "qwen2"}


def supports(model) -> bool:
    """True for decoder-only Llama-style models this module reproduces exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _ARCHS:
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type != "default" or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if getattr(cfg, "use_sliding_window", False) or (
        cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)
    ):
        return False
    if getattr(cfg, "mlp_bias", False) or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "layers") and hasattr(inner, "rotary_emb")


@dataclass
class KVCache:
    """Keys/values of one call: (layers, kv_heads, capacity, head_dim) each, ``length`` filled."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0


class FastLlama:
    """Batch-1 prefill/step over a transformers Llama-family model's parameters."""

    def __init__(
        self, model, decode_dtype: torch.dtype | None = None, prefix_cache: bool = True,
        prefix_slots: int = 4, decode_threads: int = 0,
    ):
        if not supports(model):
            raise ValueError(f"{type(model).__name__} is not a supported Llama-family model")
        cfg = model.config
        inner = model.model
        self.model = model
        self.layers = list(inner.layers)
        self.embed = inner.embed_tokens
        self.norm_w, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.lm_head = model.lm_head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.inv_freq = inner.rotary_emb.inv_freq
        self.rope_scale = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.decode_dtype = decode_dtype if decode_dtype not in (None, self.dtype) else None
        self._half = self._half_weights(self.decode_dtype) if self.decode_dtype is not None else None
        self.prefix_cache = prefix_cache
        self.decode_threads = decode_threads  # 0: whatever the calling thread has
        self.prefix_slots = max(1, prefix_slots)
        # Most recently used last: (prompt ids, keys, values) of whole prompts.
        self._prefixes: list[tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = []
        self._prefix_lock = threading.Lock()
        self.reused_tokens = 0  # prompt tokens taken from the prefix cache by the last prefill
        self.int8 = None  # an int8_prefill.Int8Prefill: prompt chunks in int8 matrix products

    @torch.inference_mode()
    def _half_weights(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
        """Per layer (qkv, o, gate_up, down) in ``dtype``, then the LM head: copies (the model's
        own parameters stay as they are for prefill, training and the other runners)."""
        out = []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            out.append((
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).to(dtype).contiguous(),
                a.o_proj.weight.to(dtype).contiguous(),
                torch.cat([m.gate_proj.weight, m.up_proj.weight]).to(dtype).contiguous(),
                m.down_proj.weight.to(dtype).contiguous(),
            ))
        out.append((self.lm_head.weight.to(dtype).contiguous(),))
        return out

    def new_cache(self, capacity: int) -> KVCache:
        shape = (len(self.layers), self.n_kv, capacity, self.head_dim)
        return KVCache(
            torch.empty(shape, dtype=self.dtype, device=self.device),
            torch.empty(shape, dtype=self.dtype, device=self.device),
        )

    @staticmethod
    def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # As transformers' LlamaRMSNorm: statistics in float32, scaled in the input dtype.
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dtype)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq.to(torch.float32)  # (T, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, d)
        return (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x * cos) + (rotated * sin)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """``forward`` for a whole prompt into an empty ``cache``, reusing the prefix cache."""
        n = ids.shape[0]
        key = tuple(ids.tolist())
        common, best = 0, None
        if self.prefix_cache and cache.length == 0:
            with self._prefix_lock:
                prefixes = list(self._prefixes)
            limit = n - 1  # always compute at least the last token
            for entry in prefixes:
                seen = entry[0]
                shared, top = 0, min(len(seen), limit)
                while shared < top and seen[shared] == key[shared]:
                    shared += 1
                if shared > common:
                    common, best = shared, entry
            if best is not None:
                cache.k[:, :, :common] = best[1][:, :, :common]
                cache.v[:, :, :common] = best[2][:, :, :common]
                cache.length = common
        logits = self.forward(ids[common:], cache)
        self.reused_tokens = common
        if self.prefix_cache:
            kept = (key, cache.k[:, :, :n].clone(), cache.v[:, :, :n].clone())
            with self._prefix_lock:
                rest = [e for e in self._prefixes if e[0] != key]
                self._prefixes = rest[max(0, len(rest) - self.prefix_slots + 1):] + [kept]
        return logits

    def clear_prefix(self) -> None:
        with self._prefix_lock:
            self._prefixes = []

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed ``ids`` (T,) at positions ``cache.length ...``; return the last position's logits (V,)."""
        if ids.shape[0] > 1:
            if self.int8 is not None and ids.shape[0] >= self.int8.min_tokens:
                return self.int8.run(ids, cache)
            return self._run(ids, cache, half=False)
        with torch_threads(self.decode_threads if self.device.type == "cpu" else 0):
            if self._half is not None:
                logits = self._run(ids, cache, half=True)
                if bool(torch.isfinite(logits).all()):
                    return logits
                cache.length -= 1  # half-precision overflow: redo this step in the model's dtype
            return self._run(ids, cache, half=False)

    def _run(self, ids: torch.Tensor, cache: KVCache, half: bool) -> torch.Tensor:
        """The layers over ``ids``: on the model's own modules, or (``half``, one token) on the
        fused half-precision copies, whose outputs come back in the model's dtype."""
        t = ids.shape[0]
        start, end = cache.length, cache.length + t
        if end > cache.k.shape[2]:
            raise RuntimeError(f"KV cache full: {end} > {cache.k.shape[2]} tokens")
        positions = torch.arange(start, end, device=self.device)
        cos, sin = self._rotary(positions)  # (T, d), broadcast over heads
        h = self.embed(ids.unsqueeze(0))  # (1, T, C)
        hd, nh, nkv, dt = self.head_dim, self.n_heads, self.n_kv, self.decode_dtype
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = self._rms_norm(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            if half:
                w_qkv, w_o, w_gu, w_down = self._half[i]
                q, k, v = F.linear(x.to(dt), w_qkv).to(self.dtype).split((nh * hd, nkv * hd, nkv * hd), dim=-1)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            q = q.view(1, t, nh, hd).transpose(1, 2)  # (1, H, T, d)
            k = k.view(1, t, nkv, hd).transpose(1, 2)  # (1, KV, T, d)
            v = v.view(1, t, nkv, hd).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            cache.k[i, :, start:end] = k[0]
            cache.v[i, :, start:end] = v[0]
            keys, values = cache.k[i, :, :end], cache.v[i, :, :end]  # (KV, S, d)
            # Same call as transformers' sdpa attention: causal for a fresh prompt, no mask for
            # one new token (it sees every cached position), grouped-query heads.
            o = F.scaled_dot_product_attention(
                q, keys.unsqueeze(0), values.unsqueeze(0), scale=self.scaling,
                is_causal=t > 1 and start == 0, enable_gqa=nkv != nh,
                attn_mask=self._prefix_mask(t, end) if t > 1 and start > 0 else None,
            )  # (1, H, T, d)
            o = o.transpose(1, 2).reshape(1, t, nh * hd)
            h = h + (F.linear(o.to(dt), w_o).to(self.dtype) if half else attn.o_proj(o))
            x = self._rms_norm(h, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            if half:
                gate, up = F.linear(x.to(dt), w_gu).chunk(2, dim=-1)
                h = h + F.linear(F.silu(gate) * up, w_down).to(self.dtype)
            else:
                h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        cache.length = end
        last = self._rms_norm(h[:, -1:], self.norm_w, self.norm_eps)
        if half:
            return F.linear(last.to(dt), self._half[-1][0])[0, -1].float()
        return self.lm_head(last)[0, -1].float()

    def _prefix_mask(self, t: int, end: int) -> torch.Tensor:
        """Causal mask for ``t`` new queries after ``end - t`` cached tokens: (T, S) bool."""
        q_pos = torch.arange(end - t, end, device=self.device)[:, None]
        return q_pos >= torch.arange(end, device=self.device)[None, :]
