"""Reading FAQ entries out of a block of text: question markers, bold questions, answer markers.

The Markdown, text, HTML and DOCX parsers reduce a document to headings and *blocks* (a
paragraph, a list item, a line of a page). This module reads one block and says whether it
starts an FAQ entry, which text is the question and which raw text begins the answer; ``Outline``
(retrieval.outline) decides over the whole document which candidates become entries.

Candidate forms, strongest first:

* ``strong``: an explicit question marker (``Q:``, ``Q1.``, ``Question 3:``, bold or not), or a
  bold/italic lead that is a question (``**How do I pay?**``, ``__...?__``, a bold Word run,
  ``<strong>`` in HTML). One such line is enough to make an entry;
* ``numbered``: a line ``3. How do I ...?``;
* ``plain``: a line that is one question sentence on its own.

A bulleted line (``- **How do I pay?**``) can be a ``strong`` candidate, never a weaker one: a
bullet list of questions is more often a list of things to ask oneself than an FAQ.

A question inside a paragraph ("Wondering why? Because ...") is never a candidate: the question
must be the whole first line of its block (or the bold lead of it).

Markers (``Q:``, ``A:``, ``Question:``, ``**A:**``, ``Q1.``, a leading ``3.``) never reach the
stored question or answer. Emphasis inside an answer is the answer's own formatting and is kept
(the chat widget renders ``**bold**``).
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Callable

from markdown_it import MarkdownIt

from .types import Section

QUESTION_END = ("?", "\uff1f")  # ASCII and full-width question marks
# Bold spans in text read from HTML (<strong>, <b>) and Word (bold runs): private-use characters
# that never occur in real text, removed before anything is stored.
STRONG_OPEN, STRONG_CLOSE = "\ue002", "\ue003"

_OPEN = r"(?:\*\*|__|\*|_|\ue002)"
_CLOSE = r"(?:\*\*|__|\*|_|\ue003)"
# "Q:", "Q.", "Q1.", "Q 1)", "Question:", "Question 3 -" (answers likewise: "A1."); "." and ")"
# need a space after them so that "Q.E.D." or "A.M." are not read as markers.
_MARK_TAIL = r"\s*#?\s*\d{0,3}\s*(?::|[.)](?=\s)|\s[-\u2013\u2014](?=\s))\s*"
_Q_MARK = re.compile(rf"^\s*(?:Q|[Qq]uestion|QUESTION){_MARK_TAIL}")
_A_MARK = re.compile(
    rf"^\s*(?P<o>{_OPEN})?\s*(?:A|Ans|[Aa]nswer|ANSWER)\s*\d{{0,3}}\s*(?P<c1>{_CLOSE})?"
    rf"\s*(?::|[.)](?=\s)|\s[-\u2013\u2014](?=\s))[ \t]*(?P<c2>{_CLOSE})?[ \t]*"
)
_INLINE_A = re.compile(rf"\s(?={_OPEN}?\s*(?:A|[Aa]nswer|ANSWER)\s*{_CLOSE}?\s*:)")
_Q_HINT = re.compile(rf"^[\s*_+\-{STRONG_OPEN}]*(?:Q|[Qq]uestion|QUESTION)")
_BULLET = re.compile(r"^\s*[-*+]\s+")
_NUMBER = re.compile(r"^\s*\(?\d{1,3}[.)](?=\s)\s*")
_INNER_SENTENCE_END = re.compile(r"[.!?]\s+[A-Z]")
_MD_STRONG = re.compile(r"^[ \t]*(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1(?![*_])")
_MARKED_STRONG = re.compile(rf"^[ \t]*{STRONG_OPEN}([^{STRONG_CLOSE}]*){STRONG_CLOSE}")
_MARKED_JOIN = re.compile(rf"{STRONG_CLOSE}([ \t]*){STRONG_OPEN}")
_SPACES = re.compile(r"[ \t]{2,}")
_LABEL_END = ".?!:;,\u2026\uff1f"


@dataclass(frozen=True)
class Markup:
    """How one format writes emphasis, so that every format is read by the same rules.

    ``strong_lead(line)`` gives ``(inside, after)`` when the line starts with a bold/italic span;
    ``plain(raw)`` is the text with all markup removed (questions, headings); ``display(raw)`` is
    what an answer stores (Markdown keeps its own formatting, HTML/Word lose the bold markers).
    """

    strong_lead: Callable[[str], tuple[str, str] | None]
    plain: Callable[[str], str]
    display: Callable[[str], str]


_md_inline = MarkdownIt("commonmark")


def _md_strong(line: str) -> tuple[str, str] | None:
    match = _MD_STRONG.match(line)
    return (match.group(2), line[match.end():]) if match else None


def _md_plain(raw: str) -> str:
    tokens = _md_inline.parseInline(raw)
    children = (tokens[0].children or []) if tokens else []
    parts = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":  # its alt text
            parts.append("".join(c.content for c in child.children or []))
    return " ".join("".join(parts).split())


def _marked_strong(line: str) -> tuple[str, str] | None:
    joined = _MARKED_JOIN.sub(r"\1", line)  # adjacent bold runs are one span
    match = _MARKED_STRONG.match(joined)
    return (match.group(1), joined[match.end():]) if match else None


def _marked_display(raw: str) -> str:
    text = raw.replace(STRONG_OPEN, "").replace(STRONG_CLOSE, "")
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))


MARKDOWN = Markup(_md_strong, _md_plain, lambda raw: raw)
MARKED = Markup(_marked_strong, lambda raw: " ".join(_marked_display(raw).split()), _marked_display)


# --- questions --------------------------------------------------------------------------------


def strip_question_marker(text: str) -> tuple[str, bool]:
    """``("How do I pay?", True)`` for ``"Q1: How do I pay?"``; the flag: a Q marker led it."""
    match = _Q_MARK.match(text)
    if match:
        return text[match.end():].strip(), True
    return text.strip(), False


def is_question(text: str) -> bool:
    return text.rstrip().endswith(QUESTION_END)


def heading_question(text: str) -> str:
    """The question a heading (or summary, or accordion button) asks, markers removed; "" if none.

    ``"Q: Opening hours"`` is a question (the marker says so); ``"3. How do I pay?"`` is
    ``"How do I pay?"``; ``"Shipping"`` and ``"1. Introduction"`` are not questions.
    """
    question, marked = strip_question_marker(text)
    number = _NUMBER.match(question)
    if number and is_question(question):
        question = question[number.end():].strip()
    return question if question and (marked or is_question(question)) else ""


def clean_question(text: str) -> str:
    """A question's text without markers, whether or not it ends with a question mark."""
    return heading_question(text) or strip_question_marker(text)[0]


def one_question_line(text: str) -> bool:
    """A line that is a single question sentence, short enough to be an FAQ question."""
    text = text.strip()
    return (
        is_question(text)
        and len(text) <= 200
        and len(text.split()) <= 30
        and not (text[0].isascii() and text[0].isalpha() and text[0].islower())
        and text[0] not in "-*+>|"
        and not _INNER_SENTENCE_END.search(text[:-1])
    )


@dataclass
class Candidate:
    """A block that may start an FAQ entry: its question and the raw text that begins the answer."""

    form: str  # "strong" | "numbered" | "plain"
    question: str
    answer_head: str
    bold: bool = False  # the question was set in bold (then bold lines are read as sub-headings)


def _join(first: str, rest: str) -> str:
    return "\n".join(p for p in (first.strip(), textwrap.dedent(rest).strip()) if p)


def _marked_question(markup: Markup, line: str, rest: str, bold: bool) -> Candidate | None:
    """A question after a Q marker; an ``A:`` later on the same line starts the answer."""
    inline = _INLINE_A.search(line)
    cut = inline.start() if inline else len(line)
    question_part, answer_part = line[:cut], line[cut:]
    question = clean_question(markup.plain(question_part))
    return Candidate("strong", question, _join(answer_part, rest), bold) if question else None


def classify(raw: str, markup: Markup) -> Candidate | None:
    """The candidate entry that ``raw`` (one block) starts, or None; see the module docstring."""
    candidate = _classify(raw.strip("\n"), markup)
    if candidate and candidate.answer_head:
        # Keep the blank lines that end the block: they separate it from the next paragraph.
        candidate.answer_head += raw[len(raw.rstrip()):]
    return candidate


def _classify(raw: str, markup: Markup) -> Candidate | None:
    lead, _, rest = raw.partition("\n")
    if not (_Q_HINT.match(lead) or "?" in lead or "\uff1f" in lead):
        return None  # cheap test first: most lines of a long document ask nothing
    bullet = _BULLET.match(lead)
    if bullet:  # "- **How do I pay?**": a list of bold or marked questions
        lead = lead[bullet.end():]
    strong = markup.strong_lead(lead)
    if strong:
        inside, after = strong
        question, marked = strip_question_marker(markup.plain(inside))
        if marked and not question:  # "**Q:** How do I pay?"
            return _marked_question(markup, after, rest, bold=True)
        if marked or is_question(question):
            return Candidate("strong", clean_question(question), _join(after, rest), bold=True)
    plain = markup.plain(lead)
    if strip_question_marker(plain)[1]:
        return _marked_question(markup, lead, rest, bold=False)
    if bullet:  # a bulleted question without bold or marker is a list item, not an entry
        return None
    number = _NUMBER.match(plain)
    if number:
        question = plain[number.end():].strip()
        if not one_question_line(question):
            return None
        return Candidate("numbered", question, _join("", rest))
    if one_question_line(plain):
        return Candidate("plain", plain, _join("", rest))
    return None


def starts_entry(line: str, markup: Markup) -> bool:
    """A line that starts an entry even inside a block: ``Q: ...``, ``**...?**``, ``2. ...?``."""
    candidate = classify(line, markup)
    return candidate is not None and candidate.form in ("strong", "numbered")


def split_at_questions(raw: str, markup: Markup) -> list[str]:
    """``raw`` cut before every line after the first that starts an entry.

    Plain-text and Markdown FAQs often put ``Q:``/``A:`` pairs on consecutive lines with no blank
    line between them, which makes the whole list one paragraph.
    """
    lines = raw.split("\n")
    pieces, start = [], 0
    for i in range(1, len(lines)):
        if lines[i].strip() and starts_entry(lines[i], markup):
            pieces.append("\n".join(lines[start:i]))
            start = i
    pieces.append("\n".join(lines[start:]))
    return pieces


def label(raw: str, markup: Markup) -> str:
    """The text of a bold line standing alone as a sub-heading (``**Payments**``), else ""."""
    raw = raw.strip()
    strong = markup.strong_lead(raw) if "\n" not in raw else None
    if not strong or strong[1].strip():
        return ""
    text = markup.plain(strong[0])
    fits = text and len(text) <= 60 and len(text.split()) <= 8 and text[-1] not in _LABEL_END
    return text if fits else ""


# --- answers ----------------------------------------------------------------------------------


def strip_answer_marker(raw: str) -> str:
    """``raw`` without a leading ``A:`` / ``Answer:`` / ``**A:**`` marker.

    When the marker opens an emphasis that runs on (``**A: Yes, always.**``), the closing
    emphasis at the end of that paragraph goes too, so no stray ``**`` is left.
    """
    match = _A_MARK.match(raw)
    if not match:
        return raw
    text = raw[match.end():]
    opener = match.group("o")
    if opener and not (match.group("c1") or match.group("c2")):
        closer = STRONG_CLOSE if opener == STRONG_OPEN else opener
        head, sep, tail = text.partition("\n\n")
        if head.rstrip().endswith(closer):
            head = head.rstrip()[: -len(closer)]
        text = head + sep + tail
    return text


def faq_section(question: str, answer: str, path: str, section: str) -> Section:
    """The ``Section`` of one entry; ``section`` (nearest non-question heading) goes to metadata."""
    return Section(
        text=f"{question}\n{answer}",
        heading=path or question,
        kind="faq",
        question=question,
        answer=answer,
        metadata={"section": section} if section else {},
    )
