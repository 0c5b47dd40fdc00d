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
* logits for the last position only.

``supports(model)`` says whether a model can use it; other models use their own forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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

    def __init__(self, model):
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
    def forward(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed ``ids`` (T,) at positions ``cache.length ...``; return the last position's logits (V,)."""
        t = ids.shape[0]
        start, end = cache.length, cache.length + t
        if end > cache.k.shape[2]:
            raise RuntimeError(f"KV cache full: {end} > {cache.k.shape[2]} tokens")
        positions = torch.arange(start, end, device=self.device)
        cos, sin = self._rotary(positions)  # (T, d), broadcast over heads
        h = self.embed(ids.unsqueeze(0))  # (1, T, C)
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = self._rms_norm(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            q = attn.q_proj(x).view(1, t, nh, hd).transpose(1, 2)  # (1, H, T, d)
            k = attn.k_proj(x).view(1, t, nkv, hd).transpose(1, 2)  # (1, KV, T, d)
            v = attn.v_proj(x).view(1, t, nkv, hd).transpose(1, 2)
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
            h = h + attn.o_proj(o)
            x = self._rms_norm(h, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        cache.length = end
        last = self._rms_norm(h[:, -1:], self.norm_w, self.norm_eps)
        return self.lm_head(last)[0, -1].float()

    def _prefix_mask(self, t: int, end: int) -> torch.Tensor:
        """Causal mask for ``t`` new queries after ``end - t`` cached tokens: (T, S) bool."""
        q_pos = torch.arange(end - t, end, device=self.device)[:, None]
        return q_pos >= torch.arange(end, device=self.device)[None, :]
