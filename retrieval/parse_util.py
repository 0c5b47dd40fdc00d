"""Helpers shared by the format parsers: text decoding and the single-document wrapper."""
from __future__ import annotations

import codecs
from pathlib import Path

import charset_normalizer

from bot.core.errors import IngestError

from .types import ParsedDocument, Section

_BOMS = [  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


def decode_text(name: str, data: bytes, declared: str | None = None) -> str:
    """Decode a text file, or raise ``IngestError`` naming ``name``.

    UTF-8 (with or without BOM) and BOM-marked UTF-16/32 are read; ``declared`` (an HTML
    ``<meta charset>``) is used when there is no BOM. Anything else is rejected, naming the likely encoding (from
    ``charset_normalizer``) rather than guessing: a wrong guess would silently put mojibake into
    answers that visitors read, whereas re-saving as UTF-8 takes the site owner one step.
    """
    bom = next((enc for mark, enc in _BOMS if data.startswith(mark)), None)
    encoding = bom or declared or "utf-8"
    try:
        text = data.decode(encoding)
    except LookupError:
        raise IngestError(name, f"declares an unknown text encoding {declared!r}") from None
    except UnicodeDecodeError as err:
        best = charset_normalizer.from_bytes(data).best()
        hint = f"; perhaps {best.encoding}" if best and best.encoding != "utf_8" else ""
        raise IngestError(
            name,
            f"is not valid {encoding} text (byte 0x{data[err.start]:02x} at offset {err.start}"
            f"{hint}). Save it as UTF-8 and upload it again.",
        ) from None
    if "\x00" in text:
        raise IngestError(name, "looks like a binary file, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def single_document(
    name: str, title: str, sections: list[Section], mime: str, **meta
) -> list[ParsedDocument]:
    """The one document of a Markdown/text/HTML/PDF/DOCX file: id = file name, title or stem."""
    stem = Path(name).stem
    return [
        ParsedDocument(
            external_id=name,
            title=title or stem,
            sections=sections,
            source=name,
            mime=mime,
            metadata={k: v for k, v in meta.items() if v},
        )
    ]
