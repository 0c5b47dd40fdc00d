"""Streaming sentence splitter for replies that arrive token by token.

``SentenceSplitter.feed(piece)`` returns the sentences completed so far and ``flush()`` the rest;
every returned sentence keeps its trailing whitespace, so ``"".join(all returned) == all fed``.

A sentence ends at ``.``, ``!`` or ``?`` (with closing quotes/brackets/bold markers and citation
markers on the same line, ``"free [1]."`` or ``"free. [1]"``) followed by whitespace, except:

* the next word starts in lower case (``"e.g. the"``, ``"approx. three"``);
* the word before is a known abbreviation or a dotted acronym (``"e.g."``, ``"U.S."``, ``"Mr."``);
* the ``.`` belongs to a list number at a line start (``"1. Sign in"``).

No whitespace after the dot means no end (``"2.5"``, ``"$4.99"``, ``"example.com/returns"``).
A line break also ends a unit when the line is a list item or a heading, ends with ``:``, is
followed by a blank line or by a list item: each list item is its own unit. Other line breaks are
soft wraps and stay inside the sentence.

A boundary is only decided once the first character after it is seen, so ``feed`` may hold back
the end of a complete sentence until the next piece arrives; ``flush`` releases it.
"""
from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    "e.g i.e vs approx appt apt dept inc ltd co corp mr mrs ms dr prof sr jr st ave blvd "
    "no nos fig ca cf al min max incl excl tel ext hr hrs yr jan feb apr jun jul aug sep sept "
    "oct nov dec".split()
)
# "no." is a reply ("No. We never sell ..."): an abbreviation only before a digit ("No. 5").
_ABBREV_BEFORE_DIGIT_ONLY = frozenset({"no", "nos", "fig"})
_TERMINAL = ".!?"
_CLOSERS = "\"')]}\u201d\u2019*_"
_CITATION = re.compile(r"[ \t]?\[\d{1,3}(?:\s*[,\u2013-]\s*\d{1,3})*\]")
_OPEN_CITATION = re.compile(r"[ \t]?\[[\d,\s\u2013-]*\Z")
_LIST_ITEM = re.compile(r"[ \t]*(?:\d{1,3}[.)]|[-*\u2022+])[ \t]+")
_LIST_NUMBER_BEFORE = re.compile(r"(?:^|\n)[ \t]*\d{1,3}$")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]$")  # "U.S" / "e.g" (final dot excluded)


class SentenceSplitter:
    """Incremental splitter: ``feed`` pieces, get whole sentences; ``flush`` at the end."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, piece: str) -> list[str]:
        """Append ``piece``; return the sentences that are now known to be complete."""
        self._buf += piece
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """Return everything still held (the last sentence, maybe unterminated) and reset."""
        out = self._drain(final=True)
        if self._buf:
            out.append(self._buf)
        self._buf = ""
        return out

    def _drain(self, final: bool) -> list[str]:
        out = []
        while self._buf:
            end = _find_end(self._buf, final)
            if end is None:
                break
            out.append(self._buf[:end])
            self._buf = self._buf[end:]
        return out


def split_sentences(text: str) -> list[str]:
    """All sentences of a complete text (same rules as the streaming splitter)."""
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.flush()


class _Wait(Exception):
    """The buffer ends before the boundary can be decided."""


def _find_end(text: str, final: bool) -> int | None:
    """Index just after the first complete unit of ``text`` (its trailing whitespace included),
    or None when there is none yet (or, with ``final``, when the text has no boundary inside)."""
    n = len(text)
    line_start = 0
    i = 0
    try:
        while i < n:
            c = text[i]
            if c in _TERMINAL:
                end = _terminal_end(text, i, line_start, final)
                if end is not None:
                    return end
            elif c == "\n":
                end = _newline_end(text, i, line_start, final)
                if end is not None:
                    return end
                line_start = i + 1
            i += 1
    except _Wait:
        return None
    return None


def _skip_space(text: str, j: int, final: bool) -> int:
    """Index of the first non-whitespace character at or after ``j``; waits if there is none."""
    n = len(text)
    while j < n and text[j].isspace():
        j += 1
    if j == n and not final:
        raise _Wait
    return j


def _terminal_end(text: str, i: int, line_start: int, final: bool) -> int | None:
    n = len(text)
    j = i
    while j < n and text[j] in _TERMINAL:
        j += 1
    while j < n and text[j] in _CLOSERS:
        j += 1
    while True:  # citation markers right after the end, on the same line: "free. [1][2]"
        m = _CITATION.match(text, j)
        if m:
            j = m.end()
            continue
        if not final and _OPEN_CITATION.match(text, j):
            raise _Wait  # "[1" may still become a citation marker
        break
    if j == n:
        if final:
            return n
        raise _Wait
    if not text[j].isspace():
        return None  # "2.5", "$4.99", "example.com/x", "e.g.,"
    k = _skip_space(text, j, final)
    if k == n:
        return n
    nxt = text[k]
    run = text[i:j]
    if run.startswith(".") and not run.startswith("..."):
        before = text[line_start:i]
        if _LIST_NUMBER_BEFORE.search("\n" + before) and "\n" not in text[j:k]:
            return None  # the "1." of a list item
        if "\n\n" not in text[j:k]:
            if nxt.islower():
                return None
            m = _WORD_BEFORE.search(before)
            if m:
                word = m.group(1)
                low = word.lower()
                if _DOTTED_ACRONYM.fullmatch(word):
                    return None
                if low in ABBREVIATIONS and (low not in _ABBREV_BEFORE_DIGIT_ONLY or nxt.isdigit()):
                    return None
    return k


def _newline_end(text: str, i: int, line_start: int, final: bool) -> int | None:
    """A line break that ends a unit (list item, heading, paragraph, colon), else None."""
    line = text[line_start:i]
    if not line.strip():
        return None  # leading blank lines stay with what follows
    k = _skip_space(text, i, final)
    gap = text[i:k]
    if k == len(text) and final:
        return k
    if gap.count("\n") > 1:
        return k
    if _LIST_ITEM.match(line) or line.lstrip().startswith("#") or line.rstrip().endswith(":"):
        return k
    if _starts_list_item(text, i + 1, final) or text[k:k + 1] == "#":
        return k
    return None


def _starts_list_item(text: str, start: int, final: bool) -> bool:
    """Whether the line at ``start`` opens with a list marker ("1. ", "- "); waits while the
    characters seen so far could still become one ("1", "12.", "-")."""
    m = _LIST_ITEM.match(text, start)
    if m:
        return True
    if final:
        return False
    partial = re.match(r"[ \t]*(?:\d{1,3}[.)]?|[-*\u2022+])?$", text[start:])
    if partial:
        raise _Wait
    return False
