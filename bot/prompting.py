"""The one prompt builder, used by serving (``bot.dialogue``) and by training (SFT examples).

``build_messages`` turns (message, sources, history) into chat messages for a chat template:

    [{"role": "system",    "content": system},
     {"role": "user"|"assistant", "content": ...},   # history, trimmed to a token budget
     {"role": "user",      "content": "Sources:\n[1] ...\n\nQuestion: " + message}]

The sources go with the question, in the last user turn, not in the system prompt: small
instruction-tuned models (the default SmolLM2-135M) follow the turn they answer better than a
long system prompt. With the default model on DSTC11 dev knowledge turns and gold sources this
layout scored higher ROUGE-L and BLEU than the sources in the system prompt, with shorter
replies; on the sample FAQ the old layout wandered into long invented answers where this one
answered in a sentence (a one-off comparison; figures in the README, ``supportbot eval``
re-scores replies).
It also keeps the system prompt and the conversation so far as a stable prompt prefix, which the
``hf`` backend's prefix cache reuses from one turn to the next.

Sources are numbered from 1 in the order given, ``[n] title: text``; the model cites them with
``[n]`` and ``cited_numbers`` reads the citations back. History is trimmed oldest-first until its
tokens, counted with the model's own tokenizer (``count_tokens``), fit ``history_tokens``.
Consecutive turns of one role are merged so templates that require alternation accept them.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

from retrieval.types import Hit

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
# Stored/data roles -> chat-template roles.
ROLE_MAP = {"user": "user", "agent": "assistant", "bot": "assistant", "human": "assistant",
            "assistant": "assistant"}
NO_SOURCES = "No sources were found for this question."


def approx_tokens(text: str) -> int:
    """Fallback token count (words and punctuation) when no tokenizer is given."""
    return len(_WORDS.findall(text))


def _field(source: Hit | Mapping[str, Any], name: str) -> str:
    value = getattr(source, name, None) if not isinstance(source, Mapping) else source.get(name)
    return str(value or "").strip()


def format_sources(sources: Sequence[Hit | Mapping[str, Any]]) -> str:
    """``[1] title: text`` lines, one per source, in the given order."""
    if not sources:
        return NO_SOURCES
    lines = []
    for n, src in enumerate(sources, start=1):
        title, text = _field(src, "title"), _field(src, "text")
        # A chunk whose text opens with its title as a heading line is printed as it is.
        repeats = text.startswith((f"{title}\n", f"{title}:")) or text == title
        head = f"{title}: " if title and not repeats else ""
        lines.append(f"[{n}] {head}{text}")
    return "\n".join(lines)


def trim_history(
    history: Sequence[Mapping[str, str]],
    budget: int,
    count_tokens: Callable[[str], int] | None = None,
) -> list[dict]:
    """The most recent turns whose token total fits ``budget`` (whole turns; oldest dropped first)."""
    count = count_tokens or approx_tokens
    kept: list[dict] = []
    used = 0
    for turn in reversed(history):
        text = str(turn.get("text", turn.get("content", "")) or "").strip()
        if not text:
            continue
        cost = count(text)
        if used + cost > budget:
            break
        used += cost
        kept.append({"role": str(turn.get("role", "user")), "text": text})
    kept.reverse()
    return kept


def build_messages(
    message: str,
    sources: Sequence[Hit | Mapping[str, Any]],
    history: Sequence[Mapping[str, str]],
    system: str,
    count_tokens: Callable[[str], int] | None = None,
    history_tokens: int = 384,
) -> list[dict]:
    """Chat messages for the generator: system, trimmed history, numbered sources with the message.

    ``history``: earlier turns, oldest first, as ``{"role": "user"|"agent"|"bot"|"human", "text"}``
    (the current ``message`` is not part of it). Unknown roles raise ``ValueError``.
    """
    out: list[dict] = [{"role": "system", "content": system.strip()}]
    for turn in trim_history(history, history_tokens, count_tokens):
        role = ROLE_MAP.get(turn["role"])
        if role is None:
            raise ValueError(f"history turn has unknown role {turn['role']!r}")
        if out[-1]["role"] == role:
            out[-1]["content"] += "\n" + turn["text"]
        else:
            out.append({"role": role, "content": turn["text"]})
    # The visitor's message always comes last, in a user turn, after the sources it is answered from.
    question = f"Sources:\n{format_sources(sources)}\n\nQuestion: {message.strip()}"
    if out[-1]["role"] == "user":
        out[-1]["content"] += "\n\n" + question
    else:
        out.append({"role": "user", "content": question})
    return out


def cited_numbers(text: str, n_sources: int) -> list[int]:
    """Source numbers cited in ``text`` as ``[2]`` or ``[1, 3]``, in first-cited order, in range."""
    seen: list[int] = []
    for group in _CITATION.findall(text):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= n_sources and n not in seen:
                seen.append(n)
    return seen
