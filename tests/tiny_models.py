"""Real tiny models for tests, built offline from a config (no hub, no downloads).

``build_tiny_causal_lm(dir)`` writes a folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load like any hub checkpoint: a 2-layer Llama (hidden 64) with
random weights and a byte-level BPE tokenizer trained on a few sentences, with a ChatML chat
template (the same shape as SmolLM2-Instruct's), ``<|im_end|>`` as end-of-sequence and a pad token.
Byte-level means any text round-trips through encode/decode, so callers can feed real prompts.

Reused by the generator, dialogue-manager and training tests.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "How do I reset my password? Open Settings, choose Account and click Reset password.",
    "Refunds take five to seven business days after we receive the returned item.",
    "Shipping is free for orders over 50 dollars; standard delivery takes three days.",
    "You can cancel a subscription at any time from the Billing page.",
    "Our support team answers email within one business day.",
    "Is there free parking at the hotel? Yes, parking is free for guests.",
    "The restaurant is open from noon to ten in the evening, every day.",
    "I don't know. Would you like me to connect you with a person?",
    "According to the sources [1] and [2], the answer is yes.",
    "system user assistant You are a helpful customer-support assistant.",
]


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_causal_lm(
    dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    vocab_size: int = 512,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a loadable tiny causal LM (model + tokenizer with a chat template) into ``dir``.

    Deterministic for a given ``seed``. Returns ``dir``. Takes well under a second.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as SmolLM2 uses
        max_position_embeddings=max_positions,
        # Untied: with tied random embeddings the logits favour repeating the last token forever.
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits (top-2 gaps ~0.03); a larger output scale makes greedy
    # choices clear-cut (gaps ~1) so float rounding differences between decode paths cannot flip
    # an argmax, and the greedy text varies instead of repeating one token.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dir)
    tokenizer.save_pretrained(dir)
    return dir


def _llama_cpp_permute(w, n_head: int):
    """llama.cpp's q/k row order (transformers undoes it when it reads a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, gguf_path: Path) -> Path:
    """Write the tiny model in ``model_dir`` (from ``build_tiny_causal_lm``) as a float32 GGUF file.

    Laid out as llama.cpp's converter does (key names, permuted q/k rows, byte-level BPE
    vocabulary and merges as metadata), so transformers' GGUF loader reads back the same model:
    a real stand-in for the default model's GGUF in conversion tests.
    """
    import json

    import numpy as np
    from gguf import GGUFWriter, TokenType
    from safetensors.numpy import load_file

    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"] if a.get("special")}
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]

    w = GGUFWriter(str(gguf_path), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_chat_template(CHAT_TEMPLATE)

    sd = load_file(str(model_dir / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].astype(np.float32))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].astype(np.float32))
    if "lm_head.weight" in sd:
        w.add_tensor("output.weight", sd["lm_head.weight"].astype(np.float32))
    for i in range(cfg["num_hidden_layers"]):
        for hf_name, gg_name in names.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"].astype(np.float32)
            if gg_name == "attn_q":
                t = _llama_cpp_permute(t, n_head)
            elif gg_name == "attn_k":
                t = _llama_cpp_permute(t, n_kv)
            w.add_tensor(f"blk.{i}.{gg_name}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return gguf_path
