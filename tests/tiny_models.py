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
