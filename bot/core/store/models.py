"""SQLAlchemy models. One database holds the knowledge base and the dialogues of every bot.

Schema changes go through Alembic (``bot/core/store/migrations``), never ``create_all``.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Bot(Base):
    __tablename__ = "bots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Per-bot options set in the admin console (e.g. {"handoff_ask_bot_first": true}); None = {}.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("bot_id", "external_id", name="uq_document_bot_external"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(512))
    title: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(Text, default="")
    mime: Mapped[str] = mapped_column(String(128), default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    chunks: Mapped[list["Chunk"]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )


class Chunk(Base):
    __tablename__ = "chunks"
    # AUTOINCREMENT so SQLite never reuses the id of a deleted chunk: ids are FAISS ids.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16), default="text")
    heading: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # float32 bytes of the normalised embedding, cached so a re-index need not re-embed.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    embedding_model: Mapped[str] = mapped_column(String(256), default="")

    document: Mapped[Document] = relationship(back_populates="chunks")


class IndexVersion(Base):
    """The newest published index snapshot of each bot; serving processes poll it."""

    __tablename__ = "index_versions"

    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    # What that snapshot holds: a digest of its chunks (ids and embedding models) and their
    # number. The index is derived state: when the database's chunks no longer match (a lost
    # index folder, a crash between the commit and the publish), it is rebuilt.
    contents: Mapped[str] = mapped_column(String(64), default="", server_default="")
    chunks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_bot_created", "bot_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    visitor_id: Mapped[str] = mapped_column(String(64), index=True, default="")
    # bot -> waiting (for a person) -> human (a person has it) -> resolved; see bot/conversations.
    status: Mapped[str] = mapped_column(String(16), default="bot", index=True)
    # Who has the conversation: an admin user name or an agent key's name; "" when nobody.
    assigned_to: Mapped[str] = mapped_column(String(128), default="", server_default="")
    waiting_since: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    reopened_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Left by a visitor when no agent is online; never in training data or analytics exports.
    visitor_email: Mapped[str] = mapped_column(String(254), default="", server_default="")
    visitor_typing_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    messages: Mapped[list["Message"]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        order_by="Message.id",
        passive_deletes=True,
    )


class Message(Base):
    __tablename__ = "messages"
    # Partial indexes for the analytics page (bot/analytics.py): which conversations a person
    # answered in, and the bot replies' time to first token by time (covering, for an index-only
    # scan on PostgreSQL).
    __table_args__ = (
        Index("ix_messages_human_conversation", "conversation_id",
              postgresql_where=sql("role = 'human'"), sqlite_where=sql("role = 'human'")),
        Index("ix_messages_bot_ttft", "created_at",
              postgresql_include=["ttft_ms", "conversation_id"],
              postgresql_where=sql("role = 'bot' AND ttft_ms IS NOT NULL"),
              sqlite_where=sql("role = 'bot' AND ttft_ms IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))  # user | bot | human
    text: Mapped[str] = mapped_column(Text, default="")
    # [{"n": 1, "chunk_id": 7, "doc_id": "...", "title": "...", "source": "..."}]
    sources: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Retrieval scores of the candidates the decision saw: [{"chunk_id", "score", "confidence"}]
    scores: Mapped[list[Any]] = mapped_column(JSON, default=list)
    decision: Mapped[str] = mapped_column(String(16), default="")  # answer|clarify|handoff
    model_id: Mapped[str] = mapped_column(String(256), default="")
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    complete: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    # Last write of the row: the producer of an unfinished answer writes its progress (and a
    # heartbeat) here as it goes, so a follower in another process can tell a dead producer.
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, default=utcnow,
                                                           onupdate=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    rating: Mapped[int] = mapped_column(Integer)  # +1 | -1
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Handoff(Base):
    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    reason: Mapped[str] = mapped_column(String(64), default="")  # low_confidence|requested|...
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class SiteKey(Base):
    __tablename__ = "site_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    allowed_origins: Mapped[list[Any]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ApiKey(Base):
    """A secret for server-to-server clients of the OpenAI-compatible API (``/v1``).

    Only a SHA-256 of the key is stored; the key itself is shown once, when it is created.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16), default="")  # shown in lists: "sb-3f9a..."
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # "chat" (the OpenAI-compatible /v1 API) or "agent" (/api/agent, for help-desk bridges).
    scope: Mapped[str] = mapped_column(String(16), default="chat", server_default="chat")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class AdminSession(Base):
    """A logged-in admin console session, recorded server-side.

    The signed cookie carries only a random session id; this row (keyed by its SHA-256) is what
    makes it valid, so logging out (deleting the row) kills the cookie everywhere it was copied.
    """

    __tablename__ = "admin_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's id
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class LoginThrottle(Base):
    """Failed admin logins per account (a digest of the user name, whether it exists or not)."""

    __tablename__ = "login_throttle"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_failure_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class AgentPresence(Base):
    """When each agent (an admin user name or an agent key's name) was last seen online."""

    __tablename__ = "agent_presence"

    agent: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Webhook(Base):
    """A receiver of a bot's events (JSON POST, signed with HMAC-SHA256 of ``secret``)."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event to deliver to one webhook; retried with back-off until delivered or failed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Fix(Base):
    """An agent's right answer to a question the bot got wrong (or a draft from a resolved
    conversation). Approved, it becomes a curated FAQ entry (``document_id``), a regression case
    and a training example."""

    __tablename__ = "fixes"
    __table_args__ = (Index("ix_fixes_bot_status", "bot_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # rated_down|not_answered|asked_back|resolved
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft|approved|dismissed
    document_id: Mapped[int | None] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL"), nullable=True
    )
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    approved_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
