"""The dialogue manager: one visitor message in, a stream of events out, everything stored.

``DialogueManager.respond(conversation_id, message)`` validates at once (unknown conversation,
empty or over-long message raise before anything is stored) and returns an iterator of
``bot.core.events.Event``:

  answer   meta, token..., sources, done
  clarify  meta, token..., sources (the topics offered), done
  handoff  meta, handoff, done          (the message is in the handoff event, not in tokens;
                                        it carries the queue state: status, position, ...)
  offer    before ``done`` of an answer the bot tried first when the visitor asked for a person
           and the bot's ``handoff_ask_bot_first`` option is on: the person is offered after
  queued   meta, queued, done           (the conversation is waiting for or with a person: the
                                        message is stored for them, the bot does not answer)
  failure  meta, token... (what was produced), error   (the partial reply is stored incomplete)

An answer is generated from the numbered sources, or, when the top hit is an FAQ entry the bot
is confident about, is that entry's own answer (``bot/policy.py`` ``direct_source``; stored with
model id ``extractive``). Retrieval, the decision and the guarded reply stream are the turn
pipeline's (``bot/pipeline.py``); this module stores the turn and turns it into events.

The user message is stored before retrieval; the bot message row is created before the first
event (its id is in ``meta``) and completed at the end with the sources, retrieval scores,
decision, model id, latency, time to first token and token counts.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Sequence

from bot.conversations import ConversationStore
from bot.core.errors import SupportbotError
from bot.core.events import Event
from bot.core.settings import DialogueSettings
from bot.handoff import WITH_PEOPLE, HandoffDesk, without_request
from bot.pipeline import Plan, TurnPipeline, topic_text
from bot.policy import ANSWER, CLARIFY, HANDOFF, Decision
from bot.prompting import cited_numbers
from retrieval.types import Hit, question_key

log = logging.getLogger(__name__)


def source_entry(n: int, hit: Hit) -> dict[str, Any]:
    """What the ``sources`` event and the stored message say about source ``[n]``."""
    return {
        "n": n,
        "chunk_id": int(hit.chunk_id),
        "doc_id": hit.doc_id,
        "title": hit.title,
        "source": hit.source,
        "confidence": round(float(hit.confidence), 4),
    }


class DialogueManager:
    """Stores a turn and streams its events around a ``TurnPipeline`` (``bot/pipeline.py``)."""

    def __init__(self, conversations: ConversationStore, pipeline: TurnPipeline, settings: DialogueSettings,
                 handoffs: HandoffDesk | None = None):
        self.conversations = conversations
        self.pipeline = pipeline
        self.settings = settings
        self.handoffs = handoffs  # the live hand-off (bot/handoff.py); None: hand-offs are only recorded

    # -- the whole turn ---------------------------------------------------------------------
    def respond(self, conversation_id: str, message: str) -> Iterator[Event]:
        """Handle one visitor message (see the module docstring). Raises before streaming when
        the conversation does not exist or the message is empty or too long."""
        message = (message or "").strip()
        if not message:
            raise SupportbotError("message is empty")
        limit = self.settings.max_message_chars
        if len(message) > limit:
            raise SupportbotError(f"message is too long ({len(message)} characters, max {limit})")
        self.conversations.get(conversation_id)  # NotFound before any event
        # A resolved conversation is reopened; one waiting for (or with) a person is theirs.
        if self.handoffs is not None and self.handoffs.visitor_turn(conversation_id) in WITH_PEOPLE:
            return self._for_person(conversation_id, message)
        return self._respond(conversation_id, message)

    def _for_person(self, conversation_id: str, message: str) -> Iterator[Event]:
        user_id = self.conversations.add_message(conversation_id, "user", message)
        self.handoffs.visitor_wrote(conversation_id)
        yield Event("meta", {"conversation_id": conversation_id, "message_id": None,
                             "user_message_id": user_id, "decision": "human", "model": ""})
        yield Event("queued", self.handoffs.visitor_state(conversation_id))
        yield Event("done", {"message_id": None})

    def _respond(self, conversation_id: str, message: str) -> Iterator[Event]:
        t0 = time.perf_counter()
        turns = self.conversations.turns(conversation_id, limit=self.settings.context_turns)
        chosen = self._chosen_topic(conversation_id, message)
        self.conversations.add_message(conversation_id, "user", message)
        pipeline = self.pipeline
        try:
            plan = pipeline.chosen(message, chosen) if chosen is not None else None
            if plan is None:
                plan = pipeline.plan(message, pipeline.retrieve(message, turns), turns)
        except Exception:  # a broken index must not crash the stream: a person takes over
            log.exception("retrieval failed in conversation %s", conversation_id)
            plan = Plan(Decision(HANDOFF, "retrieval_error", 0.0))
        offer = False
        if plan.decision.reason == "requested" and self.handoffs is not None \
                and self.handoffs.ask_bot_first(conversation_id):
            # The bot tries first; the person is offered after its answer.
            rest = without_request(message)
            if not rest:
                yield from self._ask_question_first(conversation_id, t0)
                return
            tried = pipeline.plan(rest, pipeline.retrieve(rest, turns), turns)
            if tried.decision.action == ANSWER:
                plan, message, offer = tried, rest, True
        model_id = pipeline.model_id(plan)
        scores = [
            {"chunk_id": int(h.chunk_id), "doc_id": h.doc_id, "score": round(float(h.score), 6),
             "confidence": round(float(h.confidence), 6)}
            for h in plan.hits
        ]
        action = plan.decision.action
        msg_id = self.conversations.add_message(
            conversation_id, "bot", "", decision=action, scores=scores, model_id=model_id, complete=False,
        )
        yield Event("meta", {"conversation_id": conversation_id, "message_id": msg_id,
                             "decision": action, "model": model_id})

        if action == HANDOFF:
            yield from self._handoff(conversation_id, msg_id, plan.decision, t0)
        elif action == CLARIFY:
            yield from self._clarify(msg_id, plan.hits, t0, plan.topics)
        elif offer:
            answer = self._answer(msg_id, message, plan, turns, t0)
            try:
                for event in answer:
                    if event.type == "done":
                        yield Event("offer", {"message": self.handoffs.settings.offer_message})
                    yield event
            finally:
                answer.close()
        else:
            yield from self._answer(msg_id, message, plan, turns, t0)

    def _chosen_topic(self, conversation_id: str, message: str) -> int | None:
        """The entry (chunk id) whose offered words ``message`` repeats, when the bot's last message
        asked back offering topics (the widget's buttons send them; a visitor may type one)."""
        last = self.conversations.last_reply(conversation_id)
        if not last or last["role"] != "bot" or last["decision"] != CLARIFY:
            return None
        said = question_key(message)
        return next((int(s["chunk_id"]) for s in last["sources"]
                     if s.get("topic") and "chunk_id" in s and question_key(s["topic"]) == said), None)

    def _ask_question_first(self, conversation_id: str, t0: float) -> Iterator[Event]:
        text = self.handoffs.settings.ask_bot_first_message
        msg_id = self.conversations.add_message(conversation_id, "bot", "", decision=CLARIFY, complete=False)
        yield Event("meta", {"conversation_id": conversation_id, "message_id": msg_id, "decision": CLARIFY,
                             "model": ""})
        yield Event("token", {"text": text})
        yield Event("offer", {"message": self.handoffs.settings.offer_message})
        yield self._finish(msg_id, t0, text=text, ttft_ms=(time.perf_counter() - t0) * 1000.0)

    def _finish(self, msg_id: int, t0: float, **fields: Any) -> Event:
        latency = (time.perf_counter() - t0) * 1000.0
        self.conversations.update_message(msg_id, latency_ms=latency, complete=True, **fields)
        return Event("done", {"message_id": msg_id, "latency_ms": round(latency, 1),
                              "ttft_ms": fields.get("ttft_ms"),
                              "completion_tokens": fields.get("completion_tokens")})

    def _handoff(self, conversation_id: str, msg_id: int, decision: Decision, t0: float):
        text = self.pipeline.handoff_text(decision)
        if self.handoffs is not None:
            state = self.handoffs.request(conversation_id, decision.reason)
            extra = {"status": state["status"], "queue": state}
        else:
            self.conversations.request_handoff(conversation_id, decision.reason)
            extra = {"status": "waiting"}
        yield Event("handoff", {"reason": decision.reason, "message": text, **extra})
        yield self._finish(msg_id, t0, text=text)

    def _clarify(self, msg_id: int, hits: Sequence[Hit], t0: float, topics: Sequence[Hit] = ()):
        text, offered = self.pipeline.clarify(hits, topics)
        ttft = (time.perf_counter() - t0) * 1000.0
        yield Event("token", {"text": text})
        # Each offered topic carries the words it is offered with ("topic"): the widget shows them
        # as buttons that send that question, whose reply is then the entry's own answer.
        sources = [{**source_entry(n, h), "topic": topic_text(h)} for n, h in enumerate(offered, start=1)]
        yield Event("sources", {"sources": sources})
        yield self._finish(msg_id, t0, text=text, sources=sources, ttft_ms=ttft)

    def _answer(self, msg_id: int, message: str, plan: Plan, turns, t0: float):
        selected = plan.sources
        pieces: list[str] = []
        ttft: float | None = None
        finished = stored = False
        reply = None
        try:
            reply = self.pipeline.reply(plan, message, turns)
            for piece in reply:
                if not piece:
                    continue
                if ttft is None:
                    ttft = (time.perf_counter() - t0) * 1000.0
                pieces.append(piece)
                yield Event("token", {"text": piece})
            finished = True
        except Exception as exc:  # stored as incomplete; the stream ends with an error event
            log.exception("generation failed for message %s", msg_id)
            self._store_partial(msg_id, pieces, ttft, t0)
            stored = True
            # The detail (a backend's URL, an upstream's message) goes to the log only.
            yield Event("error", {"message": "Sorry, something went wrong while answering. Please try again."})
            return
        finally:
            if not finished and reply is not None:
                reply.close()  # the client went away (GeneratorExit) or it failed: stop generating
            if not finished and not stored:
                self._store_partial(msg_id, pieces, ttft, t0)
        text = "".join(pieces)
        cited = cited_numbers(text, len(selected))
        # The numbers the reply cites; when it cites none, every source it was grounded in.
        shown = cited or list(range(1, len(selected) + 1))
        sources = [source_entry(n, selected[n - 1]) for n in shown]
        yield Event("sources", {"sources": sources})
        usage = reply.usage
        # The backend's own counts; a backend that reports none is counted by its tokenizer.
        completion_tokens = int(usage.get("completion_tokens") or 0) or reply.generator.count_tokens(text)
        yield self._finish(
            msg_id, t0, text=text, sources=sources, ttft_ms=ttft,
            prompt_tokens=int(usage.get("prompt_tokens") or 0) or None, completion_tokens=completion_tokens,
        )

    def _store_partial(self, msg_id: int, pieces: list[str], ttft: float | None, t0: float) -> None:
        self.conversations.update_message(
            msg_id, text="".join(pieces), ttft_ms=ttft, complete=False,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )
