"""How the bot does: the figures and groups of the admin analytics page, read from the store.

``Analytics(db, embedder).report(Filters.parse(start, end, bot_id))`` for a date range (UTC days,
both ends included) and one bot or all bots. Every figure is computed in the database with
SQLAlchemy Core, in a handful of queries shaped for the indexes migration 0004 adds:

* conversations by ``created_at`` (``ix_conversations_bot_created`` for one bot); per day: how
  many started, how many the bot resolved, how many were handed off. A conversation counts as
  **resolved by the bot** when no person took part in it (no message of role ``human``, no
  hand-off row, not waiting for or with a person now) and it was not reopened within 24 hours of
  being resolved (of its start, when it was never marked resolved). Resolution rate and hand-off
  rate are over the conversations that started in the range;
* feedback by ``created_at`` (``ix_feedback_created_at``): the latest rating of each rated reply,
  thumbs up and down both counted, satisfaction = up / (up + down);
* time to first token of bot replies by ``messages.created_at`` (``ix_messages_created_at``):
  p50 and p95 with ``percentile_cont`` on PostgreSQL; elsewhere (SQLite) the same linear
  interpolation from the two ordered values around the rank, read with ``LIMIT 2 OFFSET k``;
* unanswered questions: the visitor messages whose bot reply was a clarifying question or a
  hand-off the visitor did not ask for (``bot.policy.wants_human``, the rule that made it), the
  ``UNANSWERED_LIMIT`` most recent in the range, grouped by meaning: their embeddings (the
  embedder the retriever uses, MiniLM by default) clustered by scikit-learn's agglomerative
  clustering, average linkage under a cosine distance threshold (``CLUSTER_DISTANCE``, measured on
  StackFAQ's paraphrases, see README). The bound keeps the page fast at any volume: embedding is
  the slow part, and an embedding never changes, so they are cached per message id.

Visitor e-mail addresses are never read here; message texts appear only as unanswered questions.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import Interval, and_, case, func, literal, literal_column, not_, select
from sqlalchemy.orm import aliased

from bot.core.errors import SupportbotError
from bot.core.store.db import Database
from bot.core.store.models import Bot, Conversation, Feedback, Handoff, Message
from bot.policy import wants_human
from retrieval.types import Embedder

# The most recent unanswered questions clustered per page load. Bounded because embedding them is
# the slow part of the page (200 short questions: about 1 s with MiniLM on two busy CPU cores, the
# first time; their vectors are cached after that).
UNANSWERED_LIMIT = 200
# Average-linkage cosine distance under which two groups of questions merge. On StackFAQ's 631
# paraphrases of 125 threads: 0.45 gives 135 groups, purity 0.914 and inverse purity 0.945 (0.40:
# 163 groups, 0.959 / 0.902; 0.50: 113 groups, 0.854 / 0.971).
CLUSTER_DISTANCE = 0.45
GROUPS_SHOWN = 20
CONVERSATIONS_PER_GROUP = 20
MAX_DAYS = 366
REOPEN_WINDOW = dt.timedelta(hours=24)
# Bot replies that leave the question unanswered.
UNANSWERED_DECISIONS = ("handoff", "clarify")
_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Filters:
    start: dt.date  # first day, UTC
    end: dt.date  # last day, UTC, included
    bot_id: int | None = None  # None: every bot

    @classmethod
    def parse(cls, start: str | None, end: str | None, bot_id: int | None = None,
              today: dt.date | None = None, default_days: int = 30) -> "Filters":
        """Filters from ``YYYY-MM-DD`` strings; missing ones give the last ``default_days`` days.
        A bad date or range is a ``SupportbotError`` (400) that says what is wrong."""
        today = today or dt.datetime.now(dt.timezone.utc).date()
        end_d = _date(end, "end") if end else today
        start_d = _date(start, "start") if start else end_d - dt.timedelta(days=default_days - 1)
        if start_d > end_d:
            raise SupportbotError(f"the start date {start_d} is after the end date {end_d}")
        if (end_d - start_d).days + 1 > MAX_DAYS:
            raise SupportbotError(f"the date range is longer than {MAX_DAYS} days")
        return cls(start_d, end_d, bot_id)

    @property
    def since(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time())

    @property
    def until(self) -> dt.datetime:  # exclusive
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time())

    def days(self) -> list[str]:
        n = (self.end - self.start).days + 1
        return [(self.start + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip()[:10]) if len(value.strip()) == 10 else _bad(value, name)
    except ValueError:
        return _bad(value, name)


def _bad(value: str, name: str) -> dt.date:
    raise SupportbotError(f"the {name} date must be YYYY-MM-DD, got {value[:40]!r}")


@dataclass
class Day:
    day: str
    conversations: int = 0
    resolved_by_bot: int = 0
    handed_off: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0


@dataclass
class Group:
    """Unanswered questions of one meaning: ``question`` is the member closest to the others."""

    question: str
    message_id: int  # the visitor message of the representative question
    reply_id: int  # the bot's reply to it (a hand-off or a clarifying question)
    size: int
    conversations: list[dict] = field(default_factory=list)  # [{"id", "bot"}], most recent first
    questions: list[str] = field(default_factory=list)  # distinct member texts, most recent first


@dataclass
class Report:
    filters: Filters
    days: list[Day]
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_replies: int
    groups: list[Group]
    unanswered_considered: int  # unanswered questions clustered (at most UNANSWERED_LIMIT)

    @property
    def conversations(self) -> int:
        return sum(d.conversations for d in self.days)

    @property
    def resolved_by_bot(self) -> int:
        return sum(d.resolved_by_bot for d in self.days)

    @property
    def handed_off(self) -> int:
        return sum(d.handed_off for d in self.days)

    @property
    def thumbs_up(self) -> int:
        return sum(d.thumbs_up for d in self.days)

    @property
    def thumbs_down(self) -> int:
        return sum(d.thumbs_down for d in self.days)

    @property
    def resolution_rate(self) -> float | None:
        return _rate(self.resolved_by_bot, self.conversations)

    @property
    def handoff_rate(self) -> float | None:
        return _rate(self.handed_off, self.conversations)

    @property
    def satisfaction(self) -> float | None:
        return _rate(self.thumbs_up, self.thumbs_up + self.thumbs_down)

    def summary(self) -> dict[str, Any]:
        return {
            "start": self.filters.start.isoformat(), "end": self.filters.end.isoformat(),
            "conversations": self.conversations, "resolved_by_bot": self.resolved_by_bot,
            "resolution_rate": self.resolution_rate, "handed_off": self.handed_off,
            "handoff_rate": self.handoff_rate, "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down, "satisfaction": self.satisfaction,
            "ttft_p50_ms": self.ttft_p50_ms, "ttft_p95_ms": self.ttft_p95_ms,
            "ttft_replies": self.ttft_replies, "unanswered_considered": self.unanswered_considered,
        }

    def chart_data(self) -> dict[str, Any]:
        """The daily series, as the page's charts read them."""
        return {
            "days": [d.day for d in self.days],
            "conversations": [d.conversations for d in self.days],
            "resolved_by_bot": [d.resolved_by_bot for d in self.days],
            "handed_off": [d.handed_off for d in self.days],
            "resolution_rate": [_rate(d.resolved_by_bot, d.conversations) for d in self.days],
            "handoff_rate": [_rate(d.handed_off, d.conversations) for d in self.days],
            "thumbs_up": [d.thumbs_up for d in self.days],
            "thumbs_down": [d.thumbs_down for d in self.days],
        }


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


class Analytics:
    """The analytics of one database. ``embedder`` embeds the unanswered questions (None: they
    are listed one per group, not grouped by meaning)."""

    def __init__(self, db: Database, embedder: Embedder | None = None,
                 unanswered_limit: int = UNANSWERED_LIMIT, distance: float = CLUSTER_DISTANCE):
        self.db = db
        self.embedder = embedder
        self.unanswered_limit = unanswered_limit
        self.distance = distance
        self._vectors: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def _postgres(self) -> bool:
        return self.db.engine.dialect.name == "postgresql"

    # -- the whole page ---------------------------------------------------------------------
    def report(self, filters: Filters) -> Report:
        """Everything the page shows. The four parts are independent reads, run at once on
        connections of their own: the page takes as long as the slowest part, not the sum."""
        def unanswered_groups():
            questions = self.unanswered(filters)
            return self.group(questions)[:GROUPS_SHOWN], len(questions)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="analytics") as pool:
            conversations = pool.submit(self._conversation_days, filters)
            feedback = pool.submit(self._feedback_days, filters)
            ttft = pool.submit(self.ttft, filters)
            groups = pool.submit(unanswered_groups)
            days = {d: Day(d) for d in filters.days()}
            for row in conversations.result():
                day = days[_day(row.day)]
                day.conversations, day.resolved_by_bot, day.handed_off = (
                    int(row.conversations), int(row.resolved or 0), int(row.handed_off or 0))
            for row in feedback.result():
                day = days[_day(row.day)]
                day.thumbs_up, day.thumbs_down = int(row.up or 0), int(row.down or 0)
            p50, p95, n = ttft.result()
            shown, considered = groups.result()
        return Report(filters, list(days.values()), p50, p95, n, shown, considered)

    def queries(self, filters: Filters) -> dict[str, Any]:
        """The page's queries by name, as SQLAlchemy statements (``bench/analytics.py`` EXPLAINs
        them); the unanswered questions' texts are then read by primary key."""
        out = {"conversations_per_day": self.conversation_days_query(filters),
               "feedback_per_day": self.feedback_days_query(filters),
               "unanswered": self.unanswered_query(filters)}
        if self._postgres:
            out["ttft_percentiles"] = self.ttft_query(filters)
        return out

    # -- conversations ----------------------------------------------------------------------
    def _in_range(self, column, filters: Filters):
        return and_(column >= filters.since, column < filters.until)

    def _reopened_soon(self):
        """True when the conversation was reopened within 24 h of its resolution (or start)."""
        c = Conversation
        ref = func.coalesce(c.resolved_at, c.created_at)
        if self._postgres:
            soon = c.reopened_at <= ref + literal(REOPEN_WINDOW, Interval())
        else:  # SQLite keeps datetimes as ISO text; julianday() reads them as days
            soon = func.julianday(c.reopened_at) - func.julianday(ref) <= REOPEN_WINDOW / dt.timedelta(days=1)
        return and_(c.reopened_at.is_not(None), soon)

    def _conversation_days(self, filters: Filters):
        with self.db.session() as s:
            return s.execute(self.conversation_days_query(filters)).all()

    def conversation_days_query(self, filters: Filters):
        c = Conversation
        # Left joins to the (small) sets of conversations with a hand-off and with a person's
        # message: hashed once each; the latter read from the partial index
        # ix_messages_human_conversation (the role is written inline so its predicate matches).
        handed = select(Handoff.conversation_id.label("id")).distinct().subquery("handed")
        with_person = (select(Message.conversation_id.label("id")).distinct()
                       .where(Message.role == literal_column("'human'")).subquery("with_person"))
        resolved = and_(handed.c.id.is_(None), with_person.c.id.is_(None),
                        c.status.not_in(("waiting", "human")), not_(self._reopened_soon()))
        day = func.date(c.created_at)
        query = (
            select(day.label("day"), func.count().label("conversations"),
                   func.sum(case((resolved, 1), else_=0)).label("resolved"),
                   func.sum(case((handed.c.id.is_not(None), 1), else_=0)).label("handed_off"))
            .select_from(c)
            .outerjoin(handed, handed.c.id == c.id)
            .outerjoin(with_person, with_person.c.id == c.id)
            .where(self._in_range(c.created_at, filters))
            .group_by(day)
        )
        if filters.bot_id is not None:
            query = query.where(c.bot_id == filters.bot_id)
        return query

    # -- feedback ---------------------------------------------------------------------------
    def _feedback_days(self, filters: Filters):
        with self.db.session() as s:
            return s.execute(self.feedback_days_query(filters)).all()

    def feedback_days_query(self, filters: Filters):
        """Per day, the latest rating (in the range) of each rated reply: a rating counts unless
        the same reply was rated again later in the range (an anti-join on feedback.message_id)."""
        f, later = Feedback, aliased(Feedback)
        replaced = select(later.id).where(later.message_id == f.message_id, later.id > f.id,
                                          self._in_range(later.created_at, filters))
        day = func.date(f.created_at)
        query = (
            select(day.label("day"), func.sum(case((f.rating > 0, 1), else_=0)).label("up"),
                   func.sum(case((f.rating < 0, 1), else_=0)).label("down"))
            .where(self._in_range(f.created_at, filters), ~replaced.exists())
            .group_by(day)
        )
        if filters.bot_id is not None:
            query = query.join(Conversation, Conversation.id == f.conversation_id).where(
                Conversation.bot_id == filters.bot_id)
        return query

    # -- time to first token ----------------------------------------------------------------
    def _ttft_rows(self, filters: Filters):
        m = Message
        # Inline role: the partial index ix_messages_bot_ttft (covering on PostgreSQL) matches.
        query = select(m.ttft_ms.label("ttft")).where(
            m.role == literal_column("'bot'"), m.ttft_ms.is_not(None), self._in_range(m.created_at, filters))
        if filters.bot_id is not None:
            query = query.join(Conversation, Conversation.id == m.conversation_id).where(
                Conversation.bot_id == filters.bot_id)
        return query

    def ttft_query(self, filters: Filters):
        """PostgreSQL's p50, p95 and count in one query (see ``ttft`` for other databases)."""
        rows = self._ttft_rows(filters).subquery()
        return select(func.percentile_cont(0.5).within_group(rows.c.ttft),
                      func.percentile_cont(0.95).within_group(rows.c.ttft), func.count())

    def ttft(self, filters: Filters) -> tuple[float | None, float | None, int]:
        """(p50, p95, number of replies) of the bot replies' time to first token, in ms."""
        rows = self._ttft_rows(filters).subquery()
        with self.db.session() as s:
            if self._postgres:
                p50, p95, n = s.execute(self.ttft_query(filters)).one()
                return (None if p50 is None else float(p50), None if p95 is None else float(p95), int(n))
            n = int(s.scalar(select(func.count()).select_from(rows)) or 0)
            if n == 0:
                return None, None, 0

            def percentile(p: float) -> float:
                rank = p * (n - 1)
                lo = math.floor(rank)
                values = s.scalars(
                    select(rows.c.ttft).order_by(rows.c.ttft).limit(2).offset(lo)).all()
                upper = values[1] if len(values) > 1 else values[0]
                return float(values[0] + (upper - values[0]) * (rank - lo))

            return percentile(0.5), percentile(0.95), n

    # -- unanswered questions ---------------------------------------------------------------
    def unanswered_query(self, filters: Filters):
        reply = aliased(Message)
        asked = aliased(Message)
        question_id = (
            select(asked.id)
            .where(asked.conversation_id == reply.conversation_id, asked.role == "user",
                   asked.id < reply.id)
            .order_by(asked.id.desc()).limit(1).scalar_subquery()
        )
        query = (
            select(reply.id.label("reply_id"), reply.decision, reply.conversation_id,
                   Bot.name.label("bot"), question_id.label("message_id"))
            .join(Conversation, Conversation.id == reply.conversation_id)
            .join(Bot, Bot.id == Conversation.bot_id)
            .where(reply.role == "bot", reply.decision.in_(UNANSWERED_DECISIONS),
                   self._in_range(reply.created_at, filters))
            .order_by(reply.created_at.desc(), reply.id.desc())
            .limit(self.unanswered_limit)
        )
        if filters.bot_id is not None:
            query = query.where(Conversation.bot_id == filters.bot_id)
        return query

    def unanswered(self, filters: Filters) -> list[dict]:
        """The most recent (at most ``unanswered_limit``) visitor questions in the range the bot
        did not answer, newest first: ``{"message_id", "reply_id", "conversation_id", "bot",
        "text", "decision"}``."""
        with self.db.session() as s:
            replies = [r for r in s.execute(self.unanswered_query(filters)).all() if r.message_id is not None]
            texts = dict(s.execute(select(Message.id, Message.text).where(
                Message.id.in_([r.message_id for r in replies]))).all()) if replies else {}
        out = []
        for r in replies:
            text = (texts.get(r.message_id) or "").strip()
            if not text or (r.decision == "handoff" and wants_human(text)):
                continue  # the visitor asked for a person: not a question the bot missed
            out.append({"message_id": r.message_id, "reply_id": r.reply_id,
                        "conversation_id": r.conversation_id, "bot": r.bot, "text": text,
                        "decision": r.decision})
        return out

    def _embed(self, questions: Sequence[dict]) -> np.ndarray:
        """Normalised embeddings of the questions, cached by message id (LRU)."""
        with self._lock:
            missing = [q for q in questions if q["message_id"] not in self._vectors]
        if missing:
            vecs = np.asarray(self.embedder.embed([q["text"] for q in missing]), dtype=np.float32)
            with self._lock:
                for q, v in zip(missing, vecs):
                    self._vectors[q["message_id"]] = v
                while len(self._vectors) > _CACHE_SIZE:
                    self._vectors.popitem(last=False)
        with self._lock:
            out = []
            for q in questions:
                v = self._vectors.get(q["message_id"])
                if v is None:  # evicted meanwhile by another request's batch
                    v = np.asarray(self.embedder.embed([q["text"]]), dtype=np.float32)[0]
                out.append(v)
        return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)

    def group(self, questions: Sequence[dict]) -> list[Group]:
        """Group questions (``unanswered()`` rows, newest first) by meaning; largest group first."""
        if not questions:
            return []
        labels, vecs = self._cluster([q["text"] for q in questions], questions)
        groups: list[Group] = []
        for label in range(int(labels.max()) + 1):  # numbered by first appearance: newest first
            idx = np.flatnonzero(labels == label)
            best = int(idx[_medoid(vecs[idx])]) if vecs is not None else int(idx[0])
            conversations: dict[str, dict] = {}
            texts: dict[str, None] = {}
            for i in idx:
                q = questions[i]
                conversations.setdefault(q["conversation_id"], {"id": q["conversation_id"], "bot": q["bot"]})
                texts.setdefault(q["text"], None)
            groups.append(Group(
                question=questions[best]["text"], message_id=questions[best]["message_id"],
                reply_id=questions[best]["reply_id"], size=len(idx),
                conversations=list(conversations.values())[:CONVERSATIONS_PER_GROUP],
                questions=list(texts)[:10]))
        # Largest first; among equal sizes, the one asked most recently first (a stable sort).
        groups.sort(key=lambda g: -g.size)
        return groups

    def cluster(self, texts: Sequence[str]) -> np.ndarray:
        """A cluster label per text, numbered by first appearance."""
        return self._cluster(texts)[0]

    def _cluster(self, texts: Sequence[str], questions: Sequence[dict] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels, and the vectors (None without an embedder). Identical texts (case and spacing
        aside) are embedded once and always share a label; with no embedder, only they do."""
        keys = [" ".join(t.lower().split()) for t in texts]
        slot: dict[str, int] = {}  # key -> its row among the distinct texts
        firsts: list[int] = []
        for i, k in enumerate(keys):
            if k not in slot:
                slot[k] = len(firsts)
                firsts.append(i)
        rows = np.array([slot[k] for k in keys], dtype=np.int64)
        vecs = None
        if self.embedder is None:
            distinct_labels = np.arange(len(firsts))
        else:
            if questions is not None:
                distinct_vecs = self._embed([questions[i] for i in firsts])
            else:
                distinct_vecs = np.asarray(self.embedder.embed([texts[i] for i in firsts]), dtype=np.float32)
            distinct_labels = cluster_vectors(distinct_vecs, self.distance)
            vecs = distinct_vecs[rows]
        raw = distinct_labels[rows]
        renumber: dict[int, int] = {}
        return np.array([renumber.setdefault(int(r), len(renumber)) for r in raw], dtype=np.int64), vecs

    # -- export -----------------------------------------------------------------------------
    def csv(self, report: Report, kind: str) -> str:
        """``summary`` (metric, value), ``daily`` (one row per day) or ``unanswered`` (one row per
        group). No e-mail address, no message text but the unanswered questions; text cells that
        a spreadsheet would run as a formula get a leading quote."""
        if kind == "summary":
            rows: list[list[Any]] = [["metric", "value"]]
            rows += [[k, "" if v is None else v] for k, v in report.summary().items()]
        elif kind == "daily":
            rows = [["day", "conversations", "resolved_by_bot", "resolution_rate", "handed_off",
                     "handoff_rate", "thumbs_up", "thumbs_down", "satisfaction"]]
            for d in report.days:
                rows.append([d.day, d.conversations, d.resolved_by_bot, _fmt(_rate(d.resolved_by_bot, d.conversations)),
                             d.handed_off, _fmt(_rate(d.handed_off, d.conversations)), d.thumbs_up,
                             d.thumbs_down, _fmt(_rate(d.thumbs_up, d.thumbs_up + d.thumbs_down))])
        elif kind == "unanswered":
            rows = [["size", "question", "message_id", "conversations"]]
            for g in report.groups:
                rows.append([g.size, g.question, g.message_id, " ".join(c["id"] for c in g.conversations)])
        else:
            raise SupportbotError(f"the export kind must be summary, daily or unanswered, got {kind[:40]!r}")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerows([[safe_cell(v) for v in row] for row in rows])
        return out.getvalue()


def _medoid(vecs: np.ndarray) -> int:
    """The row most similar on average to the others (the first of two)."""
    return 0 if len(vecs) < 3 else int(np.argmax((vecs @ vecs.T).sum(axis=1)))


def _fmt(value: float | None) -> str | float:
    return "" if value is None else round(value, 6)


def _day(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: strings starting with ``= + - @`` (or a tab or a
    carriage return, which some spreadsheets skip before a formula) get a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def cluster_vectors(vecs: np.ndarray, distance: float = CLUSTER_DISTANCE) -> np.ndarray:
    """Agglomerative clustering (average linkage) of normalised vectors: groups whose mean cosine
    distance is under ``distance`` merge. Returns a label per row."""
    if len(vecs) < 2:
        return np.zeros(len(vecs), dtype=np.int64)
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, distance_threshold=distance, metric="cosine",
                                    linkage="average")
    return model.fit_predict(vecs).astype(np.int64)


def purity(labels: Iterable[Any], truth: Iterable[Any]) -> float:
    """Cluster purity: the share of items in their cluster's most common true class (swap the
    arguments for the inverse purity: the share of each class in its most common cluster)."""
    from collections import Counter

    by_cluster: dict[Any, Counter] = {}
    n = 0
    for label, true in zip(labels, truth):
        key = label.item() if isinstance(label, np.generic) else label
        by_cluster.setdefault(key, Counter())[true.item() if isinstance(true, np.generic) else true] += 1
        n += 1
    return sum(c.most_common(1)[0][1] for c in by_cluster.values()) / n if n else 0.0
