"""Parsers for HTML pages, PDF and Word (.docx) files. Registered in ``retrieval.parsers``.

The third-party readers raise many exception types on damaged input (zip, XML, stream and key
errors); each parser turns any of them into one ``IngestError`` naming the file, because a
damaged upload is a user error, not a bug.
"""
from __future__ import annotations

import io
import logging
import re

import docx
import pypdf
from bs4 import BeautifulSoup
from bs4.dammit import EncodingDetector
from bs4.element import PreformattedString

from bot.core.errors import IngestError
from bot.core.settings import IngestSettings

from .outline import Outline, tidy
from .parse_util import decode_text, single_document
from .types import ParsedDocument, Section

# --- HTML -------------------------------------------------------------------------------------

_DROP = ["script", "style", "noscript", "template", "nav", "aside", "form", "svg", "iframe",
         "button", "select"]
_HEADINGS = ["h1", "h2", "h3"]
_BLOCKS = ["p", "div", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "section",
           "article", "blockquote", "pre", "br", "hr", "h4", "h5", "h6", "figcaption", "details",
           "summary", "address"]
_BREAK = "\ue000"  # private-use marker for a block boundary; becomes a newline after whitespace
_SPACE = re.compile(r"\s+")  # HTML collapses any whitespace run to one space


def _lines(parts: list[str]) -> str:
    """One line per block element (nested blocks would otherwise leave runs of blank lines)."""
    text = _SPACE.sub(" ", "".join(parts)).replace(_BREAK, "\n")
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


def parse_html(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """Main text of a page, split at h1-h3; navigation, scripts and page chrome are dropped.

    Page-level ``<header>``/``<footer>`` are chrome, but the same tags inside ``<article>`` or
    ``<main>`` hold the article's own title and notes, so those are kept. When the page has a
    ``<main>``, only it is read.
    """
    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    soup = BeautifulSoup(decode_text(name, data, declared), "lxml")
    h1 = soup.find("h1")
    title = (soup.title.get_text(" ", strip=True) if soup.title else "") or (
        h1.get_text(" ", strip=True) if h1 else ""
    )
    chrome = [t for t in soup.find_all(["header", "footer"]) if not t.find_parent(["article", "main"])]
    hidden = soup.find_all(attrs={"hidden": True}) + soup.find_all(attrs={"aria-hidden": "true"})
    for tag in soup.find_all(_DROP) + chrome + hidden:
        if not tag.decomposed:
            tag.decompose()
    root = soup.find("main") or soup.body or soup
    for tag in root.find_all(_BLOCKS):
        tag.insert_before(_BREAK)
        tag.append(_BREAK)

    outline, body, current = Outline(), [], None
    for string in root.find_all(string=True):
        if isinstance(string, PreformattedString):  # comments, CDATA, doctype
            continue
        heading = string.find_parent(_HEADINGS)
        if heading is None:
            body.append(str(string))
        elif heading is not current:  # identity: Tag.__eq__ compares markup, not position
            outline.add(_lines(body))
            body, current = [], heading
            outline.heading(int(heading.name[1]), heading.get_text(" ").replace(_BREAK, " "))
    outline.add(_lines(body))
    return single_document(name, title, outline.sections(title), "text/html")


# --- PDF --------------------------------------------------------------------------------------

# pypdf logs a warning for every damaged structure it works around; those files either parse or
# become an IngestError here, so the warnings only clutter the CLI's progress output.
logging.getLogger("pypdf").setLevel(logging.ERROR)

_HYPHENATED = re.compile(r"([a-z])-\n([a-z])")  # "refund-\nable" split across lines


def _open_pdf(name: str, data: bytes) -> pypdf.PdfReader:
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as err:
        raise IngestError(name, f"is not a readable PDF ({err})") from None
    if encrypted:
        try:
            # Many PDFs are encrypted only to restrict editing, with an empty open password.
            opened = reader.decrypt("")
        except Exception:
            opened = pypdf.PasswordType.NOT_DECRYPTED
        if opened == pypdf.PasswordType.NOT_DECRYPTED:
            raise IngestError(name, "is password-protected; remove the password and upload it again")
    return reader


def _pdf_title(reader: pypdf.PdfReader) -> str:
    try:
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except Exception:  # damaged info dictionary: the title is optional
        return ""
    # Word's PDF export often stores "Microsoft Word - draft.docx": a file name, not a title.
    return "" if title.startswith("Microsoft Word - ") else title


def parse_pdf(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """One section per page (``metadata["page"]``, 1-based) so answers can cite the page."""
    reader = _open_pdf(name, data)
    sections: list[Section] = []
    try:
        pages = list(reader.pages)
    except Exception as err:
        raise IngestError(name, f"is not a readable PDF ({err})") from None
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception as err:
            raise IngestError(name, f"page {number} cannot be read ({err})") from None
        text = tidy(_HYPHENATED.sub(r"\1\2", text.replace("\r\n", "\n")))
        if text:
            sections.append(Section(text=text, metadata={"page": number}))
    if not sections:
        raise IngestError(
            name, "has no extractable text (a scanned image?); run OCR on it and upload it again"
        )
    return single_document(name, _pdf_title(reader), sections, "application/pdf",
                           pages=len(pages))


# --- DOCX -------------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"heading\s*([1-9])$", re.I)


def _heading_level(paragraph) -> int:
    """1-9 for "Heading N" (or a style based on one), -1 for "Title", 0 for body text."""
    style = paragraph.style
    while style is not None:
        style_name = style.name or ""
        if style_name.lower() == "title":
            return -1
        match = _HEADING_STYLE.match(style_name)
        if match:
            return int(match.group(1))
        style = style.base_style
    return 0


def _table_text(table) -> str:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) not in seen:  # a merged cell repeats once per grid column
                seen.add(id(cell._tc))
                cells.append(" ".join(cell.text.split()))
        rows.append(" | ".join(c for c in cells if c))
    return "\n".join(r for r in rows if r)


def parse_docx(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """Sections at "Heading N" paragraphs; tables become "cell | cell" lines in place."""
    try:
        document = docx.Document(io.BytesIO(data))
        outline, style_title = Outline(), ""
        for item in document.iter_inner_content():
            if isinstance(item, docx.table.Table):
                outline.add(_table_text(item))
                continue
            level = _heading_level(item)
            if level == -1:
                style_title = style_title or " ".join(item.text.split())
            elif level:
                outline.heading(level, item.text)
            else:
                outline.add(item.text)
        core_title = (document.core_properties.title or "").strip()
    except Exception as err:
        raise IngestError(
            name, f"is not a readable Word .docx file ({type(err).__name__}); "
                  "old .doc files must be saved as .docx first"
        ) from None
    title = style_title or outline.first_heading() or core_title
    return single_document(name, title, outline.sections(title), "application/vnd.openxmlformats-"
                           "officedocument.wordprocessingml.document")
