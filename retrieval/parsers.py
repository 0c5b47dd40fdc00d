"""Read uploaded files into ``ParsedDocument``s.

``parse_file(path, settings)`` and ``parse_bytes(name, data, settings)`` are the entry points; a
registry (``PARSERS``) maps a lower-case suffix to a parser ``(name, data, settings) -> docs``.

Contract, for every format:

* every failure is a ``bot.core.errors.IngestError`` (or its subclasses ``UnsupportedFileType``,
  ``FileTooLarge``) whose message starts with the file name; a file is parsed completely or not
  at all, so a bad line never leaves half a file behind;
* single-document files (Markdown, text, HTML, PDF, DOCX) get ``external_id`` = the file name, so
  uploading a file of the same name again replaces it; title = first heading (or the format's own
  title field), else the file stem;
* multi-document files (CSV FAQ, JSONL knowledge base) give one document per row/line with an id
  that survives re-uploads (see ``_csv_id``) and ``source`` = the file name;
* FAQ entries (``Section(kind="faq")`` with the question and its whole answer) come from CSV and
  JSONL rows and, in documents, from every common FAQ layout: question headings, bold questions,
  ``Q:``/``A:`` and ``Question:``/``Answer:`` pairs, numbered questions, question lines in plain
  text, and HTML's own FAQ markup. ``retrieval.outline`` has the rules, ``retrieval.faq_layouts``
  the markers and ``retrieval.faq_html`` the HTML structures. Prose stays prose.

Text encodings: see ``parse_util.decode_text`` (UTF-8, or a BOM, or an HTML ``<meta charset>``;
anything else is rejected with the likely encoding named, never guessed).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Callable

import yaml
from markdown_it import MarkdownIt

from bot.core.errors import FileTooLarge, IngestError, UnsupportedFileType
from bot.core.settings import IngestSettings

from .faq_layouts import MARKDOWN, starts_entry
from .outline import Outline, tidy
from .parse_util import decode_text, single_document
from .parsers_office import parse_docx, parse_html, parse_pdf
from .types import ParsedDocument, Section

Parser = Callable[[str, bytes, IngestSettings], list[ParsedDocument]]

# --- Markdown and plain text ------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)\n", re.S)
_md = MarkdownIt("commonmark")


def _inline_text(token) -> str:
    """Plain text of a heading's inline token (``**bold**`` and ``code`` markers removed)."""
    parts = [c.content for c in token.children or [] if c.type in ("text", "code_inline")]
    return "".join(parts) or token.content


# Top-level Markdown blocks that never hold a question (code, quotes, raw HTML, rules).
_NO_QUESTION = {"fence", "code_block", "blockquote_open", "html_block", "table_open"}


def _markdown_blocks(tokens, lines: list[str]):
    """``(token index, token, source text)`` per top-level block, each running to the next block.

    A list whose items ask questions ("1. How do I book?" or "- **Can I pay later?**", each
    with its answer) is given item by item, so each question can start its own entry.
    """
    tops = [(i, t) for i, t in enumerate(tokens) if t.level == 0 and t.map and t.nesting >= 0]
    for n, (i, tok) in enumerate(tops):
        end = tops[n + 1][1].map[0] if n + 1 < len(tops) else len(lines)
        if tok.type in ("ordered_list_open", "bullet_list_open"):
            stop = tops[n + 1][0] if n + 1 < len(tops) else len(tokens)
            items = [t.map[0] for t in tokens[i:stop]
                     if t.type == "list_item_open" and t.level == 1]
            if any(starts_entry(lines[start], MARKDOWN) for start in items):
                for start, until in zip(items, items[1:] + [end]):
                    yield i, tok, "\n".join(lines[start:until])
                continue
        yield i, tok, "\n".join(lines[tok.map[0]:end])


def parse_markdown(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    text = decode_text(name, data)
    front: dict = {}
    match = _FRONT_MATTER.match(text)
    if match:  # YAML front matter of static-site help centres (Jekyll, Hugo, Docusaurus)
        try:
            loaded = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            raise IngestError(name, f"has invalid YAML front matter: {err}") from None
        front = loaded if isinstance(loaded, dict) else {}
        text = text[match.end():]
    lines = text.split("\n")
    outline = Outline(MARKDOWN)
    tokens = _md.parse(text)
    for i, tok, source in _markdown_blocks(tokens, lines):
        if tok.type == "heading_open":
            outline.heading(int(tok.tag[1:]), _inline_text(tokens[i + 1]))
        elif tok.type == "hr":
            outline.rule()
        else:
            outline.add(source, may_ask=tok.type not in _NO_QUESTION)
    title = str(front.get("title") or "").strip() or outline.first_heading()
    meta = {k: v for k, v in front.items() if k != "title" and isinstance(v, (str, int, float, bool))}
    return single_document(name, title, outline.sections(title), "text/markdown", **meta)


# Plain-text section headings: a line underlined with === or ---, or a short line in capitals.
_UNDERLINE = re.compile(r"^\s*(={2,}|-{2,})\s*$")
_RULE = re.compile(r"^\s*(?:-{3,}|={3,}|\*{3,}|_{3,})\s*$")
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")


def _caps_heading(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    # A colon marks a label or an answer ("NOTE: ...", "A: NO"), not a heading.
    return (len(letters) >= 3 and all(c.isupper() for c in letters) and len(line.strip()) <= 60
            and line.strip()[-1] not in ".?!;," and ":" not in line)


def _text_outline(body: str, outline: Outline | None = None) -> Outline:
    outline = outline or Outline(MARKDOWN, joiner="\n\n")
    for paragraph in _PARAGRAPHS.split(body):
        if _RULE.match(paragraph):
            outline.rule()
            continue
        lines, kept = paragraph.split("\n"), []
        i = 0
        while i < len(lines):
            line = lines[i]
            underlined = i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]) and line.strip()
            if underlined or _caps_heading(line):
                outline.add("\n".join(kept))
                kept = []
                outline.heading(1 if underlined and "=" in lines[i + 1] else 2, line)
                i += 2 if underlined else 1
                continue
            kept.append(line)
            i += 1
        outline.add("\n".join(kept))
    return outline


def _title_line(paragraph: str) -> bool:
    """A text's opening paragraph that is its title: one short line ending in no punctuation
    ("Making a Claim With Harborline"), not a sentence ("Open 9 to 5.")."""
    line = paragraph.strip()
    return bool(line) and "\n" not in line and len(line) <= 80 and line[-1] not in ".?!:;," and not _caps_heading(line)


def _article(body: str) -> tuple[str, list[Section]] | None:
    """A prose text laid out as an article (a help center's plain-text export): its title and its
    sections, one per heading; None when it is not one.

    Headings are lines underlined with ``===`` / ``---`` or lines in capitals; the title is a first
    line underlined with ``===``, else an opening line of its own above the headings. A title and a
    heading, or two headings, make an article: a lone capitalised line in a note is not worth
    splitting it.
    """
    first, _, rest = body.partition("\n\n")
    lead = first.strip() if rest.strip() and _title_line(first) else ""
    outline = Outline(MARKDOWN, joiner="\n\n")
    if lead:
        outline.heading(1, lead)
    _text_outline(rest if lead else body, outline)
    title = lead or outline.first_heading(level=1)
    sections = outline.sections(title)
    if bool(title) + sum(bool(s.heading) for s in sections) < 2 or any(s.kind == "faq" for s in sections):
        return None
    return title, sections


def parse_text(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """Plain text is one section, unless it reads as an FAQ (question lines with answers) or as an
    article with headings (``_article``).

    An FAQ's capitalised or underlined lines ("SHIPPING") are its section headings. A help
    center's article exported as text keeps its title and one section per heading, as its
    Markdown or HTML twin does (before, such a file was one section titled by its file name, so
    the FAQ matcher read "making-a-claim" as what the article is about).
    """
    body = tidy(decode_text(name, data))
    sections = _text_outline(body).sections("") if body else []
    if any(s.kind == "faq" for s in sections):
        return single_document(name, "", sections, "text/plain")
    article = _article(body) if body else None
    if article:
        return single_document(name, article[0], article[1], "text/plain")
    return single_document(name, "", [Section(text=body)] if body else [], "text/plain")


# --- CSV FAQ ----------------------------------------------------------------------------------


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def _csv_id(stem: str, row_id: str, question: str, seen: dict[str, int]) -> str:
    """A document id that survives re-uploads of the same CSV.

    An ``id`` column wins. Otherwise the id hashes the normalised question, not the row number:
    inserting, deleting or reordering rows, or editing an answer, then keeps every other row's id
    (an edited answer changes only the content hash, so just that row is re-embedded). The file
    stem is part of the id so two CSV files never overwrite each other's rows. A repeated
    question gets a ``~2``, ``~3`` suffix in file order.
    """
    key = row_id or hashlib.sha1(_norm(question).encode()).hexdigest()[:12]
    seen[key] = seen.get(key, 0) + 1
    return f"{stem}:{key}" + (f"~{seen[key]}" if seen[key] > 1 else "")


_SECTION_COLUMNS = ("section", "category", "topic")


def parse_csv(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    text = decode_text(name, data)
    want_q, want_a = _norm(settings.csv_question_column), _norm(settings.csv_answer_column)
    # Spreadsheets export with ",", ";" (European locales) or tabs; the delimiter is the one whose
    # header row contains both required columns (csv.Sniffer guesses wrong on prose answers).
    header_line = text.split("\n", 1)[0]
    found: list[str] = []
    for delimiter in (",", ";", "\t"):
        header = next(csv.reader([header_line], delimiter=delimiter), [])
        columns = [_norm(h) for h in header]
        if want_q in columns and want_a in columns:
            break
        found = found or header
    else:
        raise IngestError(
            name,
            f"needs columns {settings.csv_question_column!r} and {settings.csv_answer_column!r}; "
            f"found {', '.join(repr(h) for h in found) or 'no columns'}",
        )
    index = {col: i for i, col in reversed(list(enumerate(columns)))}  # first one wins
    want_title, stem = _norm(settings.csv_title_column), Path(name).stem
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    docs: list[ParsedDocument] = []
    seen: dict[str, int] = {}
    try:
        next(reader)
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise IngestError(
                    name,
                    f"line {line} has {len(row)} fields but the header has {len(header)} "
                    f"(quote values that contain {delimiter!r})",
                )
            values = {col: (row[i].strip() if i < len(row) else "") for col, i in index.items()}
            question, answer = values[want_q], values[want_a]
            if not question or not answer:
                missing = "question" if not question else "answer"
                raise IngestError(name, f"line {line} has an empty {missing}")
            title = values.get(want_title, "")
            extra = {header[i].strip(): values[c] for c, i in index.items()
                     if c not in (want_q, want_a, want_title, "id") and values[c]}
            # The entry's section, as for headings in documents: a section/category/topic
            # column, else the title column (which help-centre exports use for the category).
            group = next((values[c] for c in _SECTION_COLUMNS if values.get(c)), title)
            section = Section(text=f"{question}\n{answer}", heading=title, kind="faq",
                              question=question, answer=answer,
                              metadata={"section": group} if group else {})
            docs.append(ParsedDocument(
                external_id=_csv_id(stem, values.get("id", ""), question, seen),
                title=title or question, sections=[section], source=name, mime="text/csv",
                metadata=extra,
            ))
    except csv.Error as err:
        raise IngestError(name, f"line {reader.line_num}: {err}") from None
    return docs


# --- JSONL knowledge base ---------------------------------------------------------------------


def _jsonl_doc(name: str, line: str) -> ParsedDocument:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    doc_id, text = obj.get("id"), obj.get("text")
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool) or str(doc_id).strip() == "":
        raise ValueError("missing 'id' (a string)")
    question, answer = obj.get("question") or "", obj.get("answer") or ""
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError("'question' and 'answer' must be strings")
    if not text and question and answer:
        text = f"{question}\n{answer}"
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing 'text' (a non-empty string)")
    title, metadata = obj.get("title") or "", obj.get("metadata") or {}
    if not isinstance(title, str) or not isinstance(metadata, dict):
        raise ValueError("'title' must be a string and 'metadata' an object")
    faq = bool(question and answer)
    # An entry's section, as a CSV's section/category/topic column gives it.
    group = next((obj[k].strip() for k in _SECTION_COLUMNS
                  if isinstance(obj.get(k), str) and obj[k].strip()), "")
    section = Section(text=text.strip(), heading=title, kind="faq" if faq else "text",
                      question=question if faq else "", answer=answer if faq else "",
                      metadata={"section": group} if faq and group else {})
    return ParsedDocument(external_id=str(doc_id), title=title or str(doc_id), sections=[section],
                          source=name, mime="application/jsonl", metadata=dict(metadata))


def parse_jsonl(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """One document per line in the ``../shared/data`` kb format; any bad line rejects the file."""
    docs: list[ParsedDocument] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(decode_text(name, data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            doc = _jsonl_doc(name, line)
        except ValueError as err:
            raise IngestError(name, f"line {number}: {err}") from None
        if doc.external_id in first_line:
            raise IngestError(name, f"line {number}: id {doc.external_id!r} repeats line "
                                    f"{first_line[doc.external_id]}")
        first_line[doc.external_id] = number
        docs.append(doc)
    return docs


# --- registry and entry points ----------------------------------------------------------------

PARSERS: dict[str, Parser] = {
    ".md": parse_markdown,
    ".markdown": parse_markdown,
    ".txt": parse_text,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    ".csv": parse_csv,
    ".jsonl": parse_jsonl,
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(PARSERS))


def _parser_for(name: str) -> Parser:
    suffix = Path(name).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        raise UnsupportedFileType(
            name, f"unsupported file type {suffix or '(no suffix)'!r}; "
                  f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return parser


def _check_size(name: str, size: int, settings: IngestSettings) -> None:
    limit = int(settings.max_file_mb * 1024 * 1024)
    if size > limit:
        shown = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 1024:.1f} KB"
        raise FileTooLarge(name, f"is {shown}, over the {settings.max_file_mb:g} MB limit")


def parse_bytes(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """Parse an uploaded file's bytes. ``name`` is the file name (a client path is cut to it)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    parser = _parser_for(name)
    _check_size(name, len(data), settings)
    if not data.strip():
        raise IngestError(name, "is empty")
    docs = parser(name, data, settings)
    if not any(s.text.strip() for doc in docs for s in doc.sections):
        raise IngestError(name, "has no text to index")
    return [doc for doc in docs if doc.sections]


def parse_file(path: Path, settings: IngestSettings) -> list[ParsedDocument]:
    """Parse a file on disk: type and size are checked before its bytes are read."""
    path = Path(path)
    _parser_for(path.name)
    try:
        _check_size(path.name, path.stat().st_size, settings)
        data = path.read_bytes()
    except OSError as err:
        raise IngestError(path.name, f"cannot be read ({err.strerror})") from None
    return parse_bytes(path.name, data, settings)
