"""The dialogue store: conversations, their messages, feedback and hand-offs.

``ConversationStore(db)`` wraps a ``bot.core.store.Database``. Every public method is one unit of
work (one transaction). Safe under concurrent writers:

* Every write transaction *starts* with a write (an UPDATE of the conversation row, or an INSERT).
  On SQLite (WAL) a transaction that reads first and writes later can fail with "database is
  locked" at once when another writer committed in between (its read snapshot is stale, so waiting
  cannot help); starting with a write takes the write lock up front and the busy timeout applies.
  On PostgreSQL the UPDATE takes the row lock, serialising writers of one conversation only.
* A busy/locked/serialization error that still slips through is retried a few times with backoff:
  each unit of work is idempotent until it commits.

Roles stored: ``user``, ``bot`` (the assistant) and ``human`` (a human agent). ``turns()`` maps
both ``bot`` and ``human`` to ``agent``, the role name used by the retriever and the data formats.
Timestamps are returned as ISO 8601 strings in UTC (``...Z``).

Statuses: ``bot`` (the assistant answers) -> ``waiting`` (for a person) -> ``human`` (a person
has it) -> ``resolved``; the transitions and their rules are ``bot/handoff.py``'s, which writes
them through this store's session helper. ``request_handoff`` here only records a hand-off and
marks the conversation ``waiting``. A visitor's ``visitor_email`` is never part of the dicts this
store returns (the agent's view in ``bot/handoff.py`` is the one place that shows it).
"""
from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from typing import Any, Callable, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from bot.core.errors import NotFound, SupportbotError
from bot.core.store.db import Database
from bot.core.store.models import Conversation, Feedback, Handoff, Message, utcnow

ROLES = ("user", "bot", "human")
STATUSES = ("bot", "waiting", "human", "resolved")
# Fields of a message that add_message/update_message may set (besides role and text).
MESSAGE_FIELDS = frozenset(
    {
        "text", "sources", "scores", "decision", "model_id", "latency_ms", "ttft_ms",
        "prompt_tokens", "completion_tokens", "complete",
    }
)
_RETRIES = 8
T = TypeVar("T")


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def _transient(exc: OperationalError) -> bool:
    """True for lock contention that a retry resolves (SQLite busy, PostgreSQL serialization)."""
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return any(s in text for s in ("database is locked", "database is busy", "deadlock", "could not serialize"))


class ConversationStore:
    """Conversations of every bot, in the project's one database."""

    def __init__(self, db: Database):
        self.db = db

    # -- unit-of-work helper ------------------------------------------------------------------
    def _run(self, work: Callable[[Session], T]) -> T:
        for attempt in range(_RETRIES):
            try:
                with self.db.session() as s:
                    return work(s)
            except OperationalError as exc:
                if attempt == _RETRIES - 1 or not _transient(exc):
                    raise
                time.sleep(0.01 * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` as one unit of work, retried on lock contention (see the module
        docstring): for the dialogue modules that write conversation rows of their own
        (``bot/handoff.py``); ``work`` must start with a write and be idempotent until it commits."""
        return self._run(work)

    @staticmethod
    def _touch(s: Session, conversation_id: str, **values: Any) -> None:
        """Start a write transaction on the conversation row; NotFound when there is none."""
        result = s.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=utcnow(), **values)
        )
        if result.rowcount == 0:
            raise NotFound(f"no conversation {conversation_id!r}")

    # -- conversations ----------------------------------------------------------------------
    def create(self, bot_id: int, visitor_id: str, metadata: dict | None = None) -> str:
        """Start a conversation of ``bot_id`` for ``visitor_id``; returns its id (a uuid4)."""
        conversation_id = str(uuid.uuid4())

        def work(s: Session) -> str:
            s.add(
                Conversation(
                    id=conversation_id, bot_id=bot_id, visitor_id=str(visitor_id)[:64],
                    status="bot", meta=dict(metadata or {}),
                )
            )
            s.flush()
            return conversation_id

        try:
            return self._run(work)
        except IntegrityError as exc:
            raise NotFound(f"no bot with id {bot_id}") from exc

    def get(self, conversation_id: str) -> dict:
        with self.db.session() as s:
            conv = s.get(Conversation, conversation_id)
            if conv is None:
                raise NotFound(f"no conversation {conversation_id!r}")
            count = s.scalar(
                select(func.count(Message.id)).where(Message.conversation_id == conversation_id)
            )
            return self._conversation_dict(conv, count or 0)

    @staticmethod
    def _conversation_dict(conv: Conversation, message_count: int) -> dict:
        return {
            "id": conv.id,
            "bot_id": conv.bot_id,
            "visitor_id": conv.visitor_id,
            "status": conv.status,
            "assigned_to": conv.assigned_to or "",
            "waiting_since": _iso(conv.waiting_since),
            "resolved_at": _iso(conv.resolved_at),
            "reopened_at": _iso(conv.reopened_at),
            "metadata": dict(conv.meta or {}),
            "created_at": _iso(conv.created_at),
            "updated_at": _iso(conv.updated_at),
            "message_count": int(message_count),
        }

    def owner(self, conversation_id: str) -> dict | None:
        """``{visitor_id, bot_id, status, created_at}`` of a conversation, or None: one indexed
        read (``get`` also counts the messages), for the access check of every visitor request."""
        with self.db.session() as s:
            row = s.execute(
                select(Conversation.visitor_id, Conversation.bot_id, Conversation.status,
                       Conversation.created_at).where(Conversation.id == conversation_id)
            ).first()
        if row is None:
            return None
        return {"visitor_id": row.visitor_id, "bot_id": row.bot_id, "status": row.status,
                "created_at": _iso(row.created_at)}

    def set_status(self, conversation_id: str, status: str) -> None:
        """Set a status without the hand-off rules (imports and tests; the console and the agent
        API go through ``bot/handoff.py``)."""
        if status not in STATUSES:
            raise SupportbotError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        self._run(lambda s: self._touch(s, conversation_id, status=status))

    def list(
        self, bot_id: int, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> list[dict]:
        """Conversations of ``bot_id``, most recently active first (for the admin console)."""
        if status is not None and status not in STATUSES:
            raise SupportbotError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        limit = max(1, min(int(limit), 500))
        counts = (
            select(Message.conversation_id, func.count(Message.id).label("n"))
            .group_by(Message.conversation_id)
            .subquery()
        )
        query = (
            select(Conversation, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.conversation_id == Conversation.id)
            .where(Conversation.bot_id == bot_id)
        )
        if status is not None:
            query = query.where(Conversation.status == status)
        query = query.order_by(Conversation.updated_at.desc(), Conversation.id).limit(limit).offset(
            max(0, int(offset))
        )
        with self.db.session() as s:
            return [self._conversation_dict(conv, n) for conv, n in s.execute(query).all()]

    # -- messages ---------------------------------------------------------------------------
    @staticmethod
    def _check_fields(fields: dict[str, Any]) -> None:
        unknown = set(fields) - MESSAGE_FIELDS
        if unknown:
            raise SupportbotError(
                f"unknown message field(s): {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(MESSAGE_FIELDS))}"
            )

    def add_message(self, conversation_id: str, role: str, text: str, **fields: Any) -> int:
        """Append a message; returns its id. ``fields``: see ``MESSAGE_FIELDS``."""
        if role not in ROLES:
            raise SupportbotError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self._check_fields(fields)
        fields.pop("text", None)

        def work(s: Session) -> int:
            self._touch(s, conversation_id)
            msg = Message(conversation_id=conversation_id, role=role, text=text, **fields)
            s.add(msg)
            s.flush()
            return msg.id

        return self._run(work)

    def update_message(self, message_id: int, **fields: Any) -> None:
        """Set fields of a stored message (the dialogue manager fills the bot's reply as it ends)."""
        self._check_fields(fields)
        if not fields:
            return

        def work(s: Session) -> None:
            result = s.execute(update(Message).where(Message.id == message_id).values(**fields))
            if result.rowcount == 0:
                raise NotFound(f"no message {message_id}")

        self._run(work)

    def message(self, message_id: int, conversation_id: str | None = None) -> dict | None:
        """One message as ``history`` gives it (plus ``conversation_id``), or None when there is
        none (in ``conversation_id``, when given)."""
        query = select(Message).where(Message.id == message_id)
        if conversation_id is not None:
            query = query.where(Message.conversation_id == conversation_id)
        with self.db.session() as s:
            m = s.scalar(query)
            return None if m is None else {**self._message_dict(m), "conversation_id": m.conversation_id}

    @staticmethod
    def _message_dict(m: Message) -> dict:
        return {
            "id": m.id,
            "role": m.role,
            "text": m.text,
            "sources": list(m.sources or []),
            "scores": list(m.scores or []),
            "decision": m.decision,
            "model_id": m.model_id,
            "latency_ms": m.latency_ms,
            "ttft_ms": m.ttft_ms,
            "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.completion_tokens,
            "complete": bool(m.complete),
            "created_at": _iso(m.created_at),
        }

    def history(self, conversation_id: str) -> list[dict]:
        """Every message, oldest first, with its latest feedback when there is some."""
        with self.db.session() as s:
            if s.get(Conversation, conversation_id) is None:
                raise NotFound(f"no conversation {conversation_id!r}")
            messages = s.scalars(
                select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
            ).all()
            feedback: dict[int, Feedback] = {}
            for fb in s.scalars(
                select(Feedback).where(Feedback.conversation_id == conversation_id).order_by(Feedback.id)
            ):
                feedback[fb.message_id] = fb  # later rows win: the latest rating counts
            out = []
            for m in messages:
                row = self._message_dict(m)
                fb = feedback.get(m.id)
                if fb is not None:
                    row["feedback"] = {"rating": fb.rating, "comment": fb.comment}
                out.append(row)
            return out

    def messages_after(self, conversation_id: str, after_id: int = 0, limit: int = 200) -> list[dict]:
        """Messages with an id above ``after_id``, oldest first (what a live view has not shown)."""
        with self.db.session() as s:
            rows = s.scalars(
                select(Message).where(Message.conversation_id == conversation_id, Message.id > int(after_id))
                .order_by(Message.id).limit(max(1, int(limit)))
            ).all()
            return [self._message_dict(m) for m in rows]

    def last_reply(self, conversation_id: str) -> dict | None:
        """The latest message of the bot or a person in the conversation (None when there is none)."""
        with self.db.session() as s:
            m = s.scalars(
                select(Message).where(Message.conversation_id == conversation_id, Message.role != "user")
                .order_by(Message.id.desc()).limit(1)
            ).first()
            return None if m is None else self._message_dict(m)

    def turns(self, conversation_id: str, limit: int = 20) -> list[dict]:
        """The last ``limit`` non-empty messages as ``{"role": "user"|"agent", "text"}``, oldest first."""
        with self.db.session() as s:
            rows = s.execute(
                select(Message.role, Message.text)
                .where(Message.conversation_id == conversation_id, Message.text != "")
                .order_by(Message.id.desc())
                .limit(max(0, int(limit)))
            ).all()
        return [{"role": "user" if r == "user" else "agent", "text": t} for r, t in reversed(rows)]

    # -- feedback and hand-offs -------------------------------------------------------------
    def add_feedback(
        self, conversation_id: str, message_id: int, rating: int, comment: str = ""
    ) -> int:
        """Rate a bot/human reply of this conversation with +1 or -1; returns the feedback id."""
        if rating not in (1, -1):
            raise SupportbotError(f"rating must be +1 or -1, got {rating!r}")

        def work(s: Session) -> int:
            self._touch(s, conversation_id)
            role = s.scalar(
                select(Message.role).where(
                    Message.id == message_id, Message.conversation_id == conversation_id
                )
            )
            if role is None:
                raise NotFound(f"no message {message_id} in conversation {conversation_id!r}")
            if role == "user":
                raise SupportbotError(f"feedback rates a reply; message {message_id} is the visitor's own")
            fb = Feedback(
                conversation_id=conversation_id, message_id=message_id, rating=rating,
                comment=(comment or "")[:2000],
            )
            s.add(fb)
            s.flush()
            return fb.id

        return self._run(work)

    def request_handoff(self, conversation_id: str, reason: str) -> int:
        """Record a hand-off to a person and mark the conversation ``waiting`` (since now, unless it
        was waiting already); returns its id. ``bot/handoff.py`` decides when this may happen."""

        def work(s: Session) -> int:
            self._touch(s, conversation_id, status="waiting",
                        waiting_since=func.coalesce(Conversation.waiting_since, utcnow()))
            handoff = Handoff(conversation_id=conversation_id, reason=(reason or "requested")[:64])
            s.add(handoff)
            s.flush()
            return handoff.id

        return self._run(work)

    def handoffs(self, conversation_id: str) -> list[dict]:
        """The hand-offs of a conversation, oldest first."""
        with self.db.session() as s:
            rows = s.scalars(
                select(Handoff).where(Handoff.conversation_id == conversation_id).order_by(Handoff.id)
            ).all()
            return [
                {"id": h.id, "reason": h.reason, "created_at": _iso(h.created_at),
                 "resolved_at": _iso(h.resolved_at)}
                for h in rows
            ]

    # -- progress of unfinished replies (additions for producers in other processes) ---------
    def heartbeat(self, progress: dict[int, str | None]) -> None:
        """Record that the producers of these unfinished replies are alive: ``updated_at`` is set
        to now and, where given, ``text`` to the text so far, in one transaction. Finished rows
        (``complete``) are left as they are, so a late heartbeat never undoes a final text."""
        if not progress:
            return
        now = utcnow()

        def work(s: Session) -> None:
            for message_id, text in sorted(progress.items()):
                values: dict[str, Any] = {"updated_at": now}
                if text is not None:
                    values["text"] = text
                s.execute(update(Message).where(Message.id == message_id, Message.complete.is_(False))
                          .values(**values))

        self._run(work)

    def message_progress(self, message_id: int) -> dict | None:
        """``message(message_id)`` plus ``updated_at``: the time of its last write (a datetime in
        UTC, naive; its creation time when it was never written since)."""
        with self.db.session() as s:
            m = s.get(Message, message_id)
            if m is None:
                return None
            return {**self._message_dict(m), "conversation_id": m.conversation_id,
                    "updated_at": m.updated_at or m.created_at}

    def close_interrupted(self, message_id: int, idle_before: dt.datetime | None = None) -> bool:
        """End an unfinished reply in error (``complete``, decision ``error``, its text kept), when
        it has had no write since ``idle_before`` (its producer is gone). True if it was closed."""
        conditions = [Message.id == message_id, Message.complete.is_(False)]
        if idle_before is not None:
            conditions.append(func.coalesce(Message.updated_at, Message.created_at) < idle_before)
        return bool(self._run(lambda s: s.execute(
            update(Message).where(*conditions).values(complete=True, decision="error")).rowcount))

    def close_abandoned(self, idle_before: dt.datetime) -> int:
        """End in error every unfinished reply without a write since ``idle_before`` (replies whose
        producer died with its process); returns how many."""
        return int(self._run(lambda s: s.execute(
            update(Message).where(
                Message.complete.is_(False), Message.role != "user",
                func.coalesce(Message.updated_at, Message.created_at) < idle_before,
            ).values(complete=True, decision="error")).rowcount))
