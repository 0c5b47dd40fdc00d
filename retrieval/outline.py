"""Turn a stream of headings, text blocks and FAQ entries into ``Section``s with heading paths.

Shared by the Markdown, text, HTML and DOCX parsers so that every format gets the same rules:

* a section is the body text under one heading; headings with no body of their own produce no
  section but stay in the path of the headings below them ("Billing > Refunds");
* the document title is left out of the paths when it is the only top-level heading (it would
  otherwise prefix every section with the same words);
* an FAQ entry becomes a ``kind="faq"`` section with ``question``/``answer`` set and
  ``text = question + "\\n" + answer`` (kept whole by the chunker). Entries are: a heading that is
  a question, followed by its answer; a block that starts a question (``Q:``, ``**...?**``,
  ``3. ...?``, a question line; see ``retrieval.faq_layouts``) followed by its answer; or an entry
  a format read from its own markup (``entry()``: HTML ``<details>``, ``<dl>``, accordions). An
  answer runs until the next heading or the next entry, so it keeps all its paragraphs and lists;
* an entry's ``metadata["section"]`` is the nearest heading above it that is not a question (and
  not the dropped title): "Shipping" for the questions under a "Shipping" heading;
* which block forms make entries is decided over the whole document, so that prose keeps
  reading as prose: markers and bold questions always do; numbered questions when the document
  has at least two with answers; a bare question line only when the document has no other form
  and has at least two of them with answers. A bold line standing alone ("**Payments**") is a
  sub-heading only in a document whose questions are bold, and only right before a question;
* a thematic break (``rule()``: Markdown ``---``, ``<hr>``) ends the answer above it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .faq_layouts import (
    Candidate,
    Markup,
    classify,
    faq_section,
    heading_question,
    label,
    split_at_questions,
    strip_answer_marker,
)
from .types import Section

_BLANK_RUNS = re.compile(r"\n{3,}")
_LABEL_LEVEL = 10  # bold sub-headings sit below every real heading level
_MIN_WEAK = 2  # numbered and bare question lines need this many answered ones in a document


def tidy(text: str) -> str:
    """Strip trailing spaces on each line and collapse runs of blank lines."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


@dataclass
class _Heading:
    level: int
    text: str  # plain text; for a question heading, the question without markers
    question: bool = False


@dataclass
class _Block:
    raw: str
    may_ask: bool = True  # False for tables, code and quotes: never a question
    glued: bool = False  # a piece of the block before it, joined with one newline


@dataclass
class _Entry:
    question: str
    answer: str


@dataclass
class _Rule:
    """A thematic break (Markdown ``---``, ``<hr>``): what follows is not the answer above it."""


@dataclass
class _Open:
    """What is being collected: body text, or the answer of ``question``."""

    blocks: list[_Block] = field(default_factory=list)
    question: str = ""
    from_heading: bool = False
    raw: str = ""  # the question block itself, kept as text if no answer follows


class Outline:
    """Collects ``heading``, ``add``, ``entry`` and ``rule`` calls, then gives ``sections(title)``.

    ``markup`` says how the format writes bold text (``faq_layouts.MARKDOWN`` or ``MARKED``);
    ``joiner`` separates consecutive blocks in a section's text ("\\n\\n" where a block is a
    paragraph of plain text, "\\n" where blocks carry their own blank lines or are lines).
    """

    def __init__(self, markup: Markup, joiner: str = "\n") -> None:
        self._markup, self._joiner = markup, joiner
        self._items: list[_Heading | _Block | _Entry | _Rule] = []

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if text:
            question = heading_question(text)
            self._items.append(_Heading(level, question or text, bool(question)))

    def add(self, text: str, may_ask: bool = True) -> None:
        if not text.strip():
            return
        pieces = split_at_questions(text, self._markup) if may_ask else [text]
        for i, piece in enumerate(pieces):
            self._items.append(_Block(piece, may_ask, glued=i > 0))

    def entry(self, question: str, answer: str) -> None:
        """An entry the format's own markup delimits (question and answer already plain text)."""
        question, answer = " ".join(question.split()), tidy(answer)
        if question and answer:
            self._items.append(_Entry(question, answer))

    def rule(self) -> None:
        self._items.append(_Rule())

    def first_heading(self, level: int | None = None) -> str:
        """The first heading's text (of that ``level`` when given), "" when there is none."""
        return next((i.text for i in self._items
                     if isinstance(i, _Heading) and (level is None or i.level == level)), "")

    def sections(self, title: str) -> list[Section]:
        top = [i for i in self._items if isinstance(i, _Heading) and i.level == 1]
        builder = _Builder(self._markup, self._joiner,
                           drop_title=len(top) == 1 and top[0].text == title)
        candidates = [classify(i.raw, self._markup) if isinstance(i, _Block) and i.may_ask else None
                      for i in self._items]
        forms = self._forms(candidates)
        bold_labels = any(c and c.form == "strong" and c.bold for c in candidates)
        for i, (item, candidate) in enumerate(zip(self._items, candidates)):
            # A bold line is a sub-heading only when questions follow it (in a document set all
            # in bold, an answer's short bold line is still part of the answer).
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            labels = bold_labels and nxt is not None and nxt.form in forms
            if isinstance(item, _Heading):
                builder.heading(item)
            elif isinstance(item, _Entry):
                builder.entry(item)
            elif isinstance(item, _Rule):
                builder.end_answer()
            elif candidate and candidate.form in forms:
                builder.question(candidate, item.raw)
            elif labels and (text := label(item.raw, self._markup)):
                builder.heading(_Heading(_LABEL_LEVEL, text))
            else:
                builder.block(item)
        builder.flush()
        return builder.out

    def _forms(self, candidates: list[Candidate | None]) -> set[str]:
        """The candidate forms that make entries in this document (see the module docstring)."""
        answered = {"strong": 0, "numbered": 0, "plain": 0}
        for i, candidate in enumerate(candidates):
            if candidate is None:
                continue
            nxt = self._items[i + 1] if i + 1 < len(self._items) else None
            follows = isinstance(nxt, _Block) and candidates[i + 1] is None
            if candidate.answer_head or follows:
                answered[candidate.form] += 1
        forms = {"strong"}
        if answered["numbered"] >= _MIN_WEAK:
            forms.add("numbered")
        # A bare question line is the weakest sign: only when the document has no other form.
        stronger = "numbered" in forms or any(c and c.form == "strong" for c in candidates) or any(
            isinstance(i, _Entry) or (isinstance(i, _Heading) and i.question) for i in self._items)
        if not stronger and answered["plain"] >= _MIN_WEAK:
            forms.add("plain")
        return forms


class _Builder:
    """Walks the items in order, keeping the heading stack and what is being collected."""

    def __init__(self, markup: Markup, joiner: str, drop_title: bool) -> None:
        self.markup, self.joiner, self.drop_title = markup, joiner, drop_title
        self.stack: list[_Heading] = []
        self.open = _Open()
        self.out: list[Section] = []

    def _shown(self) -> list[_Heading]:
        return [h for h in self.stack if not (self.drop_title and h.level == 1)]

    def _path(self, *extra: str) -> str:
        return " > ".join([h.text for h in self._shown()] + list(extra))

    def _section(self) -> str:
        return next((h.text for h in reversed(self._shown()) if not h.question), "")

    def _text(self, blocks: list[_Block]) -> str:
        parts: list[str] = []
        for block in blocks:
            shown = self.markup.display(block.raw)
            if block.glued and parts:
                parts[-1] += "\n" + shown
            else:
                parts.append(shown)
        return tidy(self.joiner.join(parts))

    def heading(self, heading: _Heading) -> None:
        self.flush()
        while self.stack and self.stack[-1].level >= heading.level:
            self.stack.pop()
        self.stack.append(heading)
        if heading.question:
            self.open = _Open(question=heading.text, from_heading=True)

    def end_answer(self) -> None:
        """Close what is open; a question heading above leaves the path, its answer is over."""
        self.flush()
        while self.stack and self.stack[-1].question:
            self.stack.pop()

    def question(self, candidate: Candidate, raw: str) -> None:
        self.end_answer()
        head = [_Block(candidate.answer_head)] if candidate.answer_head else []
        self.open = _Open(blocks=head, question=candidate.question, raw=raw)

    def entry(self, entry: _Entry) -> None:
        self.end_answer()
        self.out.append(faq_section(entry.question, entry.answer, self._path(entry.question),
                                    self._section()))

    def block(self, block: _Block) -> None:
        self.open.blocks.append(block)

    def flush(self) -> None:
        current, self.open = self.open, _Open()
        if not current.question:
            body = self._text(current.blocks)
            if body:
                self.out.append(Section(text=body, heading=self._path()))
            return
        blocks = current.blocks
        if blocks:  # the first answer block may open with "A:" / "**A:**"
            blocks = [_Block(strip_answer_marker(blocks[0].raw), blocks[0].may_ask)] + blocks[1:]
        answer = self._text(blocks)
        if current.from_heading:
            # The heading is on the stack: it is already the last part of the path.
            if answer:
                self.out.append(faq_section(current.question, answer, self._path(),
                                            self._section()))
        elif answer:
            self.out.append(faq_section(current.question, answer,
                                        self._path(current.question), self._section()))
        else:  # a question with nothing after it is just text
            self.out.append(Section(text=self._text([_Block(current.raw)]), heading=self._path()))
