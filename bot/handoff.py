"""Live hand-off to a person: one state machine on the server, the agents' queue, presence.

States of a conversation (``Conversation.status``)::

    bot --request--> waiting --take--> human --hand_back--> bot
                        |                 |
                        +----resolve------+--> resolved --(a visitor message)--> bot (reopened)

* ``request(reason)``: bot (or resolved: it is reopened first) -> waiting; records a ``Handoff``
  row and ``waiting_since``. Asking again while waiting or with a person changes nothing.
* ``take(agent)``: waiting -> human, ``assigned_to = agent``. A conversation another agent has is
  refused (``HandoffConflict``, HTTP 409), so two agents never answer the same visitor.
* ``reply(agent, text)``: stores a message of role ``human``; a waiting conversation is taken by
  the replying agent in the same transaction; one another agent has is refused.
* ``hand_back(agent)``: human -> bot (only its agent), closes the open ``Handoff``.
* ``resolve(agent)``: waiting | human (only its agent) -> resolved, sets ``resolved_at``, closes the
  open ``Handoff``.
* a visitor message on a resolved conversation reopens it: -> bot, ``reopened_at`` set
  (``visitor_turn``).

Every transition is one conditional UPDATE (``... WHERE status IN (allowed) [AND assigned_to =
agent]``): its row count says whether it happened, so two agents racing to take a conversation
cannot both win, on SQLite or PostgreSQL, in one process or several. A refused one is read back
to say why. While a conversation is ``waiting`` or ``human`` the dialogue manager stores visitor
messages without answering them (``bot/dialogue.py``).

Live views (the admin queue, a waiting visitor's widget) wait on ``changes``: a counter bumped by
every write here, which wakes them at once in this process; they also re-read the database every
``handoff.poll_s``, which is how a change made by another worker process reaches them.

Agents online: the queue page and the agent API record ``AgentPresence`` (``seen``); an agent
seen within ``handoff.agent_online_s`` counts. With none online a waiting visitor is told so and
may leave an email address (validated by ``email-validator``, stored in
``conversations.visitor_email``; the agent's view here is the one place it is shown: conversation
dicts, training transcripts and exports never carry it).

Per-bot option ``Bot.options["handoff_ask_bot_first"]``: a request for a person before the bot
has answered anything in the conversation lets the bot try first and offers the person after.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from typing import Any, Callable

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.conversations import ConversationStore, _iso
from bot.core.errors import NotFound, SupportbotError
from bot.core.settings import HandoffSettings
from bot.core.store.models import AgentPresence, Bot, Conversation, Handoff, Message, utcnow
from bot.policy import wants_human

log = logging.getLogger(__name__)

BOT, WAITING, HUMAN, RESOLVED = "bot", "waiting", "human", "resolved"
WITH_PEOPLE = (WAITING, HUMAN)
ASK_BOT_FIRST = "handoff_ask_bot_first"
MAX_REPLY_CHARS = 4000
MAX_AGENT = 128
PRESENCE_WRITE_EVERY_S = 5.0
_DESCRIBED = {BOT: "with the assistant", WAITING: "waiting for a person", HUMAN: "with a person",
              RESOLVED: "resolved"}
_CLAUSES = re.compile(r"(?<=[.?!;,])\s+|\s+(?:and|but)\s+", re.IGNORECASE)


class HandoffConflict(SupportbotError):
    """A transition the conversation's state does not allow (HTTP 409)."""

    status = 409


def without_request(message: str) -> str:
    """The message without its clauses that ask for a person ("I want to talk to a person. My
    refund is late" -> "My refund is late"); "" when asking for a person is all it says."""
    kept = [c.strip() for c in _CLAUSES.split(message or "") if c and c.strip() and not wants_human(c)]
    rest = " ".join(kept).strip()
    return rest if len(re.findall(r"\w+", rest)) >= 2 else ""


class Changes:
    """A version counter that live views wait on; every write of the desk bumps it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.version = 0

    def bump(self) -> None:
        with self._cond:
            self.version += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for a version after ``seen``; returns the current one."""
        with self._cond:
            if self.version == seen:
                self._cond.wait(timeout)
            return self.version


class HandoffDesk:
    """The hand-off state machine and what agents see, over the conversation store."""

    def __init__(self, conversations: ConversationStore, settings: HandoffSettings,
                 emit: Callable[[int, str, dict], Any] | None = None):
        self.store = conversations
        self.db = conversations.db
        self.settings = settings
        self.emit = emit  # (bot_id, event, data): webhooks; failures are logged, never raised
        self.changes = Changes()
        self._presence_written: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- helpers --------------------------------------------------------------------------------
    def _event(self, bot_id: int, event: str, data: dict) -> None:
        if self.emit is None:
            return
        try:
            self.emit(bot_id, event, data)
        except Exception:  # noqa: BLE001 - a webhook problem must not undo the transition
            log.warning("could not queue the %s webhook of bot %s", event, bot_id, exc_info=True)

    @staticmethod
    def _agent(agent: str) -> str:
        agent = (agent or "").strip()
        if not agent or len(agent) > MAX_AGENT:
            raise SupportbotError(f"the agent's name must be 1 to {MAX_AGENT} characters")
        return agent

    @staticmethod
    def _refusal(s: Session, conversation_id: str, action: str, agent: str | None) -> SupportbotError:
        row = s.execute(select(Conversation.status, Conversation.assigned_to)
                        .where(Conversation.id == conversation_id)).first()
        if row is None:
            return NotFound(f"no conversation {conversation_id!r}")
        if row.status == HUMAN and agent is not None and row.assigned_to != agent:
            return HandoffConflict(f"cannot {action}: {row.assigned_to or 'another agent'} has taken this "
                                   "conversation")
        return HandoffConflict(f"cannot {action}: the conversation is {_DESCRIBED.get(row.status, row.status)} "
                               f"(status {row.status!r})")

    def _transition(self, conversation_id: str, action: str, allowed: tuple[str, ...],
                    values: dict[str, Any], agent: str | None = None,
                    also: Callable[[Session], None] | None = None) -> int:
        """One conditional UPDATE from ``allowed`` (a ``human`` conversation only by ``agent``);
        ``also(session)`` runs in the same transaction. Returns the bot id."""

        def work(s: Session) -> int:
            conditions = [Conversation.id == conversation_id, Conversation.status.in_(allowed)]
            if agent is not None and HUMAN in allowed:
                conditions.append(or_(Conversation.status != HUMAN, Conversation.assigned_to == agent))
            done = s.execute(update(Conversation).where(*conditions)
                             .values(updated_at=utcnow(), **values)).rowcount
            if not done:
                raise self._refusal(s, conversation_id, action, agent)
            if also is not None:
                also(s)
            return s.scalar(select(Conversation.bot_id).where(Conversation.id == conversation_id))

        bot_id = self.store.run(work)
        self.changes.bump()
        return bot_id

    @staticmethod
    def _close_handoffs(s: Session, conversation_id: str) -> None:
        s.execute(update(Handoff).where(Handoff.conversation_id == conversation_id, Handoff.resolved_at.is_(None))
                  .values(resolved_at=utcnow()))

    # -- transitions ------------------------------------------------------------------------------
    def request(self, conversation_id: str, reason: str = "requested") -> dict:
        """bot | resolved -> waiting (see the module docstring); returns ``visitor_state``."""
        reason = (reason or "requested").strip()[:64] or "requested"

        def work(s: Session) -> int | None:
            now = utcnow()
            reopened = case((Conversation.status == RESOLVED, now), else_=Conversation.reopened_at)
            done = s.execute(
                update(Conversation).where(Conversation.id == conversation_id,
                                           Conversation.status.in_((BOT, RESOLVED)))
                .values(status=WAITING, waiting_since=now, assigned_to="", updated_at=now,
                        reopened_at=reopened)).rowcount
            if not done:
                status = s.scalar(select(Conversation.status).where(Conversation.id == conversation_id))
                if status is None:
                    raise NotFound(f"no conversation {conversation_id!r}")
                return None  # waiting or with a person already: nothing changes
            s.add(Handoff(conversation_id=conversation_id, reason=reason))
            s.flush()
            return s.scalar(select(Conversation.bot_id).where(Conversation.id == conversation_id))

        bot_id = self.store.run(work)
        if bot_id is not None:
            self.changes.bump()
            self._event(bot_id, "handoff", {"conversation_id": conversation_id, "reason": reason,
                                            "question": self._last_question(conversation_id)})
        return self.visitor_state(conversation_id)

    def take(self, conversation_id: str, agent: str) -> dict:
        """waiting -> human, assigned to ``agent``; taking one's own again is a no-op."""
        agent = self._agent(agent)
        try:
            self._transition(conversation_id, "take this conversation", (WAITING,),
                             {"status": HUMAN, "assigned_to": agent})
        except HandoffConflict:
            current = self.store.get(conversation_id)
            if not (current["status"] == HUMAN and current["assigned_to"] == agent):
                with self.db.session() as s:
                    raise self._refusal(s, conversation_id, "take this conversation", agent) from None
        return self.store.get(conversation_id)

    def reply(self, conversation_id: str, agent: str, text: str) -> dict:
        """Store ``text`` as the agent's (role ``human``) message; returns it."""
        agent = self._agent(agent)
        text = (text or "").strip()
        if not text:
            raise SupportbotError("the reply is empty")
        if len(text) > MAX_REPLY_CHARS:
            raise SupportbotError(f"the reply is too long ({len(text)} characters, max {MAX_REPLY_CHARS})")

        def work(s: Session) -> tuple[int, int]:
            now = utcnow()
            mine = s.execute(update(Conversation).where(
                Conversation.id == conversation_id, Conversation.status == HUMAN,
                Conversation.assigned_to == agent).values(updated_at=now)).rowcount
            if not mine:  # a waiting conversation is taken by whoever answers it first
                mine = s.execute(update(Conversation).where(
                    Conversation.id == conversation_id, Conversation.status == WAITING)
                    .values(status=HUMAN, assigned_to=agent, updated_at=now)).rowcount
            if not mine:
                raise self._refusal(s, conversation_id, "reply", agent)
            msg = Message(conversation_id=conversation_id, role="human", text=text, sources=[], scores=[],
                          decision="", model_id="", complete=True)
            s.add(msg)
            s.flush()
            return msg.id, s.scalar(select(Conversation.bot_id).where(Conversation.id == conversation_id))

        message_id, bot_id = self.store.run(work)
        self.changes.bump()
        self._event(bot_id, "agent_reply", {"conversation_id": conversation_id, "message_id": message_id,
                                            "agent": agent, "text": text})
        return self.store.message(message_id)

    def hand_back(self, conversation_id: str, agent: str) -> dict:
        """human -> bot (only by the agent who has it)."""
        agent = self._agent(agent)
        self._transition(conversation_id, "hand this conversation back", (HUMAN,),
                         {"status": BOT, "assigned_to": "", "waiting_since": None, "visitor_typing_at": None},
                         agent=agent, also=lambda s: self._close_handoffs(s, conversation_id))
        return self.store.get(conversation_id)

    def resolve(self, conversation_id: str, agent: str) -> dict:
        """waiting | human (only by its agent) -> resolved."""
        agent = self._agent(agent)
        bot_id = self._transition(conversation_id, "resolve this conversation", WITH_PEOPLE,
                                  {"status": RESOLVED, "resolved_at": utcnow(), "assigned_to": agent,
                                   "visitor_typing_at": None},
                                  agent=agent, also=lambda s: self._close_handoffs(s, conversation_id))
        self._event(bot_id, "resolved", {"conversation_id": conversation_id, "agent": agent})
        return self.store.get(conversation_id)

    def visitor_turn(self, conversation_id: str) -> str:
        """Before a visitor message is handled: reopen a resolved conversation (-> bot); returns
        the status the message meets."""

        def work(s: Session) -> str | None:
            now = utcnow()
            s.execute(update(Conversation).where(Conversation.id == conversation_id,
                                                 Conversation.status == RESOLVED)
                      .values(status=BOT, reopened_at=now, assigned_to="", waiting_since=None, updated_at=now))
            return s.scalar(select(Conversation.status).where(Conversation.id == conversation_id))

        status = self.store.run(work)
        if status is None:
            raise NotFound(f"no conversation {conversation_id!r}")
        return status

    def visitor_wrote(self, conversation_id: str) -> None:
        """A visitor message was stored for the person (not answered by the bot): agents see it."""
        self._set_typing(conversation_id, None)
        self.changes.bump()

    # -- the visitor's side ---------------------------------------------------------------------
    def _set_typing(self, conversation_id: str, at: dt.datetime | None) -> bool:
        def work(s: Session) -> int:
            # updated_at is kept: typing is not activity that reorders the conversation list.
            return s.execute(update(Conversation).where(
                Conversation.id == conversation_id, Conversation.status.in_(WITH_PEOPLE))
                .values(visitor_typing_at=at, updated_at=Conversation.updated_at)).rowcount

        return bool(self.store.run(work))

    def typing(self, conversation_id: str) -> bool:
        """The visitor is typing (a throttled ping of the widget); False when no person is involved."""
        changed = self._set_typing(conversation_id, utcnow())
        if changed:
            self.changes.bump()
        return changed

    def leave_email(self, conversation_id: str, email: str) -> str:
        """Validate and store the visitor's address (while waiting or with a person); returns the
        normalised address."""
        from email_validator import EmailNotValidError, validate_email

        raw = (email or "").strip()
        if not raw or len(raw) > 254:
            raise SupportbotError("enter an email address (at most 254 characters)")
        try:
            address = validate_email(raw, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise SupportbotError(f"that is not a valid email address: {exc}") from None

        def work(s: Session) -> int:
            return s.execute(update(Conversation).where(
                Conversation.id == conversation_id, Conversation.status.in_(WITH_PEOPLE))
                .values(visitor_email=address, updated_at=utcnow())).rowcount

        if not self.store.run(work):
            with self.db.session() as s:
                raise self._refusal(s, conversation_id, "leave an email address", None)
        self.changes.bump()
        return address

    def position(self, conversation_id: str) -> int:
        """1 for the next conversation an agent will see, ...; 0 when it is not waiting."""
        with self.db.session() as s:
            me = s.execute(select(Conversation.bot_id, Conversation.status, Conversation.waiting_since)
                           .where(Conversation.id == conversation_id)).first()
            if me is None:
                raise NotFound(f"no conversation {conversation_id!r}")
            if me.status != WAITING:
                return 0
            since = me.waiting_since or dt.datetime.min
            ahead = s.scalar(select(func.count(Conversation.id)).where(
                Conversation.bot_id == me.bot_id, Conversation.status == WAITING,
                or_(Conversation.waiting_since < since,
                    (Conversation.waiting_since == since) & (Conversation.id < conversation_id))))
            return int(ahead or 0) + 1

    def visitor_state(self, conversation_id: str) -> dict:
        """What the widget shows: ``{status, position, agents_online, email_left, ask_email, message}``."""
        with self.db.session() as s:
            row = s.execute(select(Conversation.status, Conversation.visitor_email)
                            .where(Conversation.id == conversation_id)).first()
        if row is None:
            raise NotFound(f"no conversation {conversation_id!r}")
        position = self.position(conversation_id) if row.status == WAITING else 0
        online = self.agents_online()
        st = self.settings
        ask_email = row.status == WAITING and online == 0 and not row.visitor_email
        if row.status == WAITING:
            message = st.no_agent_message if online == 0 else st.waiting_message.format(position=position)
        elif row.status == HUMAN:
            message = st.joined_message
        elif row.status == RESOLVED:
            message = st.resolved_message
        else:
            message = st.handed_back_message
        return {"status": row.status, "position": position, "agents_online": online,
                "email_left": bool(row.visitor_email), "ask_email": ask_email, "message": message}

    # -- presence -------------------------------------------------------------------------------
    def seen(self, agent: str) -> None:
        """Record that ``agent`` is online (written at most every few seconds per agent)."""
        agent = self._agent(agent)
        now = time.monotonic()
        with self._lock:
            if now - self._presence_written.get(agent, -1e9) < PRESENCE_WRITE_EVERY_S:
                return
            self._presence_written[agent] = now

        def work(s: Session) -> None:
            at = utcnow()
            if not s.execute(update(AgentPresence).where(AgentPresence.agent == agent)
                             .values(last_seen_at=at)).rowcount:
                s.add(AgentPresence(agent=agent, last_seen_at=at))
                s.flush()

        try:
            self.store.run(work)
        except IntegrityError:  # another process inserted the row first: it is recorded
            pass
        self.changes.bump()

    def agents_online(self) -> int:
        since = utcnow() - dt.timedelta(seconds=self.settings.agent_online_s)
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(AgentPresence)
                                .where(AgentPresence.last_seen_at >= since)) or 0)

    # -- the agents' side ------------------------------------------------------------------------
    def _last_question(self, conversation_id: str) -> str:
        with self.db.session() as s:
            text = s.scalar(select(Message.text).where(Message.conversation_id == conversation_id,
                                                       Message.role == "user")
                            .order_by(Message.id.desc()).limit(1))
        return (text or "")[:1000]

    def _summary(self, s: Session, conv: Conversation, now: dt.datetime) -> dict:
        cid = conv.id
        reason = s.scalar(select(Handoff.reason).where(Handoff.conversation_id == cid)
                          .order_by(Handoff.id.desc()).limit(1)) or ""
        question = s.scalar(select(Message.text).where(Message.conversation_id == cid, Message.role == "user")
                            .order_by(Message.id.desc()).limit(1)) or ""
        sources: list[dict] = []
        for row in s.scalars(select(Message.sources).where(Message.conversation_id == cid, Message.role == "bot")
                             .order_by(Message.id.desc()).limit(5)):
            if row:
                sources = [{"n": x.get("n"), "title": x.get("title") or "", "doc_id": x.get("doc_id") or "",
                            "source": x.get("source") or "", "confidence": x.get("confidence")} for x in row]
                break
        last_id, count = s.execute(select(func.max(Message.id), func.count(Message.id))
                                   .where(Message.conversation_id == cid)).one()
        typing = (conv.visitor_typing_at is not None
                  and (now - conv.visitor_typing_at).total_seconds() <= self.settings.typing_s)
        waited = (now - conv.waiting_since).total_seconds() if conv.waiting_since else 0.0
        return {
            "id": cid, "status": conv.status, "waiting_since": _iso(conv.waiting_since),
            "waiting_s": round(max(0.0, waited), 1), "reason": reason, "assigned_to": conv.assigned_to or "",
            "question": question[:500], "sources": sources, "visitor_typing": typing,
            "visitor_email": conv.visitor_email or "", "message_count": int(count or 0),
            "last_message_id": int(last_id or 0), "created_at": _iso(conv.created_at),
            "updated_at": _iso(conv.updated_at),
        }

    def queue(self, bot_id: int, status: str | None = None) -> list[dict]:
        """Waiting conversations (longest wait first), then those a person has, with the reason,
        the bot's sources of its last answer, the visitor's last question and typing."""
        wanted = WITH_PEOPLE if status in (None, "") else (status,)
        if any(w not in WITH_PEOPLE for w in wanted):
            raise SupportbotError(f"the queue holds conversations {WAITING!r} or {HUMAN!r}, not {status!r}")
        now = utcnow()
        with self.db.session() as s:
            convs = s.scalars(select(Conversation).where(Conversation.bot_id == bot_id,
                                                         Conversation.status.in_(wanted))
                              .order_by(Conversation.status.desc(), Conversation.waiting_since,
                                        Conversation.id).limit(500)).all()
            items = [self._summary(s, c, now) for c in convs]
        position = 0
        for item in items:
            if item["status"] == WAITING:
                position += 1
                item["position"] = position
            else:
                item["position"] = 0
        return items

    def detail(self, conversation_id: str, bot_id: int | None = None) -> dict:
        """The agent's view of one conversation: its summary and every message. NotFound when it
        belongs to another bot than ``bot_id``."""
        now = utcnow()
        with self.db.session() as s:
            conv = s.get(Conversation, conversation_id)
            if conv is None or (bot_id is not None and conv.bot_id != bot_id):
                raise NotFound(f"no conversation {conversation_id!r}")
            out = self._summary(s, conv, now)
            out["metadata"] = dict(conv.meta or {})
            out["resolved_at"], out["reopened_at"] = _iso(conv.resolved_at), _iso(conv.reopened_at)
        out["position"] = self.position(conversation_id) if out["status"] == WAITING else 0
        out["messages"] = [
            {"id": m["id"], "role": m["role"], "text": m["text"], "decision": m["decision"],
             "sources": m["sources"], "created_at": m["created_at"], "complete": m["complete"],
             **({"feedback": m["feedback"]} if m.get("feedback") else {})}
            for m in self.store.history(conversation_id)
        ]
        out["handoffs"] = self.store.handoffs(conversation_id)
        return out

    # -- per-bot options --------------------------------------------------------------------------
    def bot_options(self, bot_id: int) -> dict:
        with self.db.session() as s:
            bot = s.get(Bot, bot_id)
            if bot is None:
                raise NotFound(f"no bot with id {bot_id}")
            return dict(bot.options or {})

    def set_ask_bot_first(self, bot_id: int, on: bool) -> None:
        with self.db.session() as s:
            bot = s.get(Bot, bot_id)
            if bot is None:
                raise NotFound(f"no bot with id {bot_id}")
            bot.options = {**(bot.options or {}), ASK_BOT_FIRST: bool(on)}  # a new dict: JSON is saved

    def ask_bot_first(self, conversation_id: str) -> bool:
        """True when the bot's option says so and the bot has not answered in this conversation yet."""
        with self.db.session() as s:
            options = s.scalar(select(Bot.options).join(Conversation, Conversation.bot_id == Bot.id)
                               .where(Conversation.id == conversation_id))
            if not (options or {}).get(ASK_BOT_FIRST):
                return False
            answered = s.scalar(select(func.count(Message.id)).where(
                Message.conversation_id == conversation_id, Message.role == "bot", Message.decision == "answer"))
            return not answered
