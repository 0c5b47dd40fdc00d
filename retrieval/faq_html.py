"""FAQ entries that HTML pages mark up themselves, and the text helpers the HTML parser shares.

``take_entries(root, soup)`` finds the question/answer structures of a page, in this order:

1. schema.org ``Question`` microdata (``itemprop="name"`` + ``acceptedAnswer``);
2. ``<details><summary>Q</summary>A</details>`` (a ``<details>`` holding others is a group, and
   its summary becomes a heading over them);
3. accordions: a trigger with ``aria-controls`` naming its panel, or an element whose class names
   a question or accordion trigger (``faq-question``, ``accordion-button``, ``question`` ...)
   followed by its panel;
4. ``<dl>`` lists whose terms ask questions (a glossary of terms stays text).

Each structure is replaced in the tree by a placeholder line (``placeholder_index`` reads it), so
the entries keep their place among the page's headings. Accordion panels are often ``hidden``
until clicked, so this runs before hidden elements are dropped. A disclosure whose label is not a
question (a "Show more" box, a tab, a menu) is left alone, unless it sits in FAQ or accordion
markup or, for ``<details>``, the page's other disclosures ask questions.

``jsonld_entries(soup)`` reads FAQPage JSON-LD (``<script type="application/ld+json">``), which
often repeats the visible entries; the caller adds only the questions not already on the page.
"""
from __future__ import annotations

import json
import re

from bs4 import BeautifulSoup
from bs4.element import PreformattedString, Tag

from .faq_layouts import clean_question, heading_question, strip_answer_marker

BLOCKS = ["p", "div", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "section",
          "article", "blockquote", "pre", "br", "hr", "h4", "h5", "h6", "figcaption", "details",
          "summary", "address"]
HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
BREAK = "\ue000"  # private-use marker for a block boundary; becomes a newline after whitespace
_PLACE = "\ue004"  # private-use marker around an entry's placeholder number
_SPACE = re.compile(r"\s+")  # HTML collapses any whitespace run to one space
_PLACEHOLDER = re.compile(rf"^{_PLACE}(\d+){_PLACE}$")
_QUESTION_CLASS = re.compile(
    r"^(?:.*[-_])?(?:question|faq-?q)$"
    r"|^(?:.*[-_])?accordion[-_]+(?:button|header|heading|title|toggle|trigger)$"
    r"|^faq[-_]+(?:item[-_]+)?(?:title|toggle|trigger|heading|header|button)$", re.I)
_FAQ_HINT = re.compile(r"accordion|faq|collaps|toggle|question|expand|disclosure", re.I)
_ICONS = "+-\u2212\u2013\u2014\u00d7\u25be\u25bc\u25b8\u203a\u00bb\u2304\u02c5\u2715\u25b2\u25b4"


def lines(parts: list[str]) -> str:
    """One line per block element (nested blocks would otherwise leave runs of blank lines)."""
    text = _SPACE.sub(" ", "".join(parts)).replace(BREAK, "\n")
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


def mark_blocks(tag: Tag, names: list[str] = BLOCKS) -> None:
    for block in tag.find_all(names):
        block.insert_before(BREAK)
        block.append(BREAK)


def _hidden(tag: Tag) -> list[Tag]:
    return tag.find_all(attrs={"hidden": True}) + tag.find_all(attrs={"aria-hidden": "true"})


def element_text(tag: Tag) -> str:
    """The text of an answer element, one line per block; buttons and hidden parts dropped."""
    for inner in tag.find_all(["button", "script", "style", "template", "svg"]) + _hidden(tag):
        if not inner.decomposed:
            inner.decompose()
    mark_blocks(tag, BLOCKS + ["h1", "h2", "h3"])  # a heading inside an answer is a line of it
    strings = tag.find_all(string=True)
    return lines([str(s) for s in strings if not isinstance(s, PreformattedString)])


def _label_text(tag: Tag) -> str:
    text = " ".join(tag.get_text(" ").replace(BREAK, " ").split())
    return clean_question(text.strip(_ICONS + " "))


def _is_trigger(tag: Tag) -> bool:
    return any(_QUESTION_CLASS.match(c) for c in tag.get("class", []))


def _holds_questions(panel: Tag) -> bool:
    return panel.find(attrs={"aria-controls": True}) is not None or panel.find(_is_trigger) is not None


def placeholder_index(line: str) -> int | None:
    match = _PLACEHOLDER.match(line)
    return int(match.group(1)) if match else None


class _Taker:
    def __init__(self, root: Tag, soup: BeautifulSoup) -> None:
        self.root, self.soup = root, soup
        self.entries: list[tuple[str, str]] = []

    def _placeholder(self, question: str, answer: str) -> Tag | None:
        answer = strip_answer_marker(answer).strip()
        if not question or not answer:
            return None
        tag = self.soup.new_tag("p")
        tag.string = f"{_PLACE}{len(self.entries)}{_PLACE}"
        self.entries.append((question, answer))
        return tag

    @staticmethod
    def _become(item: Tag, tags: list[Tag]) -> None:
        # The item turns into a <div> of placeholders in place: inserting beside it would make
        # bs4 search the parent's children, which is slow on long flat pages.
        item.clear(decompose=True)
        item.name, item.attrs = "div", {}
        for tag in tags:
            item.append(tag)

    def place(self, item: Tag, question: str, answer: str, panel: Tag | None = None) -> bool:
        """Replace ``item`` (and ``panel``, when the answer lives apart from it) by the entry."""
        tag = self._placeholder(question, answer)
        if tag is None:
            return False
        self._become(item, [tag])
        if panel is not None and not panel.decomposed:
            panel.decompose()
        return True

    @staticmethod
    def group(trigger: Tag, panel: Tag, label: str) -> None:
        """A trigger whose panel holds more questions ("Shipping" opening a list of questions)
        becomes a heading over them, and its panel stays readable though it is hidden."""
        if trigger.name not in HEADINGS:
            trigger.clear(decompose=True)
            trigger.name, trigger.attrs = "h6", {}
            trigger.string = label
        for attr in ("hidden", "aria-hidden"):
            panel.attrs.pop(attr, None)

    def microdata(self) -> None:
        for item in self.root.find_all(itemtype=re.compile(r"schema\.org/Question", re.I)):
            if item.decomposed:
                continue
            answer = item.find(itemprop=re.compile(r"^(accepted|suggested)Answer$"))
            name = next((n for n in item.find_all(itemprop="name")
                         if not any(p is answer for p in n.parents)), None)
            if answer is None or name is None:
                continue
            body = answer.find(itemprop="text") or answer
            question = _label_text(name)
            name.decompose()
            self.place(item, question, element_text(body))

    def details(self) -> None:
        every = self.root.find_all("details")
        groups = [d for d in every if d.find("details") is not None]
        leaves = [d for d in every if d.find("details") is None]
        labels = [(d, d.find("summary")) for d in leaves]
        if not any(s is not None and heading_question(_label_text(s)) for _, s in labels):
            return
        for item, summary in labels:
            if summary is None:
                continue
            question = _label_text(summary)
            summary.extract()
            if not self.place(item, question, element_text(item)):
                item.insert(0, summary)  # nothing to answer with: leave the text as it was
        for group in groups:  # a group of questions: its label is a heading over them
            summary = group.find("summary")
            if summary is not None:
                summary.name = "h6"

    def _accepts(self, trigger: Tag, question: str) -> bool:
        if heading_question(question):
            return True
        near = [trigger] + list(trigger.parents)[:4]
        return any(_FAQ_HINT.search(" ".join(t.get("class", [])) + " " + (t.get("id") or ""))
                   for t in near if isinstance(t, Tag))

    def _trigger(self, tag: Tag) -> Tag:
        # <h3><button aria-controls=...>Q</button></h3>: the heading goes with its button.
        return tag.parent if tag.parent is not None and tag.parent.name in HEADINGS else tag

    def aria(self) -> None:
        ids: dict[str, Tag] = {}
        for tag in self.soup.find_all(id=True):
            ids.setdefault(tag["id"], tag)
        for tag in self.root.find_all(attrs={"aria-controls": True}):
            if tag.decomposed:
                continue
            panel = ids.get(tag["aria-controls"])
            if panel is None or panel.decomposed or panel is tag:
                continue
            if any(p is panel for p in tag.parents) or any(p is tag for p in panel.parents):
                continue
            trigger = self._trigger(tag)
            question = _label_text(trigger)
            # Tabs, menus and "Show more" toggles control panels too: they are entries only when
            # they ask a question or sit in FAQ/accordion markup.
            if not self._accepts(trigger, question):
                continue
            if _holds_questions(panel):
                self.group(trigger, panel, question)
            else:
                self.place(trigger, question, element_text(panel), panel)

    def classes(self) -> None:
        found = self.root.find_all(_is_trigger)
        ids = {id(t) for t in found}  # identity: Tag.__eq__ compares markup, not position
        for tag in found:
            if tag.decomposed or any(id(p) in ids for p in tag.parents):  # outermost only
                continue
            panel, node = None, tag
            for _ in range(3):  # the panel follows the trigger, or the trigger's wrapper
                panel = node.find_next_sibling()
                if panel is not None or node.parent is None or node.parent is self.root:
                    break
                node = node.parent
            if panel is None or _is_trigger(panel):
                continue
            if _holds_questions(panel):
                self.group(tag, panel, _label_text(tag))
            else:
                self.place(tag, _label_text(tag), element_text(panel), panel)

    def definition_lists(self) -> None:
        for dl in self.root.find_all("dl"):
            if dl.decomposed:
                continue
            pairs: list[list] = []
            for child in dl.find_all(["dt", "dd"]):
                if child.name == "dt":
                    if pairs and not pairs[-1][1]:  # several terms for one description
                        pairs[-1][0] += " " + _label_text(child)
                    else:
                        pairs.append([_label_text(child), []])
                elif pairs:
                    pairs[-1][1].append(child)
            if not any(heading_question(q) for q, _ in pairs):
                continue
            tags = [self._placeholder(q, "\n".join(element_text(a) for a in answers))
                    for q, answers in pairs]
            self._become(dl, [t for t in tags if t is not None])


def take_entries(root: Tag, soup: BeautifulSoup) -> list[tuple[str, str]]:
    """Replace the page's FAQ structures by placeholders; return their ``(question, answer)``."""
    taker = _Taker(root, soup)
    taker.microdata()
    taker.details()
    taker.aria()
    taker.classes()
    taker.definition_lists()
    return taker.entries


def _objects(data):
    if isinstance(data, dict):
        yield data
        for value in data.values():
            yield from _objects(value)
    elif isinstance(data, list):
        for value in data:
            yield from _objects(value)


def jsonld_entries(soup: BeautifulSoup) -> list[tuple[str, str]]:
    """``(question, answer)`` of every schema.org ``Question`` in the page's JSON-LD.

    A script that is not valid JSON is skipped: it is page furniture, not the owner's content,
    and a typo in it should not reject the page.
    """
    out = []
    for script in soup.find_all("script", type=re.compile(r"ld\+json", re.I)):
        try:
            data = json.loads(script.string or "")
        except ValueError:
            continue
        for obj in _objects(data):
            kinds = obj.get("@type")
            if "Question" not in (kinds if isinstance(kinds, list) else [kinds]):
                continue
            answer = obj.get("acceptedAnswer") or obj.get("suggestedAnswer")
            answer = answer[0] if isinstance(answer, list) and answer else answer
            text = answer.get("text") if isinstance(answer, dict) else None
            question = obj.get("name") or obj.get("text")
            if isinstance(question, str) and isinstance(text, str):
                body = BeautifulSoup(f"<div>{text}</div>", "lxml").div
                question = " ".join(BeautifulSoup(question, "lxml").get_text(" ").split())
                question = clean_question(question)
                answer_text = strip_answer_marker(element_text(body)).strip()
                if question and answer_text:
                    out.append((question, answer_text))
    return out
