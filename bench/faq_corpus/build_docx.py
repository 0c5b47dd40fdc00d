"""Build the corpus's Word files from their ``content.json`` (no .docx binaries are committed).

    python bench/faq_corpus/build_docx.py OUT_DIR     # writes OUT_DIR/<company>.docx for each

``content.json`` holds ``title``, ``intro`` (paragraphs) and ``sections``: each a ``heading``
(Heading 1) and ``entries`` of ``question``, ``answer`` (paragraphs; a list is bullet points) and
an optional ``label`` (a bold sub-heading line written once before the first entry that has it).

``layout`` says how the questions are written, as Word users do:

* ``bold_questions``: a Normal paragraph set in bold. Entries rotate through three ways of
  getting there: one bold run; the question split over two bold runs (as Word does after an
  edit); a bold "Q:" run followed by the question in regular text;
* ``heading_questions``: a Heading 2 paragraph, every third one starting "Q: ".
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import docx

CORPUS = Path(__file__).resolve().parent


def _answer(document, paragraphs: list) -> None:
    for paragraph in paragraphs:
        if isinstance(paragraph, list):
            for item in paragraph:
                document.add_paragraph(item, style="List Bullet")
        else:
            document.add_paragraph(paragraph)


def _bold_question(document, question: str, variant: int) -> None:
    paragraph = document.add_paragraph()
    if variant == 0:
        paragraph.add_run(question).bold = True
    elif variant == 1:
        cut = question.index(" ", len(question) // 2)
        paragraph.add_run(question[:cut]).bold = True
        paragraph.add_run(question[cut:]).bold = True
    else:
        paragraph.add_run("Q:").bold = True
        paragraph.add_run(" " + question)


def build(content_path: Path, out_path: Path) -> Path:
    """Write the .docx that ``content_path`` describes to ``out_path``; return ``out_path``."""
    content = json.loads(Path(content_path).read_text(encoding="utf-8"))
    layout = content["layout"]
    if layout not in ("bold_questions", "heading_questions"):
        raise ValueError(f"{content_path}: unknown layout {layout!r}")
    document = docx.Document()
    document.core_properties.title = content["title"]
    document.add_heading(content["title"], 0)  # the "Title" style
    for paragraph in content.get("intro", []):
        document.add_paragraph(paragraph)
    n = 0
    for section in content["sections"]:
        document.add_heading(section["heading"], 1)
        label = ""
        for entry in section["entries"]:
            if entry.get("label") and entry["label"] != label:
                label = entry["label"]
                document.add_paragraph().add_run(label).bold = True
            if layout == "bold_questions":
                _bold_question(document, entry["question"], n % 3)
            else:
                prefix = "Q: " if n % 3 == 2 else ""
                document.add_heading(prefix + entry["question"], 2)
            _answer(document, entry["answer"])
            n += 1
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    document.save(out_path)
    return out_path


def build_all(out_dir: Path) -> dict[str, Path]:
    """Build every company's .docx under ``out_dir``: ``{company folder name: path}``."""
    return {path.parent.name: build(path, Path(out_dir) / f"{path.parent.name}.docx")
            for path in sorted(CORPUS.glob("*/content.json"))}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for company, path in build_all(Path(sys.argv[1])).items():
        print(f"{company}: {path}")
