"""Answers produced independently of the HTTP connection that asked for them, and resumable.

``Answers.start(events)`` runs a ``DialogueManager.respond`` stream in its own thread and records
what it yields in an ``AnswerStream``; the HTTP response only *follows* that record. So a visitor
whose connection drops does not stop the answer, and a client that reconnects with
``Last-Event-ID`` gets the rest of the same answer instead of a second one.

Event ids are ``"<message_id>:<offset>"``: the bot message's row id and the number of characters
of answer text sent up to and including that event. Two ways to resume:

* same process: follow the in-memory ``AnswerStream`` from that offset (exact token events);
* another worker process (gunicorn ``--workers N``): the producer's process writes the text so
  far and a heartbeat (``updated_at``) to the message row every ``persist_every_s``, the dialogue
  manager marks the row ``complete`` at the end, and the follower polls that row. Text is cut at
  the offset, so nothing is sent twice.

A producer that dies with its process stops its heartbeat: a follower that sees none for
``stale_after_s`` closes the row (``complete``, decision ``error``, the text already persisted,
which is the text the visitor saw up to the last heartbeat) and ends with an error event, within
seconds. Rows no one follows are closed the same way at start and every ``SWEEP_EVERY_S`` after
``SWEEP_AFTER_S`` without a write. A producer that fails (an exception, an ``error`` event from the
dialogue manager) closes its row with the text it had streamed.

Error events reach visitors with a generic message: the dialogue manager's error event carries the
exception's text (a generator's URL, its HTTP client's message), which goes to the log only.

A resumed stream starts with ``meta`` (``"resumed": true``), then the remaining text, then the
events that close the answer (``sources``, ``handoff``, ``done`` or ``error``).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from typing import Iterable, Iterator, Optional

from bot.conversations import ConversationStore
from bot.core.errors import NotFound, SupportbotError
from bot.core.events import Event
from bot.core.store.models import utcnow

log = logging.getLogger(__name__)

# Events with their SSE ids, as many as were ready at once (written to the socket together), or
# None for a heartbeat (nothing new for heartbeat_s).
Item = Optional[list[tuple[Event, Optional[str]]]]
TERMINAL = ("done", "error")
KEEP_FINISHED_S = 120.0  # how long a finished answer stays in memory for reconnecting clients
FAILED = "Sorry, something went wrong while answering. Please try again."
SWEEP_AFTER_S = 60.0  # an unfinished row without a write for this long has lost its producer
SWEEP_EVERY_S = 30.0
MAX_ID = 2**31 - 1
# ASCII digits only: str.isdigit() also takes "²" and "١", which int() then refuses.
_EVENT_ID = re.compile(r"([0-9]{1,10}):([0-9]{1,10})")


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """``"42:120"`` -> ``(42, 120)``; None for anything else."""
    if not value:
        return None
    m = _EVENT_ID.fullmatch(value.strip())
    if m is None:
        return None
    mid, offset = int(m.group(1)), int(m.group(2))
    if not 1 <= mid <= MAX_ID:
        return None
    return mid, offset


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
        self.persisted_len = 0  # text written to the row so far (by the heartbeat)
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
        persist_every_s: float | None = 2.0,
        stale_after_s: float = 6.0,
        poll_s: float = 0.25,
    ):
        self.conversations = conversations
        self.persist_every_s = persist_every_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self._live: dict[int, AnswerStream] = {}
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._last_sweep = time.monotonic()

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
        # completes it at the end; in between, the heartbeat thread writes the text so far.
        try:
            for event in events:
                if event.type == "error":
                    log.warning("answer in conversation %s failed: %s", stream.conversation_id,
                                event.data.get("message"))
                    event = Event("error", {"message": FAILED})
                stream.push(event)
                if event.type == "meta" and stream.message_id is not None:
                    self._register(stream)
                if stream.finished:
                    break
        except SupportbotError as exc:
            if exc.status >= 500:
                log.warning("answer in conversation %s failed: %s", stream.conversation_id, exc.message)
            stream.push(Event("error", {"message": exc.message if exc.status < 500 else FAILED}))
        except Exception:  # noqa: BLE001 - reported to the visitor without internals
            log.exception("answer for conversation %s failed", stream.conversation_id)
            stream.push(Event("error", {"message": FAILED}))
        finally:
            stream.close()
            failed = bool(stream.events) and stream.events[-1][0].type == "error"
            if failed and stream.message_id is not None:
                # The row ends here, with the text the visitor was shown; a client resuming from
                # the row (another worker) reads the error.
                self._persist(stream.message_id, text="".join(stream.text), decision="error",
                              complete=True)
            self._maybe_sweep()

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
            if self.persist_every_s is not None and (self._ticker is None or not self._ticker.is_alive()):
                self._ticker = threading.Thread(target=self._heartbeats, name="answer-heartbeat",
                                                daemon=True)
                self._ticker.start()

    def _heartbeats(self) -> None:
        """Every ``persist_every_s``, while answers run: their text so far and a heartbeat."""
        while True:
            time.sleep(max(self.persist_every_s, 0.05))
            with self._lock:
                running = [s for s in self._live.values() if not s.finished]
                if not running:
                    self._ticker = None
                    return
            progress: dict[int, str | None] = {}
            lengths: dict[int, int] = {}
            for stream in running:
                with stream.cond:
                    lengths[stream.message_id] = stream.text_len
                    changed = stream.text_len > stream.persisted_len
                    progress[stream.message_id] = "".join(stream.text) if changed else None
            try:
                self.conversations.heartbeat(progress)
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.warning("could not record the progress of %d answers", len(progress), exc_info=True)
                continue
            for stream in running:
                stream.persisted_len = max(stream.persisted_len, lengths[stream.message_id])

    def close_abandoned(self) -> int:
        """Close unfinished rows whose producer is gone (no write for ``SWEEP_AFTER_S``)."""
        self._last_sweep = time.monotonic()
        try:
            closed = self.conversations.close_abandoned(utcnow() - dt.timedelta(seconds=SWEEP_AFTER_S))
        except Exception:  # noqa: BLE001 - best effort; the next sweep tries again
            log.warning("could not close abandoned answers", exc_info=True)
            return 0
        if closed:
            log.warning("closed %d unfinished answers whose producer is gone", closed)
        return closed

    def _maybe_sweep(self) -> None:
        if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
            self.close_abandoned()

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
        """Follow an answer produced by another process through its message row; end it with an
        error when its producer's heartbeat stops for ``stale_after_s``."""
        sent = offset
        row = self.conversations.message(message_id)
        yield [(Event("meta", {"message_id": message_id, "decision": row["decision"] or "answer",
                               "model": row["model_id"], "resumed": True}), f"{message_id}:{sent}")]
        last_beat = time.monotonic()
        while True:
            row = self.conversations.message_progress(message_id)
            if row is None:
                yield [(Event("error", {"message": "This answer no longer exists."}), None)]
                return
            text = row["text"] or ""
            now = time.monotonic()
            # A hand-off's text travels in the handoff event, not as tokens.
            if len(text) > sent and row["decision"] != "handoff":
                yield [(Event("token", {"text": text[sent:]}), f"{message_id}:{len(text)}")]
                sent = len(text)
            if row["complete"] or row["decision"] == "error":
                yield self._closing(row, sent)
                return
            idle = (utcnow() - row["updated_at"]).total_seconds()
            if idle > self.stale_after_s:
                # No heartbeat: the producer is gone. Close the row unless it wrote in between;
                # the next turn of the loop reads the row as it is now and ends the stream.
                cutoff = utcnow() - dt.timedelta(seconds=self.stale_after_s)
                if self.conversations.close_interrupted(message_id, idle_before=cutoff):
                    log.warning("answer %s was interrupted (no progress for %.0f s): closed", message_id, idle)
                else:
                    time.sleep(self.poll_s)
                continue
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
