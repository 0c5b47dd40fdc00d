"""Split a ``ParsedDocument`` into ``ChunkText``s ready to embed and index.

Contract of ``chunk_document``:

* an FAQ section (``kind == "faq"``) is one chunk, however long: the question is what visitors
  ask and the answer is what they need, so the pair is never cut apart. Its text is
  ``"question\\nanswer"``; ``metadata["question"]`` and ``metadata["answer"]`` hold the two parts
  (the extractive generator quotes the answer alone);
* any other section is cut into windows of at most ``chunk_tokens`` tokens, each starting with
  the last ``overlap`` tokens of the one before (so a sentence cut at a boundary is whole in one
  of the two). A window ends at a sentence or line end when one lies in its second half, else
  mid-sentence; likewise the overlap starts at a sentence start when one lies in its first half
  (it is then shorter than ``overlap``), else exactly ``overlap`` tokens back. Windows break between words, never inside one (a single word longer than the
  budget, such as a run of CJK text, is split at characters);
* text chunks start with their section's heading path on its own line ("Billing > Refunds\\n...")
  unless the text already starts with it: a later window of a long section ("It takes 5 days")
  is only findable with its context. The heading's tokens count against ``chunk_tokens``. The
  document title is not added (the index knows it from the document);
* ``ChunkText.text`` is self-contained: embed and index it as is. ``ordinal`` numbers the chunks
  of the document from 0; ``metadata`` is the document's metadata updated with the section's
  (``page`` for PDFs), so metadata filters work on chunks. No chunk is empty.

Tokens are counted by ``count_tokens`` when given (pass the embedder tokenizer's counter, without
special tokens, to match its limit) or by ``count_regex_tokens`` (words, CJK characters and
punctuation marks), which needs no model.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from typing import Callable

from bot.core.errors import ConfigError

from .types import ChunkText, ParsedDocument, Section

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;:\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*$")


def count_regex_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


class _Units:
    """Words of a text as (start, end) character spans with token costs and sentence ends."""

    def __init__(self, text: str, budget: int, cost: Callable[[str], int]):
        self.spans: list[tuple[int, int]] = []
        self.costs: list[int] = []
        self.ends: list[bool] = []  # unit closes a sentence or a line
        for word in _WORD.finditer(text):
            pieces = [word]
            if cost(word.group()) > budget:  # e.g. unspaced CJK: fall back to regex tokens
                pieces = list(TOKEN_RE.finditer(text, word.start(), word.end())) or [word]
            for piece in pieces:
                self.spans.append(piece.span())
                self.costs.append(cost(piece.group()))
                self.ends.append(bool(_SENTENCE_END.search(piece.group())))
        for i, (_, end) in enumerate(self.spans[:-1]):
            if "\n" in text[end:self.spans[i + 1][0]]:
                self.ends[i] = True
        self.prefix = [0]  # prefix[i] = tokens in units [0, i)
        for c in self.costs:
            self.prefix.append(self.prefix[-1] + c)

    def tokens(self, start: int, stop: int) -> int:
        return self.prefix[stop] - self.prefix[start]


def _windows(units: _Units, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Unit index ranges [start, stop) of the windows; see the module docstring for the rules."""
    n, out, start = len(units.costs), [], 0
    while start < n:
        # Furthest stop with tokens(start, stop) <= budget; at least one unit.
        stop = max(bisect_left(units.prefix, units.prefix[start] + budget + 1) - 1, start + 1)
        stop = min(stop, n)
        if stop < n:
            for j in range(stop - 1, start, -1):
                if units.tokens(start, j + 1) * 2 < budget:
                    break
                if units.ends[j]:
                    stop = j + 1
                    break
        out.append((start, stop))
        if stop == n:
            break
        nxt = stop
        while nxt > start + 1 and units.tokens(nxt - 1, stop) <= overlap:
            nxt -= 1
        for j in range(nxt, stop):  # start the overlap at a sentence start in its first half
            if units.tokens(j, stop) * 2 < overlap:
                break
            if units.ends[j - 1]:
                nxt = j
                break
        start = nxt
    return out


def _token_counter(count_tokens: Callable[[str], int] | None) -> Callable[[str], int]:
    if count_tokens is None:
        return count_regex_tokens
    # A tokenizer that adds special tokens ([CLS] ... [SEP]) would charge them to every word.
    base = count_tokens("")
    cache: dict[str, int] = {}

    def cost(text: str) -> int:
        if text not in cache:
            cache[text] = max(count_tokens(text) - base, 1)
        return cache[text]

    return cost


def _faq_chunk(section: Section, meta: dict, ordinal: int) -> ChunkText | None:
    text = section.text.strip() or "\n".join(p for p in (section.question, section.answer) if p)
    if not text:
        return None
    meta = {**meta, "question": section.question, "answer": section.answer}
    return ChunkText(text=text, ordinal=ordinal, heading=section.heading, kind="faq", metadata=meta)


def chunk_document(
    doc: ParsedDocument,
    chunk_tokens: int,
    overlap: int,
    count_tokens: Callable[[str], int] | None = None,
) -> list[ChunkText]:
    """Chunks of ``doc`` in order; see the module docstring for the contract."""
    if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
        raise ConfigError(
            f"chunking needs chunk_tokens >= 1 and 0 <= overlap < chunk_tokens "
            f"(got chunk_tokens={chunk_tokens}, overlap={overlap})"
        )
    cost = _token_counter(count_tokens)
    chunks: list[ChunkText] = []
    for section in doc.sections:
        meta = {**doc.metadata, **section.metadata}
        if section.kind == "faq":
            chunk = _faq_chunk(section, meta, len(chunks))
            chunks += [chunk] if chunk else []
            continue
        text = section.text.strip()
        heading = section.heading.strip()
        prefix = heading if heading and not text.startswith(heading) else ""
        # Keep at least half the budget for the text itself, even under a very long heading.
        prefix_cost = cost(prefix) if prefix else 0
        if prefix_cost * 2 > chunk_tokens:
            prefix, prefix_cost = "", 0
        budget = chunk_tokens - prefix_cost
        units = _Units(text, budget, cost)
        for start, stop in _windows(units, budget, min(overlap, budget - 1)):
            body = text[units.spans[start][0]:units.spans[stop - 1][1]]
            chunks.append(ChunkText(
                text=f"{prefix}\n{body}" if prefix else body,
                ordinal=len(chunks),
                heading=heading,
                kind=section.kind,
                metadata=dict(meta),
            ))
    return chunks
