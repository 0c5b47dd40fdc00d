"""``extractive`` backend: no language model; the reply is the best FAQ answer, verbatim, cited.

The dialogue manager passes the retrieved sources (``Hit`` objects or their dicts, best first) as
``stream(messages, sources=[...])``. The reply is the answer of the highest-ranked FAQ source
(``metadata["answer"]``; for an FAQ chunk without it, the text after its question line), or, when
no source is an FAQ entry, the top source's text, followed by its citation ``[n]`` (``n`` = its
position in ``sources``, so citations map back exactly as they do for generated replies); a help
page's hard-wrapped lines are joined into paragraphs (``unwrap``). With
no sources the reply is ``dont_know``. It streams in word pieces like a model would.

An FAQ answer that opens with a yes or a no answers its own question, not necessarily the
visitor's: quoted alone to "can my scout troop order 40 sleeping bags at a bulk price", "Yes, in
Bend, Oregon only: our store rents tents, sleeping bags ..." reads as a yes to a bulk price. Such an
answer is shown after its question in bold (``**Do you rent camping gear?** Yes, ...``), so the
reply says which question the yes is to.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Sequence

from bot.generators.base import (
    GenerationStream,
    StopMatcher,
    UsageMixin,
    approx_count_tokens,
    stop_list,
    validate_messages,
    word_pieces,
)
from retrieval.types import Hit

DONT_KNOW = "I don't know the answer to that. Would you like me to connect you with a person?"


def _get(source: Any, name: str, default: Any = None) -> Any:
    if isinstance(source, Mapping):
        return source.get(name, default)
    return getattr(source, name, default)


def _as_hit(source: Any) -> Hit:
    """A ``Hit``, or a mapping of its fields (where ``kind``, ``answer`` and ``question`` may also
    sit at the top level) as one."""
    if isinstance(source, Hit):
        return source
    meta = dict(_get(source, "metadata") or {})
    for name in ("kind", "answer", "question"):
        if _get(source, name) and not meta.get(name):
            meta[name] = _get(source, name)
    return Hit(0, str(_get(source, "doc_id") or ""), str(_get(source, "title") or ""),
               str(_get(source, "text") or ""), 0.0, 0.0, metadata=meta)


def faq_answer(source: Any) -> str | None:
    """The answer part of an FAQ source (``_as_hit``), or ``None`` when it is not an FAQ entry
    (``Hit.faq_answer`` is the rule)."""
    return _as_hit(source).faq_answer


_YES_NO = re.compile(r"^\W*(?:yes|no)\b", re.IGNORECASE)


def entry_question(source: Any) -> str:
    """The question of an FAQ source ("" when it has none)."""
    return str(_as_hit(source).question or "")


def quoted_answer(source: Any, answer: str) -> str:
    """``answer`` as the reply shows it: after its question in bold when it opens with yes/no."""
    text = unwrap(answer)
    question = " ".join(entry_question(source).replace("*", "").split())
    if question and _YES_NO.match(text):
        return f"**{question}** {text}"
    return text


_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d{1,3}[.)])\s")


def unwrap(text: str) -> str:
    """Join a help page's hard-wrapped lines into their paragraphs, as markdown reads them (the
    widget shows a newline as a line break); blank lines, list items and lines ending in two
    spaces (a markdown line break) keep their breaks."""
    out: list[str] = []
    for line in text.split("\n"):
        prev = out[-1] if out else ""
        if prev.strip() and line.strip() and not _LIST_ITEM.match(line) and not prev.endswith("  "):
            out[-1] = f"{prev.rstrip()} {line.lstrip()}"
        else:
            out.append(line)
    return "\n".join(out)


def extract_reply(sources: Sequence[Any], dont_know: str = DONT_KNOW) -> str:
    """The reply for ``sources`` (best first): an FAQ answer or the top passage, with ``[n]``."""
    if not sources:
        return dont_know
    for n, source in enumerate(sources, start=1):
        answer = faq_answer(source)
        if answer:
            return f"{quoted_answer(source, answer)} [{n}]"
    text = str(_get(sources[0], "text") or "").strip()
    return f"{text} [1]" if text else dont_know


class ExtractiveGenerator(UsageMixin):
    """Replies with retrieved FAQ answers verbatim. Params: ``sources``, ``stop``, ``max_new_tokens``."""

    model_id = "extractive"
    tokenizer = None

    def __init__(self, dont_know: str = DONT_KNOW):
        import threading

        self.dont_know = dont_know
        self._usage_local = threading.local()

    def load(self) -> "ExtractiveGenerator":
        return self

    def count_tokens(self, text: str) -> int:
        return approx_count_tokens(text)

    def stream(self, messages: Sequence[dict], **params: Any) -> GenerationStream:
        messages = validate_messages(messages)
        reply = extract_reply(list(params.get("sources") or []), self.dont_know)
        max_pieces = params.get("max_new_tokens")
        stop = stop_list(params.get("stop"))
        prompt_tokens = sum(approx_count_tokens(m["content"]) for m in messages)

        def pieces(handle: GenerationStream) -> Iterator[str]:
            handle.usage["prompt_tokens"] = prompt_tokens
            matcher = StopMatcher(stop)
            words = word_pieces(reply)
            for i, word in enumerate(words):
                if max_pieces is not None and i >= int(max_pieces):
                    handle.finish_reason = "length"
                    break
                handle.usage["completion_tokens"] += 1
                piece = matcher.feed(word)
                if piece:
                    yield piece
                if matcher.stopped:
                    break
            else:
                handle.finish_reason = "stop"
            tail = matcher.flush()
            if tail:
                yield tail
            handle.finish_reason = handle.finish_reason or "stop"

        return GenerationStream(pieces, self.model_id, on_finish=self._record_usage)
