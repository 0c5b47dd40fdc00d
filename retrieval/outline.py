"""Turn a stream of headings and body text into ``Section``s with heading paths.

Shared by the Markdown, HTML and DOCX parsers so that every format gets the same rules:

* a section is the body text under one heading; headings with no body of their own produce no
  section but stay in the path of the headings below them ("Billing > Refunds");
* the document title is left out of the paths when it is the only top-level heading (it would
  otherwise prefix every section with the same words);
* a heading that is a question followed by its answer becomes a ``kind="faq"`` section with
  ``question``/``answer`` set and ``text = question + "\\n" + answer`` (kept whole by the chunker).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .types import Section

_QUESTION_END = ("?", "\uff1f")  # ASCII and full-width question marks
_BLANK_RUNS = re.compile(r"\n{3,}")


def is_question(heading: str) -> bool:
    return heading.rstrip().endswith(_QUESTION_END)


def tidy(text: str) -> str:
    """Strip trailing spaces on each line and collapse runs of blank lines."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


@dataclass
class _Block:
    level: int  # heading level 1..9, or 0 for body text before any heading
    heading: str
    body: list[str] = field(default_factory=list)


class Outline:
    """Collects ``heading(level, text)`` and ``add(text)`` calls, then ``sections(title)``."""

    def __init__(self) -> None:
        self._blocks: list[_Block] = [_Block(0, "")]

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if text:
            self._blocks.append(_Block(level, text))

    def add(self, text: str) -> None:
        if text.strip():
            self._blocks[-1].body.append(text)

    def first_heading(self) -> str:
        return next((b.heading for b in self._blocks if b.level), "")

    def sections(self, title: str) -> list[Section]:
        top = [b for b in self._blocks if b.level == 1]
        drop_title = len(top) == 1 and top[0].heading == title
        out: list[Section] = []
        stack: list[_Block] = []
        for block in self._blocks:
            if block.level:
                while stack and stack[-1].level >= block.level:
                    stack.pop()
                stack.append(block)
            body = tidy("\n".join(block.body))
            if not body:
                continue
            names = [b.heading for b in stack if not (drop_title and b.level == 1)]
            path = " > ".join(names)
            if block.level and is_question(block.heading):
                out.append(
                    Section(
                        text=f"{block.heading}\n{body}",
                        heading=path,
                        kind="faq",
                        question=block.heading,
                        answer=body,
                    )
                )
            else:
                out.append(Section(text=body, heading=path))
        return out
