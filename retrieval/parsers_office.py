"""Parsers for HTML pages, PDF and Word (.docx) files. Registered in ``retrieval.parsers``.

The third-party readers raise many exception types on damaged input (zip, XML, stream and key
errors); each parser turns any of them into one ``IngestError`` naming the file, because a
damaged upload is a user error, not a bug.
"""
from __future__ import annotations

import io
import logging
import re
import zipfile

import docx
import pypdf
from bs4 import BeautifulSoup
from bs4.dammit import EncodingDetector
from bs4.element import PreformattedString
from docx.text.hyperlink import Hyperlink

from bot.core.errors import FileTooLarge, IngestError
from bot.core.settings import IngestSettings

from .faq_html import (
    BREAK,
    HEADINGS,
    jsonld_entries,
    lines,
    mark_blocks,
    placeholder_index,
    take_entries,
)
from .faq_layouts import MARKED, STRONG_CLOSE, STRONG_OPEN, faq_section
from .outline import Outline, tidy
from .parse_util import decode_text, single_document
from .types import ParsedDocument, Section

# --- HTML -------------------------------------------------------------------------------------

# Dropped before anything is read (scripts, styles) and before the FAQ structures are taken
# (navigation, forms); buttons and hidden elements go only after, since accordion questions are
# buttons and their answers are hidden until clicked.
_DROP = ["script", "style", "noscript", "template", "nav", "aside", "form", "svg", "iframe",
         "select"]
_DROP_AFTER = ["button"]
_STRONG = ["strong", "b"]
_RULE = "\ue005"  # an <hr>: a line of its own that ends the answer above it


def _mark_strong(root) -> None:
    """Put the bold markers of ``faq_layouts`` around outermost <strong>/<b> outside headings."""
    for tag in root.find_all(_STRONG):
        if not tag.find_parent(_STRONG + HEADINGS):
            tag.insert(0, STRONG_OPEN)
            tag.append(STRONG_CLOSE)


def _add_lines(outline: Outline, text: str, entries: list[tuple[str, str]]) -> None:
    for line in text.split("\n"):
        index = placeholder_index(line)
        if line == _RULE:
            outline.rule()
        elif index is None:
            outline.add(line)
        else:
            outline.entry(*entries[index])


_TITLE_SEPARATOR = re.compile(r"\s+[|\u2013\u2014\u00b7:-]\s+")


def page_title(title: str, headings: list[str]) -> str:
    """The page's title without the site's name: a help center's ``<title>`` is usually the
    article's ``<h1>`` and the site ("Booking Accessible Seating | Ticketnest Help Center"); the
    part that is one of the page's h1 ``headings`` is the title, as a Markdown twin's ``#`` is. A
    title with no such part is kept whole ("Patient FAQ | BrightSmile Dental")."""
    def key(text: str) -> str:
        return " ".join(text.split()).casefold()

    h1s = {key(h): " ".join(h.split()) for h in headings if h.strip()}
    parts = _TITLE_SEPARATOR.split(title)
    return next((h1s[key(p)] for p in parts if len(parts) > 1 and key(p) in h1s), title)


def parse_html(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """Main text of a page, split at h1-h6, with its FAQ entries; chrome and scripts dropped.

    Page-level ``<header>``/``<footer>`` are chrome, but the same tags inside ``<article>`` or
    ``<main>`` hold the article's own title and notes, so those are kept. When the page has a
    ``<main>``, only it is read. FAQ entries come from the page's own FAQ markup (see
    ``retrieval.faq_html``), from question headings and from question lines (``retrieval.outline``);
    FAQPage JSON-LD adds the questions the visible page does not have.
    """
    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    soup = BeautifulSoup(decode_text(name, data, declared), "lxml")
    h1 = soup.find("h1")
    title = (soup.title.get_text(" ", strip=True) if soup.title else "") or (
        h1.get_text(" ", strip=True) if h1 else ""
    )
    structured = jsonld_entries(soup)
    chrome = [t for t in soup.find_all(["header", "footer"]) if not t.find_parent(["article", "main"])]
    for tag in soup.find_all(_DROP) + chrome:
        if not tag.decomposed:
            tag.decompose()
    root = soup.find("main") or soup.body or soup
    title = page_title(title, [h.get_text(" ", strip=True) for h in root.find_all("h1")])
    entries = take_entries(root, soup)
    hidden = soup.find_all(attrs={"hidden": True}) + soup.find_all(attrs={"aria-hidden": "true"})
    for tag in soup.find_all(_DROP_AFTER) + hidden:
        if not tag.decomposed:
            tag.decompose()
    _mark_strong(root)
    for rule in root.find_all("hr"):
        rule.append(_RULE)
    mark_blocks(root)

    outline, body, current = Outline(MARKED), [], None
    for string in root.find_all(string=True):
        if isinstance(string, PreformattedString):  # comments, CDATA, doctype
            continue
        heading = string.find_parent(HEADINGS)
        if heading is None:
            body.append(str(string))
        elif heading is not current:  # identity: Tag.__eq__ compares markup, not position
            _add_lines(outline, lines(body), entries)
            body, current = [], heading
            outline.heading(int(heading.name[1]), heading.get_text(" ").replace(BREAK, " "))
    _add_lines(outline, lines(body), entries)
    sections = outline.sections(title)
    on_page = {" ".join(s.question.split()).casefold() for s in sections if s.kind == "faq"}
    sections += [faq_section(q, a, q, "") for q, a in structured
                 if " ".join(q.split()).casefold() not in on_page]
    return single_document(name, title, sections, "text/html")


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


def _bold(run, paragraph) -> bool:
    """Whether a run shows bold: its own setting, else its character style's, else its paragraph's."""
    if run.bold is not None:
        return run.bold
    for style in (run.style, paragraph.style):
        while style is not None:
            if style.font.bold is not None:
                return style.font.bold
            style = style.base_style
    return False


def _marked_text(paragraph) -> str:
    """The paragraph's text with bold spans between ``faq_layouts`` bold markers.

    Word splits text into runs at every formatting or revision change, so one bold question is
    often several runs; whitespace between two bold runs does not end the span.
    """
    out, bold = [], False
    for part in paragraph.iter_inner_content():
        for run in part.runs if isinstance(part, Hyperlink) else [part]:
            text = run.text
            if not text.strip():
                out.append(text)
                continue
            now = _bold(run, paragraph)
            if now != bold:
                out.append(STRONG_OPEN if now else STRONG_CLOSE)
                bold = now
            out.append(text)
    return "".join(out) + (STRONG_CLOSE if bold else "")


_PARAGRAPH = re.compile(rb"<w:p[\s/>]")
_ELEMENT = re.compile(rb"<[A-Za-z_]")
_MAX_MEMBERS = 10_000


def check_docx_limits(name: str, data: bytes, settings: IngestSettings) -> None:
    """Refuse a DOCX that would take too long or too much memory to read, before it is read.

    The zip directory's declared sizes are summed first (``zipfile`` never inflates a member past
    its declared size, so the sum bounds what is read); then the XML parts are inflated in pieces
    and their paragraphs and elements counted, without building any tree.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except Exception as err:
        raise IngestError(name, f"is not a readable Word .docx file ({type(err).__name__}); "
                                "old .doc files must be saved as .docx first") from None
    if len(members) > _MAX_MEMBERS:
        raise IngestError(name, f"holds {len(members):,} files; a Word document holds a few dozen")
    limit = int(settings.max_uncompressed_mb * 1_000_000)
    total = sum(max(0, m.file_size) for m in members)
    if total > limit:
        raise FileTooLarge(name, f"unzips to {total / 1e6:,.1f} MB, over the "
                                 f"{settings.max_uncompressed_mb:g} MB uncompressed limit")
    paragraphs = elements = 0
    try:
        for member in members:
            if not member.filename.endswith(".xml"):
                continue
            carry = b""
            with archive.open(member) as fh:
                while True:
                    piece = fh.read(1 << 20)
                    if not piece:
                        break
                    piece = carry + piece
                    # Every counted pattern starts with "<" and is a few bytes long: keep the tail
                    # from the last "<" for the next piece, so that no match spans a cut.
                    cut = piece.rfind(b"<")
                    if cut >= 0 and len(piece) - cut < 64:
                        carry, piece = piece[cut:], piece[:cut]
                    else:
                        carry = b""
                    paragraphs += len(_PARAGRAPH.findall(piece))
                    elements += len(_ELEMENT.findall(piece))
                    if paragraphs > settings.max_paragraphs:
                        raise IngestError(name, f"has more than {settings.max_paragraphs:,} paragraphs "
                                                "(the limit); split it into smaller documents")
                    if elements > settings.max_elements:
                        raise IngestError(name, f"has more than {settings.max_elements:,} XML elements "
                                                "(the limit); split it into smaller documents")
            paragraphs += len(_PARAGRAPH.findall(carry))
            elements += len(_ELEMENT.findall(carry))
    except IngestError:
        raise
    except Exception as err:
        raise IngestError(name, f"is not a readable Word .docx file ({type(err).__name__})") from None
    if paragraphs > settings.max_paragraphs:
        raise IngestError(name, f"has more than {settings.max_paragraphs:,} paragraphs (the limit); "
                                "split it into smaller documents")
    if elements > settings.max_elements:
        raise IngestError(name, f"has more than {settings.max_elements:,} XML elements (the limit); "
                                "split it into smaller documents")


def parse_docx(name: str, data: bytes, settings: IngestSettings) -> list[ParsedDocument]:
    """Sections at "Heading N" paragraphs; FAQ entries at question headings and bold questions.

    Tables become "cell | cell" lines in place. ``check_docx_limits`` runs first.
    """
    check_docx_limits(name, data, settings)
    try:
        document = docx.Document(io.BytesIO(data))
        outline, style_title = Outline(MARKED), ""
        for item in document.iter_inner_content():
            if isinstance(item, docx.table.Table):
                outline.add(_table_text(item), may_ask=False)
                continue
            level = _heading_level(item)
            if level == -1:
                style_title = style_title or " ".join(item.text.split())
            elif level:
                outline.heading(level, item.text)
            else:
                outline.add(_marked_text(item))
        core_title = (document.core_properties.title or "").strip()
    except Exception as err:
        raise IngestError(
            name, f"is not a readable Word .docx file ({type(err).__name__}); "
                  "old .doc files must be saved as .docx first"
        ) from None
    title = style_title or outline.first_heading() or core_title
    return single_document(name, title, outline.sections(title), "application/vnd.openxmlformats-"
                           "officedocument.wordprocessingml.document")
