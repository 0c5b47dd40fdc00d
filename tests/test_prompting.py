"""The shared prompt builder: numbered sources, history trimmed by the model's tokens."""
from __future__ import annotations

import pytest

from bot.prompting import build_messages, cited_numbers, format_sources, trim_history
from retrieval.types import Hit


def hit(i: int, title: str, text: str) -> Hit:
    return Hit(chunk_id=i, doc_id=f"doc{i}", title=title, text=text, score=1.0, confidence=0.9)


def test_sources_are_numbered_in_order_from_hits_and_dicts():
    msgs = build_messages(
        "How long do refunds take?",
        [hit(7, "Refunds", "Refunds take 5 days."), {"title": "Shipping", "text": "Free over $50."}],
        history=[],
        system="Answer from the sources.",
    )
    assert msgs[0] == {"role": "system", "content": "Answer from the sources."}
    # The sources travel with the question, in the last user turn.
    assert msgs[-1] == {"role": "user", "content": (
        "Sources:\n[1] Refunds: Refunds take 5 days.\n[2] Shipping: Free over $50.\n\n"
        "Question: How long do refunds take?"
    )}
    assert len(msgs) == 2


def test_title_not_repeated_when_text_starts_with_it():
    assert format_sources([{"title": "Refunds", "text": "Refunds\nTake 5 days."}]) == "[1] Refunds\nTake 5 days."
    assert format_sources([]) == "No sources were found for this question."


def test_history_trimmed_by_tokens_oldest_first():
    # A counter that charges one token per character makes budgets exact and easy to reason about.
    history = [
        {"role": "user", "text": "a" * 10},   # oldest
        {"role": "agent", "text": "b" * 10},
        {"role": "user", "text": "c" * 10},
        {"role": "agent", "text": "d" * 10},  # newest
    ]
    kept = trim_history(history, budget=25, count_tokens=len)
    assert [t["text"][0] for t in kept] == ["c", "d"]
    assert [t["text"][0] for t in trim_history(history, 40, len)] == ["a", "b", "c", "d"]
    assert trim_history(history, 9, len) == []

    msgs = build_messages("next?", [], history, "S", count_tokens=len, history_tokens=25)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "c" * 10 and msgs[2]["content"] == "d" * 10
    assert msgs[-1]["content"].endswith("\n\nQuestion: next?")


def test_trimming_uses_the_model_tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    history = [{"role": "user" if i % 2 == 0 else "agent", "text": f"turn {i}: refunds and shipping"}
               for i in range(12)]
    costs = [count(t["text"]) for t in history]
    budget = sum(costs[-3:])  # exactly the last three turns fit
    msgs = build_messages("and returns?", [], history, "S", count_tokens=count, history_tokens=budget)
    contents = [m["content"] for m in msgs[1:]]
    assert contents == ["turn 9: refunds and shipping", "turn 10: refunds and shipping",
                        "turn 11: refunds and shipping",
                        "Sources:\nNo sources were found for this question.\n\nQuestion: and returns?"]
    assert [m["role"] for m in msgs] == ["system", "assistant", "user", "assistant", "user"]
    # the chat template renders it, ending with the visitor's message then the assistant prompt
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("Question: and returns?<|im_end|>\n<|im_start|>assistant\n")
    assert "turn 8" not in rendered


def test_roles_mapped_and_merged():
    history = [
        {"role": "agent", "text": "Welcome!"},
        {"role": "human", "text": "Sam from support here."},
        {"role": "user", "text": "hi"},
        {"role": "bot", "text": "How can I help?"},
    ]
    msgs = build_messages("refund", [], history, "S")
    assert [m["role"] for m in msgs] == ["system", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "Welcome!\nSam from support here."
    with pytest.raises(ValueError, match="unknown role 'robot'"):
        build_messages("x", [], [{"role": "robot", "text": "beep"}], "S")


def test_last_message_is_the_users_even_after_a_user_turn():
    msgs = build_messages("second", [], [{"role": "user", "text": "first"}], "S")
    assert msgs[-1] == {"role": "user", "content": (
        "first\n\nSources:\nNo sources were found for this question.\n\nQuestion: second"
    )}


def test_cited_numbers():
    assert cited_numbers("Yes [2]. Also [1, 3] and [2] again; [9] is out of range.", 3) == [2, 1, 3]
    assert cited_numbers("no citations", 3) == []
