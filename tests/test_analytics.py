"""Analytics figures (bot/analytics.py) on a small hand-built dataset, on SQLite and PostgreSQL.

Every figure is worked out by hand in the comments of ``dataset``; the tests assert exact counts,
rates and percentiles, for one bot and for all bots.
"""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

from bot.analytics import Analytics, Filters, cluster_vectors, purity, safe_cell
from bot.core.errors import SupportbotError
from bot.core.store import Database
from bot.core.store.models import Conversation, Feedback, Handoff, Message

D = dt.datetime
EMAIL = "alice@example.com"
PRIVATE = "my order 4411 never came"  # an answered visitor message: never in an export




def conversation(s, bot_id, at, status="bot", **fields) -> str:
    cid = str(uuid.uuid4())
    s.add(Conversation(id=cid, bot_id=bot_id, visitor_id="v", status=status, created_at=at,
                       updated_at=at, meta={}, **fields))
    s.flush()
    return cid


def message(s, cid, role, text, at, **fields) -> int:
    m = Message(conversation_id=cid, role=role, text=text, created_at=at, updated_at=at, **fields)
    s.add(m)
    s.flush()
    return m.id


def dataset(db: Database) -> dict:
    """Bot ``shop`` and bot ``other``, over 2024-03-01..03 (and one day before).

    shop, in range: c1 resolved (answer, ttft 100, +1); c2 handed off (low confidence, a person
    replied; unanswered); c3 reopened 11 h after being resolved (ttft 200, -1): not resolved; c4
    reopened 2 days after (ttft 300; -1 then +1: the latest counts): resolved; c5 asked for a
    person: handed off, not unanswered; c6 asked back on (clarify, ttft 400): resolved, unanswered.
    -> 6 conversations, 3 resolved (0.5), 2 handed off (1/3), 2 up 1 down, ttft 100..400:
    p50 250, p95 385.  c7 (Feb 28, ttft 10 000) is outside the range.
    other: c8 answered (ttft 500, -1); c10 asked back on a question written like a formula.
    all bots -> 8 conversations, 5 resolved, 2 handed off, 2 up 2 down, ttft p50 300, p95 480.
    """
    shop, other = db.bot_id("shop"), db.bot_id("other")
    ids: dict = {"shop": shop, "other": other}
    with db.session() as s:
        c1 = conversation(s, shop, D(2024, 3, 1, 10))
        message(s, c1, "user", PRIVATE, D(2024, 3, 1, 10))
        b1 = message(s, c1, "bot", "It ships today [1].", D(2024, 3, 1, 10, 0, 1), decision="answer", ttft_ms=100.0)
        s.add(Feedback(message_id=b1, conversation_id=c1, rating=1, created_at=D(2024, 3, 1, 10, 5)))

        c2 = conversation(s, shop, D(2024, 3, 1, 11), status="resolved", visitor_email=EMAIL,
                          resolved_at=D(2024, 3, 1, 12))
        ids["parcel"] = message(s, c2, "user", "Where is my parcel?", D(2024, 3, 1, 11))
        ids["parcel_reply"] = message(s, c2, "bot", "A person will reply here.", D(2024, 3, 1, 11, 0, 1),
                                      decision="handoff")
        s.add(Handoff(conversation_id=c2, reason="low_confidence", created_at=D(2024, 3, 1, 11, 0, 1)))
        message(s, c2, "human", "It is on its way.", D(2024, 3, 1, 11, 30))

        c3 = conversation(s, shop, D(2024, 3, 2, 9), status="bot", resolved_at=D(2024, 3, 2, 9, 10),
                          reopened_at=D(2024, 3, 2, 20))
        message(s, c3, "user", "Do you ship abroad?", D(2024, 3, 2, 9))
        b3 = message(s, c3, "bot", "Yes [1].", D(2024, 3, 2, 9, 0, 1), decision="answer", ttft_ms=200.0)
        s.add(Feedback(message_id=b3, conversation_id=c3, rating=-1, created_at=D(2024, 3, 2, 9, 5)))

        c4 = conversation(s, shop, D(2024, 3, 2, 12), status="resolved", resolved_at=D(2024, 3, 2, 12, 5),
                          reopened_at=D(2024, 3, 4, 12))
        message(s, c4, "user", "Opening hours?", D(2024, 3, 2, 12))
        b4 = message(s, c4, "bot", "9 to 5 [1].", D(2024, 3, 2, 12, 0, 1), decision="answer", ttft_ms=300.0)
        s.add(Feedback(message_id=b4, conversation_id=c4, rating=-1, created_at=D(2024, 3, 2, 12, 1)))
        s.add(Feedback(message_id=b4, conversation_id=c4, rating=1, created_at=D(2024, 3, 2, 12, 2)))

        c5 = conversation(s, shop, D(2024, 3, 3, 8), status="waiting", waiting_since=D(2024, 3, 3, 8))
        message(s, c5, "user", "Can I talk to a human please?", D(2024, 3, 3, 8))
        message(s, c5, "bot", "A person will reply here.", D(2024, 3, 3, 8, 0, 1), decision="handoff")
        s.add(Handoff(conversation_id=c5, reason="requested", created_at=D(2024, 3, 3, 8, 0, 1)))

        c6 = conversation(s, shop, D(2024, 3, 3, 9))
        ids["bitcoin"] = message(s, c6, "user", "Can I pay with bitcoin?", D(2024, 3, 3, 9))
        message(s, c6, "bot", "Did you mean one of these?", D(2024, 3, 3, 9, 0, 1), decision="clarify",
                ttft_ms=400.0)

        c7 = conversation(s, shop, D(2024, 2, 28, 9))
        message(s, c7, "user", "Old question?", D(2024, 2, 28, 9))
        message(s, c7, "bot", "Old answer.", D(2024, 2, 28, 9, 0, 1), decision="clarify", ttft_ms=10_000.0)

        c8 = conversation(s, other, D(2024, 3, 1, 15))
        message(s, c8, "user", "Hello?", D(2024, 3, 1, 15))
        b8 = message(s, c8, "bot", "Hi [1].", D(2024, 3, 1, 15, 0, 1), decision="answer", ttft_ms=500.0)
        s.add(Feedback(message_id=b8, conversation_id=c8, rating=-1, created_at=D(2024, 3, 1, 15, 1)))

        c10 = conversation(s, other, D(2024, 3, 2, 10))
        ids["formula"] = message(s, c10, "user", "=HYPERLINK(\"http://evil.example\") refund?", D(2024, 3, 2, 10))
        message(s, c10, "bot", "Which order?", D(2024, 3, 2, 10, 0, 1), decision="clarify")
        ids.update(c1=c1, c2=c2, c6=c6, c10=c10)
    return ids


RANGE = dict(start="2024-03-01", end="2024-03-03")


def test_figures_of_one_bot(db):
    ids = dataset(db)
    report = Analytics(db).report(Filters.parse(**RANGE, bot_id=ids["shop"]))
    assert [(d.day, d.conversations, d.resolved_by_bot, d.handed_off) for d in report.days] == [
        ("2024-03-01", 2, 1, 1), ("2024-03-02", 2, 1, 0), ("2024-03-03", 2, 1, 1)]
    assert (report.conversations, report.resolved_by_bot, report.handed_off) == (6, 3, 2)
    assert report.resolution_rate == 0.5 and report.handoff_rate == pytest.approx(1 / 3)
    assert (report.thumbs_up, report.thumbs_down) == (2, 1)
    assert report.satisfaction == pytest.approx(2 / 3)
    assert [(d.thumbs_up, d.thumbs_down) for d in report.days] == [(1, 0), (1, 1), (0, 0)]
    assert report.ttft_replies == 4
    assert report.ttft_p50_ms == pytest.approx(250.0) and report.ttft_p95_ms == pytest.approx(385.0)
    # Unanswered: the low-confidence hand-off and the question asked back on, not the visitor's
    # own request for a person, not the day before the range.
    assert sorted(g.question for g in report.groups) == ["Can I pay with bitcoin?", "Where is my parcel?"]
    assert report.unanswered_considered == 2
    parcel = next(g for g in report.groups if g.message_id == ids["parcel"])
    assert parcel.size == 1 and parcel.conversations == [{"id": ids["c2"], "bot": "shop"}]
    assert parcel.reply_id == ids["parcel_reply"]


def test_figures_of_all_bots(db):
    dataset(db)
    report = Analytics(db).report(Filters.parse(**RANGE))
    assert [(d.conversations, d.resolved_by_bot, d.handed_off) for d in report.days] == [
        (3, 2, 1), (3, 2, 0), (2, 1, 1)]
    assert (report.conversations, report.resolved_by_bot, report.handed_off) == (8, 5, 2)
    assert (report.thumbs_up, report.thumbs_down, report.satisfaction) == (2, 2, 0.5)
    assert report.ttft_replies == 5
    assert report.ttft_p50_ms == pytest.approx(300.0) and report.ttft_p95_ms == pytest.approx(480.0)
    assert {g.conversations[0]["bot"] for g in report.groups} == {"shop", "other"}


def test_date_filter_and_empty_range(db):
    ids = dataset(db)
    one_day = Analytics(db).report(Filters.parse("2024-03-02", "2024-03-02", ids["shop"]))
    assert (one_day.conversations, one_day.resolved_by_bot, one_day.handed_off) == (2, 1, 0)
    assert one_day.ttft_p50_ms == pytest.approx(250.0) and one_day.ttft_replies == 2
    assert one_day.groups == []
    before = Analytics(db).report(Filters.parse("2024-02-28", "2024-02-28", ids["shop"]))
    assert before.conversations == 1 and before.ttft_p50_ms == pytest.approx(10_000.0)
    empty = Analytics(db).report(Filters.parse("2023-01-01", "2023-01-31"))
    assert empty.conversations == 0 and len(empty.days) == 31
    assert empty.resolution_rate is None and empty.satisfaction is None
    assert (empty.ttft_p50_ms, empty.ttft_p95_ms, empty.ttft_replies) == (None, None, 0)


def test_filters_refuse_bad_input():
    with pytest.raises(SupportbotError, match="YYYY-MM-DD"):
        Filters.parse("2024-13-01", "2024-03-01")
    with pytest.raises(SupportbotError, match="YYYY-MM-DD"):
        Filters.parse("yesterday", None)
    with pytest.raises(SupportbotError, match="after the end"):
        Filters.parse("2024-03-05", "2024-03-01")
    with pytest.raises(SupportbotError, match="longer than"):
        Filters.parse("2020-01-01", "2024-03-01")
    f = Filters.parse(None, None, today=dt.date(2024, 3, 31))
    assert (f.start, f.end) == (dt.date(2024, 3, 2), dt.date(2024, 3, 31))


def test_csv_exports(db):
    ids = dataset(db)
    analytics = Analytics(db)
    report = analytics.report(Filters.parse(**RANGE))
    summary = analytics.csv(report, "summary")
    assert "conversations,8\r\n" in summary and "resolution_rate,0.625\r\n" in summary
    assert "thumbs_down,2\r\n" in summary and "ttft_p95_ms,480.0\r\n" in summary
    daily = analytics.csv(report, "daily").splitlines()
    assert daily[0].startswith("day,conversations,resolved_by_bot")
    assert daily[1] == "2024-03-01,3,2,0.666667,1,0.333333,1,1,0.5"
    unanswered = analytics.csv(report, "unanswered")
    assert "Where is my parcel?" in unanswered and f",{ids['parcel']}," in unanswered
    # A question written like a formula is exported as text.
    assert "\"'=HYPERLINK(\"\"http://evil.example\"\") refund?\"" in unanswered
    for text in (summary, "\n".join(daily), unanswered):
        assert EMAIL not in text and PRIVATE not in text and "It is on its way" not in text
    with pytest.raises(SupportbotError, match="export kind"):
        analytics.csv(report, "emails")


def test_safe_cell():
    assert [safe_cell(v) for v in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "ok", -1, 2.5)] == [
        "'=1+1", "'+1", "'-2", "'@SUM(A1)", "'\tx", "ok", -1, 2.5]


def test_identical_questions_group_without_an_embedder(db):
    bot = db.bot_id("shop")
    with db.session() as s:
        for i, text in enumerate(["Do you sell gift cards?", "do you  sell gift cards?", "Refund?"]):
            c = conversation(s, bot, D(2024, 3, 1, 9 + i))
            message(s, c, "user", text, D(2024, 3, 1, 9 + i))
            message(s, c, "bot", "?", D(2024, 3, 1, 9 + i, 0, 1), decision="clarify")
    groups = Analytics(db).report(Filters.parse("2024-03-01", "2024-03-01")).groups
    assert [(g.size, len(g.conversations)) for g in groups] == [(2, 2), (1, 1)]
    assert groups[0].question.lower().startswith("do you")


def test_unanswered_questions_are_bounded(db):
    bot = db.bot_id("shop")
    with db.session() as s:
        for i in range(7):
            c = conversation(s, bot, D(2024, 3, 1, 9, i))
            message(s, c, "user", f"question number {i}", D(2024, 3, 1, 9, i))
            message(s, c, "bot", "?", D(2024, 3, 1, 9, i, 1), decision="clarify")
    analytics = Analytics(db, unanswered_limit=5)
    rows = analytics.unanswered(Filters.parse("2024-03-01", "2024-03-01"))
    assert [r["text"] for r in rows] == [f"question number {i}" for i in (6, 5, 4, 3, 2)]


def test_purity_and_clustering_of_vectors():
    assert purity([0, 0, 1, 1], ["a", "a", "b", "a"]) == 0.75
    assert purity([], []) == 0.0
    vecs = [[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0, 0.99, 0.14], [0, 0, 1]]
    import numpy as np

    v = np.asarray(vecs, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    labels = cluster_vectors(v, 0.3)
    assert labels[0] == labels[1] and labels[2] == labels[3] and len(set(labels.tolist())) == 3
