"""Every common FAQ layout is read as FAQ entries: the question and its whole answer.

The corpus in ``bench/faq_corpus/`` has one fictional company per layout; each file goes through
the real parser entry point and must give exactly the entries of its ``expected.json``. The
benchmark questions next to them must point at entries that exist and at facts their answers
hold. Further tests pin single rules (markers, sections, what stays prose).
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path

import docx
import pytest

from bot.core.settings import IngestSettings
from retrieval.parsers import parse_bytes, parse_file

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "bench" / "faq_corpus"
COMPANIES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.json").is_file())
S = IngestSettings()

# What must never be left in a stored question or answer (an answer may hold a numbered list).
LEFT_MARKER = re.compile(r"\*\*|__|^\s*(?:Q|A|Question|Answer)\s*\d*\s*[:.)]", re.M)
LEADING_NUMBER = re.compile(r"^\s*\d{1,3}[.)]\s")


def _load_builder():
    spec = importlib.util.spec_from_file_location("faq_corpus_build_docx", CORPUS / "build_docx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    """The FAQ file of every company; Word files are built from ``content.json`` here."""
    built = _load_builder().build_all(tmp_path_factory.mktemp("docx"))
    files = {}
    for company in COMPANIES:
        sources = sorted((CORPUS / company).glob("faq.*"))
        files[company] = sources[0] if sources else built[company]
    return files


def faq_entries(path: Path):
    return [s for doc in parse_file(path, S) for s in doc.sections if s.kind == "faq"]


def expected(company: str) -> list[dict]:
    return json.loads((CORPUS / company / "expected.json").read_text(encoding="utf-8"))


# --- the corpus -------------------------------------------------------------------------------


def test_corpus_has_at_least_12_companies_each_with_15_entries_and_one_faq_file():
    assert len(COMPANIES) >= 12
    for company in COMPANIES:
        folder = CORPUS / company
        sources = list(folder.glob("faq.*")) + list(folder.glob("content.json"))
        assert len(sources) == 1, company
        assert not list(folder.glob("*.docx")), "Word files are built, not committed"
        assert len(expected(company)) >= 15, company


@pytest.mark.parametrize("company", COMPANIES)
def test_layout_parses_into_the_expected_entries(company, corpus_files):
    got = faq_entries(corpus_files[company])
    want = expected(company)
    assert [s.question for s in got] == [e["question"] for e in want]
    for entry, section in zip(want, got):
        for fact in entry["answer_contains"]:
            assert fact in section.answer, (entry["question"], fact, section.answer)
        assert section.metadata.get("section", "") == entry.get("section", ""), entry["question"]
        assert not LEFT_MARKER.search(section.question), section.question
        assert not LEADING_NUMBER.match(section.question), section.question
        assert not LEFT_MARKER.search(section.answer), section.answer
        assert section.text == f"{section.question}\n{section.answer}"


def test_readme_marks_every_company_fit_or_held_out_about_two_thirds_fit():
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    splits = {}
    for company in COMPANIES:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{company}/`")), "")
        match = re.search(r"\*\*(fit|held-out)\*\*", row)
        assert match, f"{company} has no fit/held-out row in README.md"
        splits[company] = match.group(1)
    fit = sum(split == "fit" for split in splits.values())
    assert 0.55 <= fit / len(splits) <= 0.75


def _check_questions(questions_file: Path, answers: dict[str, str], minimum: dict[str, int]):
    data = json.loads(questions_file.read_text(encoding="utf-8"))
    assert data["company"] and data["questions"]
    kinds = [q["kind"] for q in data["questions"]]
    for kind, least in minimum.items():
        assert kinds.count(kind) >= least, (questions_file, kind)
    assert set(kinds) <= set(minimum)
    for q in data["questions"]:
        assert q["q"].strip()
        if q["kind"] == "out_of_scope":
            assert "entry" not in q and "expect" not in q
            continue
        assert q["entry"] in answers, (questions_file, q["entry"])
        assert q["q"].casefold() != q["entry"].casefold(), "a paraphrase, not the FAQ's wording"
        assert q["expect"]
        answer = " ".join(answers[q["entry"]].split())  # the sample FAQ is hard-wrapped
        for fact in q["expect"]:  # the fact a right reply states is in the entry's answer
            assert fact in answer, (q["q"], fact)
        if q["kind"] == "trap":
            assert q["contradiction"] and all(c.strip() for c in q["contradiction"])


@pytest.mark.parametrize("company", COMPANIES)
def test_benchmark_questions_point_at_entries_and_facts_of_the_company(company, corpus_files):
    answers = {s.question: s.answer for s in faq_entries(corpus_files[company])}
    _check_questions(CORPUS / company / "questions.json", answers,
                     {"in_scope": 8, "trap": 3, "out_of_scope": 3})


def test_fit_companies_have_paraphrases_only_they_and_of_every_entry(corpus_files):
    """The FAQ matcher's extra fit material: three written questions per entry of each fit
    company, out-of-scope ones too; a held-out company has none (it would be fitted on)."""
    split = json.loads((CORPUS / "split.json").read_text())
    for company in COMPANIES:
        path = CORPUS / company / "paraphrases.json"
        if split[company] != "fit":
            assert not path.exists(), company
            continue
        answers = {s.question: s.answer for s in faq_entries(corpus_files[company])}
        _check_questions(path, answers, {"in_scope": 3 * len(answers), "out_of_scope": 5})
        written = json.loads(path.read_text())["questions"]
        asked = [q["entry"] for q in written if q["kind"] == "in_scope"]
        assert all(asked.count(entry) == 3 for entry in answers), company
        benchmark = {q["q"].casefold() for q in json.loads((CORPUS / company / "questions.json").read_text())["questions"]}
        assert not benchmark & {q["q"].casefold() for q in written}, "never the benchmark's own questions"


def test_sample_faq_benchmark_questions():
    answers = {s.question: s.answer for f in sorted((ROOT / "samples" / "faq").iterdir())
               for s in faq_entries(f)}
    _check_questions(CORPUS / "sample_faq_questions.json", answers,
                     {"in_scope": 15, "trap": 5, "out_of_scope": 5})


# --- single rules -----------------------------------------------------------------------------


def parse(name: str, text: str | bytes):
    data = text.encode() if isinstance(text, str) else text
    return [s for doc in parse_bytes(name, data, S) for s in doc.sections]


def faqs(name: str, text: str | bytes):
    return [(s.question, s.answer, s.metadata.get("section", "")) for s in parse(name, text)
            if s.kind == "faq"]


def test_bold_questions_under_h1_sections_are_entries_not_sections():
    md = ("# Shipping\n\n**Q: Do you ship abroad?**\nA: Only to Canada.\n\n"
          "**How long does it take?**\n3 days.\n\nOr 5 days in winter.\n\n"
          "# Returns\n\n**Q:** Can I return sale items?\n**A:** No.\n")
    assert faqs("help.md", md) == [
        ("Do you ship abroad?", "Only to Canada.", "Shipping"),
        ("How long does it take?", "3 days.\n\nOr 5 days in winter.", "Shipping"),
        ("Can I return sale items?", "No.", "Returns"),
    ]


def test_question_headings_lose_q_and_bold_a_markers_including_an_unclosed_bold_answer():
    md = ("# Help\n\n## Billing\n\n### Q: Do you bill monthly?\n**A:** Yes, on the 1st.\n\n"
          "### Q3. Minimum order\n\n**A: $20, before discounts.**\n\n"
          "### 4. Can I pay by card?\n\n**Answer**: Yes; see **Payments** for the list.\n")
    assert faqs("help.md", md) == [
        ("Do you bill monthly?", "Yes, on the 1st.", "Billing"),
        ("Minimum order", "$20, before discounts.", "Billing"),
        # Emphasis inside an answer is the answer's own (the chat widget renders it).
        ("Can I pay by card?", "Yes; see **Payments** for the list.", "Billing"),
    ]


def test_q_a_lines_without_blank_lines_and_an_inline_answer_are_separate_entries():
    text = ("Q: Are you open on Sundays?\nA: No.\nQ: Do you deliver?\nA: Yes, within 5 miles.\n"
            "Q: Is parking free? A: For 2 hours.\n")
    assert faqs("faq.txt", text) == [
        ("Are you open on Sundays?", "No.", ""),
        ("Do you deliver?", "Yes, within 5 miles.", ""),
        ("Is parking free?", "For 2 hours.", ""),
    ]


def test_numbered_q_and_a_markers_are_stripped_but_a_sentence_starting_with_a_stays():
    text = ("Q1. How much is a lesson?\nA1. 38 pounds an hour.\n\nQ2. Is there a discount?\n"
            "A2) A 10% discount on blocks of 10 hours.\n\nQ3. Do you teach on Sundays?\nA 2-hour slot at 9 am only.\n")
    assert faqs("faq.txt", text) == [
        ("How much is a lesson?", "38 pounds an hour.", ""),
        ("Is there a discount?", "A 10% discount on blocks of 10 hours.", ""),
        ("Do you teach on Sundays?", "A 2-hour slot at 9 am only.", ""),
    ]


def test_a_bold_question_with_its_answer_on_the_same_line():
    md = "**How do I pay?** By card or PayPal.\n\n**Can I pay later?** No, we need payment upfront.\n"
    assert faqs("pay.md", md) == [("How do I pay?", "By card or PayPal.", ""),
                                  ("Can I pay later?", "No, we need payment upfront.", "")]


def test_a_bulleted_list_of_bold_questions_is_entries_but_a_list_of_questions_is_prose():
    md = ("- **How do I pay?**\n  By card or PayPal.\n- **Can I get a refund?**\n  Yes, within 30 days."
          "\n\n  Keep the receipt.\n\nAsk yourself:\n\n- Do I need it?\n- Can I afford it?\n")
    assert faqs("pay.md", md)[:1] == [("How do I pay?", "By card or PayPal.", "")]
    assert faqs("pay.md", md)[1][1].startswith("Yes, within 30 days.\n\nKeep the receipt.")
    prose = "# Tips\n\nAsk yourself:\n\n- Do I need it?\n- Can I afford it?\n\nThen decide.\n"
    assert [s.kind for s in parse("tips.md", prose)] == ["text"]


def test_accordions_of_common_site_builders_and_tabs_that_are_not_faqs():
    page = """<html><body>
    <div class="schema-faq"><div class="schema-faq-section"><strong class="schema-faq-question">Is it
    vegan?</strong> <p class="schema-faq-answer">Yes.</p></div></div>
    <div class="panel"><div class="panel-heading"><h4 class="panel-title"><a href="#c1">What is the
    warranty?</a></h4></div><div id="c1" class="panel-collapse collapse"><div>Two years.</div></div></div>
    <div class="elementor-accordion" role="tablist"><div class="elementor-tab-title" role="tab"
    aria-controls="e1">Gift wrapping</div><div id="e1" role="tabpanel" hidden><p>$3 an item.</p></div></div>
    <div role="tablist"><button role="tab" aria-controls="t1">Specs</button></div>
    <div id="t1" role="tabpanel"><p>Weight 2 kg.</p></div></body></html>"""
    assert faqs("faq.html", page) == [
        ("Is it vegan?", "Yes.", ""),
        ("What is the warranty?", "Two years.", ""),
        ("Gift wrapping", "$3 an item.", ""),
    ]
    assert "Weight 2 kg." in [s.text for s in parse("faq.html", page)][-1]


def test_a_thematic_break_ends_the_answer_above_it():
    md = "## Do you ship?\n\nYes.\n\n---\n\nCall 555-0100 for anything else.\n"
    sections = parse("a.md", md)
    assert [(s.kind, s.heading, s.text) for s in sections] == [
        ("faq", "Do you ship?", "Do you ship?\nYes."),
        ("text", "", "Call 555-0100 for anything else."),
    ]


def test_structured_html_entries_and_json_ld_only_adds_questions_not_on_the_page():
    page = """<html><head><title>FAQ</title><script type="application/ld+json">
    {"@type": "FAQPage", "mainEntity": [
      {"@type": "Question", "name": "Do you open late?", "acceptedAnswer": {"text": "Until 9 pm."}},
      {"@type": "Question", "name": "Is there parking?", "acceptedAnswer": {"text": "<p>Yes, free.</p>"}}]}
    </script><script type="application/ld+json">{not json</script></head><body><h1>FAQ</h1>
    <h2>Visiting</h2><details><summary>Do you open late?</summary><p>Until 9 pm on Fridays.</p></details>
    <button aria-controls="menu">Menu</button><ul id="menu" hidden><li>Home</li></ul>
    <details><summary>Show more</summary><p>Opening times for holidays.</p></details>
    </body></html>"""
    assert faqs("faq.html", page) == [
        ("Do you open late?", "Until 9 pm on Fridays.", "Visiting"),
        ("Show more", "Opening times for holidays.", "Visiting"),  # same FAQ group as a question
        ("Is there parking?", "Yes, free.", ""),
    ]


def test_nested_groups_of_questions_give_their_label_as_the_section():
    page = """<html><body>
    <details><summary>Shipping</summary>
      <details><summary>How fast is it?</summary><p>2 days.</p></details>
      <details><summary>Do you ship abroad?</summary><p>EU only.</p></details></details>
    <div class="accordion"><button class="accordion-button" aria-controls="g1">Returns +</button>
      <div id="g1" hidden><div class="faq-item"><button class="faq-question" aria-controls="q1">Are
      returns free?</button><div id="q1" hidden><p>Yes, for 30 days.</p></div></div></div></div>
    <details><summary>Is the shop open late?</summary></details></body></html>"""
    assert faqs("faq.html", page) == [
        ("How fast is it?", "2 days.", "Shipping"),
        ("Do you ship abroad?", "EU only.", "Shipping"),
        ("Are returns free?", "Yes, for 30 days.", "Returns"),
    ]
    # A disclosure with nothing in it is left as the text it was.
    assert parse("faq.html", page)[-1].text == "Is the shop open late?"


def test_bold_lines_are_sub_headings_only_when_questions_follow():
    d = docx.Document()
    d.add_heading("Claims", 1)
    d.add_paragraph().add_run("Before you claim").bold = True
    d.add_paragraph().add_run("How do I claim?").bold = True
    d.add_paragraph("Online, within 30 days.")
    d.add_paragraph().add_run("Opening hours").bold = True  # part of the answer, not a heading
    d.add_paragraph("9 am to 5 pm.")
    buf = io.BytesIO()
    d.save(buf)
    assert faqs("claims.docx", buf.getvalue()) == [
        ("How do I claim?", "Online, within 30 days.\nOpening hours\n9 am to 5 pm.", "Before you claim"),
    ]


def test_csv_section_column_and_title_fallback_become_section_metadata():
    with_section = b"section,question,answer\nBilling,When am I billed?,On the 1st.\n"
    with_title = b"question,answer,title\nWhen am I billed?,On the 1st.,Payments\n"
    assert faqs("a.csv", with_section) == [("When am I billed?", "On the 1st.", "Billing")]
    assert faqs("b.csv", with_title) == [("When am I billed?", "On the 1st.", "Payments")]


# --- prose stays prose ------------------------------------------------------------------------

PROSE = (
    "Our bakery opened in 1990. Why? Because the town had no bread worth the name, and we thought "
    "we could change that.\n\n"
    "Have you ever wondered how long a sourdough takes?\n\n"
    "It takes two days: a night for the starter and a day for the dough. Ask yourself:\n\n"
    "1. Do I have the time?\n2. Do I have the patience?\n\nThen start baking."
)


@pytest.mark.parametrize("name,text", [
    ("story.md", "# Our story\n\n" + PROSE),
    ("story.txt", PROSE),
    ("story.html", "<html><body><h1>Our story</h1>" + "".join(
        f"<p>{p}</p>" for p in PROSE.split("\n\n")) + "</body></html>"),
])
def test_prose_with_incidental_questions_is_still_prose(name, text):
    sections = parse(name, text)
    assert [s.kind for s in sections] == ["text"]
    assert "Why? Because" in sections[0].text and "Then start baking." in sections[0].text


def test_prose_markdown_keeps_its_text_exactly():
    (section,) = parse("story.md", "# Our story\n\n" + PROSE)
    assert section.text == PROSE  # the numbered questions are still one list in place


def test_prose_docx_with_a_bold_line_and_a_question_is_prose():
    d = docx.Document()
    d.add_heading("Our story", 1)
    d.add_paragraph().add_run("Where it began").bold = True
    d.add_paragraph("We opened in 1990. Why? Because the town needed bread.")
    d.add_paragraph("Is there a better job? We doubt it.")
    buf = io.BytesIO()
    d.save(buf)
    sections = parse("story.docx", buf.getvalue())
    assert [s.kind for s in sections] == ["text"]
    assert sections[0].text.startswith("Where it began\nWe opened in 1990.")


def test_one_standalone_question_line_is_not_an_faq_but_two_with_answers_are():
    one = "Welcome to the shop.\n\nWhat makes us different?\n\nWe bake at night.\n"
    two = one + "\nWhen do you open?\nAt 7 am every day.\n"
    assert faqs("a.txt", one) == []
    assert faqs("b.txt", two) == [("What makes us different?", "We bake at night.", ""),
                                  ("When do you open?", "At 7 am every day.", "")]
