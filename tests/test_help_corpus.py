"""The answer benchmark's help centers (``bench/faq_corpus/*-help``): prose articles, no FAQ entries.

On these sites no FAQ entry can be quoted, so the bot writes its replies from the retrieved
passages (or quotes them when a written sentence is not supported): the sites where the generator
and its fine-tuning change the answer benchmark's figures. The fit ones are what the FAQ matcher's
passage weights are fitted on (``bench/fit_passage_match.py``), the held-out ones what they are
judged on; every article parses into prose sections only, and every question's expected facts
stand in the article it names.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.core.settings import IngestSettings
from retrieval.parsers import parse_file

CORPUS = Path(__file__).resolve().parents[1] / "bench" / "faq_corpus"
HELP = sorted(p.name for p in CORPUS.iterdir()
              if p.is_dir() and (p / "questions.json").is_file() and not (p / "expected.json").is_file())
S = IngestSettings()
ARTICLE_SUFFIXES = (".md", ".html", ".txt")


def test_help_centers_are_split_into_fit_and_held_out_ones():
    split = json.loads((CORPUS / "split.json").read_text())
    assert all(split.get(name) in ("fit", "held_out") for name in HELP)
    assert sum(split[name] == "held_out" for name in HELP) >= 3
    assert sum(split[name] == "fit" for name in HELP) >= 3


@pytest.mark.parametrize("company", HELP)
def test_articles_are_prose_and_questions_point_at_their_facts(company):
    folder = CORPUS / company
    # Markdown, HTML pages or plain text: the layouts a help center is exported in
    articles = {p.name: p for p in sorted(folder.iterdir()) if p.suffix in ARTICLE_SUFFIXES}
    assert len(articles) >= 6
    for path in articles.values():
        sections = [s for doc in parse_file(path, S) for s in doc.sections]
        assert sections, path.name
        assert all(s.kind != "faq" for s in sections), f"{path.name}: read as FAQ entries"
    questions = json.loads((folder / "questions.json").read_text())["questions"]
    kinds = [q["kind"] for q in questions]
    assert kinds.count("in_scope") >= 10 and kinds.count("trap") >= 5 and kinds.count("out_of_scope") >= 5
    for q in questions:
        if q["kind"] == "out_of_scope":
            continue
        text = articles[q["article"]].read_text(encoding="utf-8").lower()
        assert q["expect"] and all(e.lower() in text for e in q["expect"]), q["q"]
        if q["kind"] == "trap":
            assert q["contradiction"], q["q"]


@pytest.fixture(scope="module")
def paydeck(tmp_path_factory, minilm):
    """The held-out Paydeck help center, ingested with the real embedder and the bundled matcher."""
    from bot.components import Components
    from bot.core.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("help") / "var", dialogue={"faq_matcher": "default", "checker": ""},
                        generator={"backend": "extractive"})
    comps = Components(settings, parts={"embedder": minilm})
    report = comps.knowledge.ingest("paydeck", sorted((CORPUS / "paydeck-help").glob("*.md")), progress=False)
    assert not report.errors
    return comps.pipeline("paydeck", with_generator=False)


def test_a_help_centers_passage_is_the_reply_and_a_question_it_does_not_answer_is_not(paydeck):
    from bot.policy import ANSWER

    assert paydeck.matcher is not None and paydeck.matcher.passages is not None
    message = "how much is growth if i pay for the whole year up front"
    hits = paydeck.retrieve(message, [])
    assert not any(h.faq_answer for h in hits)
    match = paydeck.matcher.match(message, hits)
    assert match.kind == "passage" and match.direct == paydeck.matcher.passages["direct"]
    plan = paydeck.plan(message, hits)
    # before the passage weights (2026-12-03) this was asked back, offering the article's title
    assert plan.decision.action == ANSWER and plan.direct and "£240" in plan.sources[0].text
    off = "is there an iphone app"
    assert paydeck.plan(off, paydeck.retrieve(off, [])).decision.action != ANSWER


def test_a_passage_the_visitor_chose_from_a_clarifying_question_is_the_reply(paydeck):
    """The topic button sends the article's title; the reply is the passage that was offered
    (not the title planned as a new question, which may find another section or ask again)."""
    from bot.pipeline import topic_text
    from bot.policy import ANSWER, DIRECT

    message = "got the email with the big zip of everything, how long before that download expires"
    offered = paydeck.matcher.match(message, paydeck.retrieve(message, [])).entry
    assert offered.doc_id == "data-export.md" and "72 hours" in offered.text
    plan = paydeck.chosen(topic_text(offered), offered.chunk_id)
    assert plan is not None and plan.decision.action == ANSWER and plan.decision.reason == DIRECT
    assert [h.chunk_id for h in plan.sources] == [offered.chunk_id]
    assert paydeck.chosen("Exporting Your Data", -1) is None  # not among the hits: planned as any message
