"""Parsers: every format parses into the right sections, and every bad input is a clear error.

PDF and DOCX inputs are built here (a hand-written PDF with real text streams, python-docx for
Word), so no binary fixtures are committed.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import docx
import pypdf
import pytest

from bot.core.errors import FileTooLarge, IngestError, UnsupportedFileType
from bot.core.settings import IngestSettings
from retrieval.parsers import PARSERS, SUPPORTED_SUFFIXES, parse_bytes, parse_file

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
S = IngestSettings()


def make_pdf(pages: list[str], title: str = "") -> bytes:
    """A minimal valid PDF: one Helvetica text line per input line, correct xref offsets."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n)), n),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        ops = " ".join(f"({esc(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 11 Tf 14 TL 72 720 Td {ops} ET".encode("latin-1")
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    info = b""
    if title:
        objs.append(b"<< /Title (%s) >>" % esc(title).encode("latin-1"))
        info = b" /Info %d 0 R" % len(objs)
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1, info, xref)
    return out


def rewrite_pdf(data: bytes, **encrypt) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    if encrypt:
        writer.encrypt(algorithm="RC4-128", **encrypt)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx() -> bytes:
    d = docx.Document()
    d.add_heading("Northwind Staff Handbook", 0)  # "Title" style
    d.add_paragraph("How we help customers.")
    d.add_heading("Returns", 1)
    d.add_paragraph("Returns are accepted for 60 days.")
    d.add_heading("How long do refunds take?", 2)
    d.add_paragraph("Refunds are processed within 2 business days.")
    d.add_paragraph("Banks take 5-10 more days.")
    d.add_heading("Carriers", 1)
    table = d.add_table(rows=2, cols=2)
    for r, (a, b) in enumerate([("Carrier", "Days"), ("UPS", "3-5")]):
        table.cell(r, 0).text, table.cell(r, 1).text = a, b
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def one(docs):
    assert len(docs) == 1
    return docs[0]


# --- formats ----------------------------------------------------------------------------------


def test_registry_covers_every_supported_suffix():
    assert set(SUPPORTED_SUFFIXES) == set(PARSERS)
    assert {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx", ".csv", ".jsonl"} <= set(PARSERS)


def test_markdown_splits_at_headings_with_paths_and_faq_sections():
    md = (
        "# Billing\n\nHow we bill you.\n\n## Refunds\n\n### How long do refunds take?\n"
        "Refunds take **5-7** business days.\n\n```\n# not a heading\n```\n\n"
        "## Invoices\n\nDownload them from your account.\n"
    ).encode()
    doc = one(parse_bytes("billing.md", md, S))
    assert (doc.external_id, doc.title, doc.source, doc.mime) == (
        "billing.md", "Billing", "billing.md", "text/markdown")
    assert [(s.kind, s.heading) for s in doc.sections] == [
        ("text", ""),  # the only h1 is the title, so it is left out of paths
        ("faq", "Refunds > How long do refunds take?"),
        ("text", "Invoices"),
    ]
    faq = doc.sections[1]
    assert faq.question == "How long do refunds take?"
    assert faq.answer.startswith("Refunds take **5-7** business days.")
    assert "# not a heading" in faq.answer  # a fenced "#" line is code, not a heading
    assert faq.text == f"{faq.question}\n{faq.answer}"


def test_markdown_setext_headings_front_matter_and_several_top_headings():
    md = (
        "---\ntitle: Help centre\nlang: en\n---\nShipping\n========\n\nWe ship daily.\n\n"
        "Returns\n=======\n\nDo you take *returns*?\n---------------------\nYes, for 60 days.\n"
    ).encode()
    doc = one(parse_bytes("help.markdown", md, S))
    assert doc.title == "Help centre"
    assert doc.metadata == {"lang": "en"}
    assert [(s.kind, s.heading, s.text) for s in doc.sections] == [
        ("text", "Shipping", "We ship daily."),
        ("faq", "Returns > Do you take returns?", "Do you take returns?\nYes, for 60 days."),
    ]


@pytest.mark.parametrize("title,h1,want", [
    ("Booking Accessible Seating | Ticketnest Help Center", "Booking Accessible Seating", "Booking Accessible Seating"),
    ("Help Center - Stellar Cinemas", "Help Center", "Help Center"),
    ("Patient FAQ | BrightSmile Dental", "Frequently asked questions", "Patient FAQ | BrightSmile Dental"),
    ("Returns", "Returns", "Returns"),
])
def test_an_html_title_loses_the_sites_name_when_its_other_part_is_the_pages_h1(title, h1, want):
    page = f"<html><head><title>{title}</title></head><body><main><h1>{h1}</h1><p>We ship daily.</p></main></body></html>"
    assert one(parse_bytes("page.html", page.encode(), S)).title == want


def test_plain_text_is_one_section_titled_by_file_stem():
    doc = one(parse_bytes("store-hours.txt", b"Open 9 to 5.\r\n\r\n\r\n\r\nClosed Sundays.\r\n", S))
    assert (doc.external_id, doc.title, doc.mime) == ("store-hours.txt", "store-hours", "text/plain")
    assert [s.text for s in doc.sections] == ["Open 9 to 5.\n\nClosed Sundays."]


@pytest.mark.parametrize("text", [
    # setext: the title underlined with ===, sections with ---
    "Making a Claim\n==============\n\nClaim online at any time.\n\nWhat you need\n-------------\n\n"
    "Photos and receipts.\n1. Open the app.\n2. Tap Claim.\n\nHow long it takes\n-----------------\n\nMost claims settle in 10 days.\n",
    # an opening title line, sections as capitalised lines
    "Making a Claim\n\nClaim online at any time.\n\nWHAT YOU NEED\n\nPhotos and receipts.\n1. Open the app.\n2. Tap Claim."
    "\n\nHOW LONG IT TAKES\n\nMost claims settle in 10 days.\n",
])
def test_a_text_article_keeps_its_title_and_a_section_per_heading(text):
    """A help center's article exported as plain text reads as its Markdown twin does."""
    doc = one(parse_bytes("making-a-claim.txt", text.encode(), S))
    assert doc.title == "Making a Claim"
    assert [s.text for s in doc.sections] == [
        "Claim online at any time.", "Photos and receipts.\n1. Open the app.\n2. Tap Claim.", "Most claims settle in 10 days."]
    assert [s.heading.lower() for s in doc.sections] == ["", "what you need", "how long it takes"]
    assert all(s.kind == "text" for s in doc.sections)


def test_a_note_with_one_capitalised_line_stays_one_section():
    doc = one(parse_bytes("note.txt", b"NOTE\n\nWe are closed on Sundays.\n\nOpen 9 to 5.\n", S))
    assert doc.title == "note"
    assert [s.text for s in doc.sections] == ["NOTE\n\nWe are closed on Sundays.\n\nOpen 9 to 5."]


def test_text_with_utf8_bom_or_utf16_bom_is_read():
    text = "Caf\u00e9 hours: 9\u201317."
    for data in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")):
        assert one(parse_bytes("cafe.txt", data, S)).sections[0].text == text


HTML = b"""<!doctype html><html><head><title>Returns | Northwind</title>
<style>p { color: red }</style><script>var secret = "tracking-code";</script></head>
<body><header><a href="/">Home</a> <h1>Site banner</h1></header>
<nav><ul><li>Shop</li><li>Help</li></ul></nav>
<div class="content"><h1>Returns</h1><p>We accept <b>returns</b>
   within 60 days.</p><!-- editor note -->
<h2>Can I return sale items?</h2><p>Yes, unless marked final sale.</p>
<ul><li>Keep the tags.</li><li>Use the prepaid label.</li></ul>
<h3>Refund timing</h3><p>Two business days.</p><noscript>Enable JS</noscript>
<form><label>Email</label><input name="e"></form><aside>Related: jackets</aside>
<div hidden>Hidden promo</div><script>track()</script></div>
<footer>Copyright Northwind</footer></body></html>"""


def test_html_drops_scripts_styles_and_page_chrome_and_splits_at_h1_to_h3():
    doc = one(parse_bytes("returns.html", HTML, S))
    # the <title> without the site's name: the article's own h1, as a Markdown twin's title
    assert (doc.title, doc.mime) == ("Returns", "text/html")
    everything = "\n".join(s.heading + "\n" + s.text for s in doc.sections)
    for dropped in ("color: red", "tracking-code", "Site banner", "Shop", "editor note", "Enable JS",
                    "Email", "Related", "Hidden promo", "track()", "Copyright"):
        assert dropped not in everything
    assert [(s.kind, s.heading) for s in doc.sections] == [  # the title is left out of the paths
        ("text", ""),
        ("faq", "Can I return sale items?"),
        ("text", "Can I return sale items? > Refund timing"),
    ]
    assert doc.sections[0].text == "We accept returns within 60 days."
    assert doc.sections[1].answer == "Yes, unless marked final sale.\nKeep the tags.\nUse the prepaid label."


def test_html_keeps_article_header_prefers_main_and_honours_meta_charset():
    html = (
        '<html><head><meta charset="windows-1252"></head><body><p>Outside main</p><main>'
        "<article><header><h1>Caf\xe9 opening</h1></header><p>Opens at 9 \u2013 daily.</p>"
        "<footer>Updated May</footer></article></main></body></html>"
    ).encode("cp1252")
    doc = one(parse_bytes("cafe.htm", html, S))
    assert doc.title == "Caf\u00e9 opening"  # no <title>: the first h1
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("", "Opens at 9 \u2013 daily.\nUpdated May")
    ]


def test_pdf_gives_one_section_per_page_with_page_numbers():
    data = make_pdf(["Warranty policy\nAll Northwind gear is guaranteed.", "", "Claims take 5 days."],
                    title="Northwind Warranty")
    doc = one(parse_bytes("warranty.pdf", data, S))
    assert (doc.external_id, doc.title, doc.mime) == ("warranty.pdf", "Northwind Warranty", "application/pdf")
    assert doc.metadata == {"pages": 3}
    assert [s.metadata["page"] for s in doc.sections] == [1, 3]  # the empty page has no section
    assert "All Northwind gear is guaranteed." in doc.sections[0].text
    assert doc.sections[1].text == "Claims take 5 days."


def test_pdf_with_owner_password_only_is_read():
    data = rewrite_pdf(make_pdf(["Readable text."]), user_password="", owner_password="owner")
    assert pypdf.PdfReader(io.BytesIO(data)).is_encrypted
    assert one(parse_bytes("locked.pdf", data, S)).sections[0].text == "Readable text."


def test_docx_splits_at_heading_styles_and_keeps_tables():
    doc = one(parse_bytes("handbook.docx", make_docx(), S))
    assert (doc.external_id, doc.title) == ("handbook.docx", "Northwind Staff Handbook")
    assert [(s.kind, s.heading, s.text) for s in doc.sections] == [
        ("text", "", "How we help customers."),
        ("text", "Returns", "Returns are accepted for 60 days."),
        ("faq", "Returns > How long do refunds take?",
         "How long do refunds take?\nRefunds are processed within 2 business days.\nBanks take 5-10 more days."),
        ("text", "Carriers", "Carrier | Days\nUPS | 3-5"),
    ]


def test_csv_rows_become_faq_documents_with_extra_columns_as_metadata():
    data = (
        "Question,Answer,Title,URL\n"
        'How long do refunds take?,"Refunds take 2 business days, then 5-10 for the bank.",Refunds,/r\n'
        ",,,\n"
        "Do gift cards expire?,No.,,\n"
    ).encode()
    docs = parse_bytes("help.csv", data, S)
    assert [d.title for d in docs] == ["Refunds", "Do gift cards expire?"]
    first = docs[0]
    assert first.external_id.startswith("help:") and first.source == "help.csv"
    assert first.metadata == {"URL": "/r"}
    (section,) = first.sections
    assert (section.kind, section.heading, section.question) == ("faq", "Refunds", "How long do refunds take?")
    assert section.answer == "Refunds take 2 business days, then 5-10 for the bank."
    assert section.text == f"{section.question}\n{section.answer}"


def test_csv_ids_are_stable_when_rows_move_or_answers_change():
    before = b"question,answer\nQ one?,A1\nQ two?,A2\n"
    after = b"question,answer\nNew question?,A0\nQ two?,A2 edited\n  q ONE? ,A1\n"
    ids_before = {d.sections[0].question: d.external_id for d in parse_bytes("faq.csv", before, S)}
    ids_after = {d.sections[0].question: d.external_id for d in parse_bytes("faq.csv", after, S)}
    assert ids_after["Q two?"] == ids_before["Q two?"]
    assert ids_after["q ONE?"] == ids_before["Q one?"]  # case and spacing do not matter
    assert len(set(ids_after.values())) == 3
    # Another file's rows never collide with these.
    assert parse_bytes("other.csv", before, S)[0].external_id != ids_before["Q one?"]


def test_csv_id_column_duplicates_configured_columns_and_semicolons():
    settings = IngestSettings(csv_question_column="Frage", csv_answer_column="Antwort")
    data = "id;Frage;Antwort\nr1;Wie lange?;Zwei Tage.\n;Wie lange?;Drei Tage.\n;Wie lange?;Vier.\n".encode()
    docs = parse_bytes("de.csv", data, settings)
    assert docs[0].external_id == "de:r1"
    assert docs[1].external_id != docs[2].external_id  # a repeated question gets a suffix
    assert docs[2].external_id == docs[1].external_id + "~2"
    assert [d.sections[0].answer for d in docs] == ["Zwei Tage.", "Drei Tage.", "Vier."]


def test_jsonl_lines_become_documents_with_ids_and_metadata():
    lines = [
        {"id": "shop:1:faq:0", "title": "TRAIL CAFE", "text": "Is there wifi?\nYes, free.",
         "question": "Is there wifi?", "answer": "Yes, free.",
         "metadata": {"domain": "restaurant", "entity_name": "TRAIL CAFE", "doc_type": "faq"}},
        {"id": 7, "title": "Policy", "text": "Refunds need a receipt."},
    ]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n\n").encode()
    docs = parse_bytes("kb.jsonl", data, S)
    assert [d.external_id for d in docs] == ["shop:1:faq:0", "7"]
    assert docs[0].metadata == lines[0]["metadata"]
    assert (docs[0].title, docs[0].source) == ("TRAIL CAFE", "kb.jsonl")
    faq = docs[0].sections[0]
    assert (faq.kind, faq.question, faq.answer, faq.text) == (
        "faq", "Is there wifi?", "Yes, free.", "Is there wifi?\nYes, free.")
    assert (docs[1].sections[0].kind, docs[1].sections[0].text) == ("text", "Refunds need a receipt.")


@pytest.mark.skipif(not (SHARED_DATA / "abcd" / "kb.jsonl").is_file(), reason="../shared/data absent")
def test_jsonl_reads_the_shared_knowledge_base_format():
    docs = parse_file(SHARED_DATA / "abcd" / "kb.jsonl", S)
    assert len(docs) == 55
    assert len({d.external_id for d in docs}) == 55
    assert all(d.sections and d.sections[0].text for d in docs)


def test_client_path_in_upload_name_is_cut_to_the_file_name():
    doc = one(parse_bytes("C:\\fakepath\\notes.txt", b"hello", S))
    assert doc.external_id == doc.source == "notes.txt"


# --- bad input --------------------------------------------------------------------------------


def raises(exc, name: str, data: bytes, *fragments: str, settings: IngestSettings = S):
    with pytest.raises(exc) as info:
        parse_bytes(name, data, settings)
    message = str(info.value)
    assert message.startswith(f"{name.rsplit('/', 1)[-1]}: ")
    for fragment in fragments:
        assert fragment in message
    return info.value


def test_unsupported_type():
    err = raises(UnsupportedFileType, "slides.pptx", b"data", "'.pptx'", ".md", ".pdf")
    assert err.status == 415
    raises(UnsupportedFileType, "README", b"data", "no suffix")


@pytest.mark.parametrize("name", ["empty.md", "empty.txt", "empty.pdf", "empty.docx", "empty.csv",
                                  "empty.jsonl", "empty.html"])
def test_empty_file(name):
    raises(IngestError, name, b"", "is empty")
    raises(IngestError, name, b" \n\t\n", "is empty")


@pytest.mark.parametrize("name,data", [
    ("only-headings.md", b"# Title\n\n## Section\n"),
    ("only-script.html", b"<html><body><script>x()</script><nav>Home</nav></body></html>"),
    ("header-only.csv", b"question,answer\n"),
])
def test_file_with_nothing_to_index(name, data):
    raises(IngestError, name, data, "no text to index")


def test_over_the_size_limit():
    small = IngestSettings(max_file_mb=0.001)  # about 1 KB
    err = raises(FileTooLarge, "big.txt", b"x" * 2000, "MB limit", settings=small)
    assert err.status == 413


def test_parse_file_checks_size_before_reading_and_names_the_file(tmp_path):
    big = tmp_path / "big.md"
    big.write_bytes(b"# A\n" + b"word " * 400)
    with pytest.raises(FileTooLarge, match=r"^big\.md: "):
        parse_file(big, IngestSettings(max_file_mb=0.001))
    with pytest.raises(IngestError, match=r"^missing\.md: cannot be read"):
        parse_file(tmp_path / "missing.md", S)
    assert one(parse_file(big, S)).title == "A"


@pytest.mark.parametrize("name", ["latin.txt", "latin.md", "latin.csv", "latin.jsonl", "latin.html"])
def test_non_utf8_text_is_rejected_with_advice(name):
    text = "question,answer\nCaf\u00e9 ouvert\u00a0?,Oui, \u00e0 9 h \u2013 tous les jours.\n" * 3
    raises(IngestError, name, text.encode("cp1252"), "not valid utf-8", "Save it as UTF-8")


def test_binary_data_in_a_text_file():
    raises(IngestError, "photo.txt", b"\x00\x01\x02abc\x00", "binary")


@pytest.mark.parametrize("data", [
    b"not a pdf at all",
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< >>\n",
    make_pdf(["Some text here."])[:120],  # truncated download
])
def test_corrupt_pdf(data):
    raises(IngestError, "broken.pdf", data, "broken.pdf")


def test_password_protected_pdf():
    data = rewrite_pdf(make_pdf(["Secret text."]), user_password="hunter2", owner_password="o")
    raises(IngestError, "secret.pdf", data, "password-protected")


def test_pdf_without_text():
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=612, height=792)
    buf = io.BytesIO()
    writer.write(buf)
    raises(IngestError, "scan.pdf", buf.getvalue(), "no extractable text", "OCR")


def test_corrupt_docx():
    raises(IngestError, "old.docx", b"\xd0\xcf\x11\xe0 an old binary .doc", "not a readable Word", ".doc")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("hello.txt", "not a word document")
    raises(IngestError, "zip.docx", zipped.getvalue(), "not a readable Word")
    raises(IngestError, "cut.docx", make_docx()[:500], "not a readable Word")


@pytest.mark.parametrize("line,reason", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"title": "no id", "text": "x"}', "missing 'id'"),
    ('{"id": "b", "text": "  "}', "missing 'text'"),
    ('{"id": "b", "text": "x", "metadata": [1]}', "'metadata' an object"),
    ('{"id": "a", "text": "again"}', "id 'a' repeats line 1"),
])
def test_malformed_jsonl_line_rejects_the_whole_file(line, reason):
    data = f'{{"id": "a", "text": "fine"}}\n\n{line}\n{{"id": "c", "text": "fine"}}\n'.encode()
    raises(IngestError, "kb.jsonl", data, "line 3:", reason)


def test_csv_missing_columns_lists_the_columns_found():
    raises(IngestError, "faq.csv", b"Frage,Antwort\nWie?,So.\n",
           "needs columns 'question' and 'answer'", "found 'Frage', 'Antwort'")


@pytest.mark.parametrize("data,fragments", [
    (b"question,answer\nDo you ship?,Yes, daily.\n", ("line 2 has 3 fields", "quote values")),
    (b"question,answer\nDo you ship?,\n", ("line 2 has an empty answer",)),
    (b'question,answer\n"Unclosed?,quote\n', ("line",)),
])
def test_csv_bad_rows(data, fragments):
    raises(IngestError, "faq.csv", data, *fragments)


# --- the bundled sample FAQ -------------------------------------------------------------------


def test_sample_faq_parses_into_at_least_30_entries():
    files = sorted((ROOT / "samples" / "faq").iterdir())
    assert {f.suffix for f in files} >= {".md", ".csv"}
    docs = [doc for f in files for doc in parse_file(f, S)]
    faqs = {s.question: s for d in docs for s in d.sections if s.kind == "faq"}
    assert len(faqs) >= 30
    assert len({d.external_id for d in docs}) == len(docs)
    assert "2 business days" in faqs["How long do refunds take?"].answer
    assert {d.title for d in docs} >= {"Shipping & Delivery", "Returns & Refunds", "Billing & Payments",
                                       "Your Account", "Warranty", "Privacy"}
