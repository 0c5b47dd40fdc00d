"""Answers produced independently of the HTTP connection that asked for them, and resumable.

``Answers.start(events)`` runs a ``DialogueManager.respond`` stream in its own thread and records
what it yields in an ``AnswerStream``; the HTTP response only *follows* that record. So a visitor
whose connection drops does not stop the answer, and a client that reconnects with
``Last-Event-ID`` gets the rest of the same answer instead of a second one.

Event ids are ``"<message_id>:<offset>"``: the bot message's row id and the number of characters
of answer text sent up to and including that event. Two ways to resume:

* same process: follow the in-memory ``AnswerStream`` from that offset (exact token events);
* another worker process (gunicorn ``--workers N``): the producer writes the text so far to the
  message row every ``persist_every_s`` (None: never, for a single process), the dialogue
  manager marks the row ``complete`` at the end, and the follower polls that row. Text is cut
  at the offset, so nothing is sent twice.

A resumed stream starts with ``meta`` (``"resumed": true``), then the remaining text, then the
events that close the answer (``sources``, ``handoff``, ``done`` or ``error``).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Iterator, Optional

from bot.conversations import ConversationStore
from bot.core.errors import NotFound, SupportbotError
from bot.core.events import Event

log = logging.getLogger(__name__)

# Events with their SSE ids, as many as were ready at once (written to the socket together), or
# None for a heartbeat (nothing new for heartbeat_s).
Item = Optional[list[tuple[Event, Optional[str]]]]
TERMINAL = ("done", "error")
KEEP_FINISHED_S = 120.0  # how long a finished answer stays in memory for reconnecting clients
FAILED = "Sorry, something went wrong while answering. Please try again."


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """``"42:120"`` -> ``(42, 120)``; None for anything else."""
    if not value:
        return None
    mid, sep, offset = value.strip().partition(":")
    if not sep or not mid.isdigit() or not offset.isdigit():
        return None
    return int(mid), int(offset)


class AnswerStream:
    """The events of one answer so far; followers wait on ``cond`` for more."""

    def __init__(self, conversation_id: str):
        self.conversation_id = conversation_id
        self.message_id: int | None = None
        self.events: list[tuple[Event, int]] = []  # (event, text offset after it)
        self.text: list[str] = []
        self.text_len = 0
        self.finished = False
        self.finished_at = 0.0
        self.cond = threading.Condition()

    def push(self, event: Event) -> None:
        with self.cond:
            if event.type == "meta" and self.message_id is None:
                mid = event.data.get("message_id")
                self.message_id = int(mid) if mid is not None else None
            if event.type == "token":
                piece = str(event.data.get("text", ""))
                self.text.append(piece)
                self.text_len += len(piece)
            self.events.append((event, self.text_len))
            if event.type in TERMINAL:
                self._finish()
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self._finish()
            self.cond.notify_all()

    def _finish(self) -> None:
        if not self.finished:
            self.finished, self.finished_at = True, time.monotonic()

    def event_id(self, offset: int) -> str | None:
        return f"{self.message_id}:{offset}" if self.message_id is not None else None

    def follow(self, heartbeat_s: float, offset: int | None = None) -> Iterator[Item]:
        """Yield ``(event, id)`` as they come, ``None`` after each silent ``heartbeat_s``.

        ``offset=None`` follows from the first event; an offset resumes after that many characters
        of text (``meta`` is re-sent marked ``resumed``, earlier text is skipped).
        """
        i = 0
        while True:
            with self.cond:
                if i >= len(self.events) and not self.finished:
                    self.cond.wait(heartbeat_s)
                batch, finished = self.events[i:], self.finished
            if not batch and not finished:
                yield None
                continue
            out: list[tuple[Event, str | None]] = []
            for event, end in batch:
                i += 1
                if offset is None:
                    out.append((event, self.event_id(end)))
                    continue
                resumed = self._resumed(event, end, offset)
                if resumed is not None:  # never an id before the resume point: no re-sent text
                    out.append((resumed, self.event_id(max(end, offset))))
            if out:
                yield out
            if finished and i >= len(self.events):
                return

    @staticmethod
    def _resumed(event: Event, end: int, offset: int) -> Event | None:
        if event.type == "meta":
            return Event("meta", {**event.data, "resumed": True})
        if event.type != "token":
            return event
        piece = str(event.data.get("text", ""))
        start = end - len(piece)
        if end <= offset:
            return None
        return Event("token", {"text": piece[max(0, offset - start):]})


class Answers:
    """Runs answers in background threads and lets clients follow or resume them."""

    def __init__(
        self,
        conversations: ConversationStore,
        persist_every_s: float | None = 1.0,
        stale_after_s: float = 120.0,
        poll_s: float = 0.25,
    ):
        self.conversations = conversations
        self.persist_every_s = persist_every_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self._live: dict[int, AnswerStream] = {}
        self._lock = threading.Lock()

    # -- producing ------------------------------------------------------------------------------
    def start(self, conversation_id: str, events: Iterable[Event]) -> AnswerStream:
        """Start consuming ``events`` in a thread; returns the stream to follow."""
        stream = AnswerStream(conversation_id)
        worker = threading.Thread(
            target=self._produce, args=(stream, events), name="answer", daemon=True
        )
        worker.start()
        return stream

    def _produce(self, stream: AnswerStream, events: Iterable[Event]) -> None:
        # The dialogue manager creates the bot message row (complete=False) before ``meta`` and
        # completes it at the end; in between, the text so far is written here, throttled.
        last_persist = time.monotonic()
        persisted_len = 0
        try:
            for event in events:
                stream.push(event)
                if event.type == "meta" and stream.message_id is not None:
                    self._register(stream)
                elif (event.type == "token" and stream.message_id is not None
                      and self.persist_every_s is not None):
                    now = time.monotonic()
                    if now - last_persist >= self.persist_every_s and stream.text_len > persisted_len:
                        self._persist(stream.message_id, text="".join(stream.text))
                        last_persist, persisted_len = now, stream.text_len
                if stream.finished:
                    break
        except SupportbotError as exc:
            stream.push(Event("error", {"message": exc.message}))
        except Exception:  # noqa: BLE001 - reported to the visitor without internals
            log.exception("answer for conversation %s failed", stream.conversation_id)
            stream.push(Event("error", {"message": FAILED}))
        finally:
            stream.close()
            failed = bool(stream.events) and stream.events[-1][0].type == "error"
            if failed and stream.message_id is not None:
                # Tells a client resuming from the row (another worker) that this answer ended badly.
                self._persist(stream.message_id, text="".join(stream.text), decision="error")

    def _persist(self, message_id: int, **fields) -> None:
        try:
            self.conversations.update_message(message_id, **fields)
        except Exception:  # noqa: BLE001 - progress is best effort; the answer itself goes on
            log.warning("could not record progress of message %s", message_id, exc_info=True)

    def _register(self, stream: AnswerStream) -> None:
        now = time.monotonic()
        with self._lock:
            for mid in [m for m, s in self._live.items()
                        if s.finished and now - s.finished_at > KEEP_FINISHED_S]:
                del self._live[mid]
            self._live[stream.message_id] = stream

    # -- resuming -------------------------------------------------------------------------------
    def resume(self, conversation_id: str, last_event_id: str, heartbeat_s: float) -> Iterator[Item]:
        """The rest of the answer after ``last_event_id``; NotFound unless it is in this conversation."""
        parsed = parse_event_id(last_event_id)
        if parsed is None:
            raise NotFound(f"Last-Event-ID {last_event_id!r} does not name an answer")
        message_id, offset = parsed
        with self._lock:
            stream = self._live.get(message_id)
        if stream is not None and stream.conversation_id == conversation_id:
            return stream.follow(heartbeat_s, offset=offset)
        self._check_row(conversation_id, message_id)
        return self._follow_row(message_id, offset, heartbeat_s)

    def _check_row(self, conversation_id: str, message_id: int) -> None:
        row = self.conversations.message(message_id, conversation_id)
        if row is None or row["role"] == "user":
            raise NotFound(f"no answer {message_id} in this conversation")

    def _follow_row(self, message_id: int, offset: int, heartbeat_s: float) -> Iterator[Item]:
        """Follow an answer produced by another process through its message row."""
        sent = offset
        row = self.conversations.message(message_id)
        yield [(Event("meta", {"message_id": message_id, "decision": row["decision"] or "answer",
                               "model": row["model_id"], "resumed": True}), f"{message_id}:{sent}")]
        last_change = last_beat = time.monotonic()
        while True:
            row = self.conversations.message(message_id)
            if row is None:
                yield [(Event("error", {"message": "This answer no longer exists."}), None)]
                return
            text = row["text"] or ""
            now = time.monotonic()
            # A hand-off's text travels in the handoff event, not as tokens.
            if len(text) > sent and row["decision"] != "handoff":
                yield [(Event("token", {"text": text[sent:]}), f"{message_id}:{len(text)}")]
                sent, last_change = len(text), now
            if row["complete"] or row["decision"] == "error":
                yield self._closing(row, sent)
                return
            if now - last_change > self.stale_after_s:
                yield [(Event("error", {"message": "The answer was interrupted. Please ask again."}), None)]
                return
            if now - last_beat >= heartbeat_s:
                yield None
                last_beat = now
            time.sleep(self.poll_s)

    @staticmethod
    def _closing(row: dict, sent: int) -> list[tuple[Event, str | None]]:
        eid = f"{row['id']}:{sent}"
        if row["decision"] == "error":
            return [(Event("error", {"message": FAILED}), eid)]
        out: list[tuple[Event, str | None]] = []
        if row["decision"] == "handoff":
            out.append((Event("handoff", {"reason": "handoff", "message": row["text"]}), eid))
        elif row["sources"]:
            out.append((Event("sources", {"sources": row["sources"]}), eid))
        out.append((Event("done", {"message_id": row["id"], "latency_ms": row["latency_ms"],
                                   "ttft_ms": row["ttft_ms"], "completion_tokens": row["completion_tokens"]}), eid))
        return out
