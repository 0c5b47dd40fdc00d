"""The dialogue manager: one visitor message in, a stream of events out, everything stored.

``DialogueManager.respond(conversation_id, message)`` validates at once (unknown conversation,
empty or over-long message raise before anything is stored) and returns an iterator of
``bot.core.events.Event``:

  answer   meta, token..., sources, done
  clarify  meta, token..., sources (the topics offered), done
  handoff  meta, handoff, done          (the message is in the handoff event, not in tokens)
  failure  meta, token... (what was produced), error   (the partial reply is stored incomplete)

An answer is generated from the numbered sources, or, when the top hit is an FAQ entry the bot
is confident about, is that entry's own answer (``bot/policy.py`` ``direct_source``; stored with
model id ``extractive``). A generated reply ends at ``settings.stop`` and before a repeated line.

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
from bot.generators.base import RepeatGuard, guarded
from bot.policy import ANSWER, CLARIFY, DIRECT, HANDOFF, Decision, decide, direct_source, select_sources
from bot.prompting import build_messages, cited_numbers
from bot.core.settings import DialogueSettings
from retrieval.types import Hit, Retriever

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 4000


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
    def __init__(
        self,
        conversations: ConversationStore,
        retriever: Retriever,
        generator,
        settings: DialogueSettings,
    ):
        self.conversations = conversations
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        from bot.generators.extractive_generator import ExtractiveGenerator

        self.direct_generator = ExtractiveGenerator()
        self.selector = None
        if settings.selector:
            from bot.selector import LearnedSelector, SnapshotVectors, load_selector

            self.selector = load_selector(settings.selector, getattr(retriever, "embedder", None),
                                          threads=settings.selector_threads)
            if isinstance(self.selector, LearnedSelector):
                self.selector.stored_vectors = SnapshotVectors(retriever)

    # -- the parts, usable alone (evaluation runs them without storing) ------------------------
    def retrieve(self, message: str, turns: Sequence[dict]) -> list[Hit]:
        """Candidates for ``message`` in the conversation ``turns`` (earlier turns, oldest first)."""
        # A selector may read a longer candidate list than the policy (its pool, ``selector.k``).
        k = max(self.settings.candidates, getattr(self.selector, "k", 0))
        return self.retriever.search(message, k=k, turns=list(turns))

    def plan(self, message: str, hits: Sequence[Hit]) -> tuple[Decision, list[Hit]]:
        """The decision and the sources an answer would be grounded in.

        A selector that ``detects`` (the cross-encoder) also decides between answering and asking
        back: it answers a turn the retrieval confidence would clarify when it selects something,
        and asks back when it selects nothing. A hand-off (a request for a person, no hits, or a
        confidence below ``clarify_threshold``: out of scope) stays one; letting the selector
        override it answered 20 of the 60 out-of-scope questions."""
        detects = getattr(self.selector, "detects", False)
        decision, selected = self._plan(message, hits, detects)
        # An FAQ entry that answers the question is replied verbatim (bot/policy.py direct_source).
        direct = direct_source(decision, hits, self.settings, selected if detects else None)
        if direct is not None:
            return Decision(ANSWER, DIRECT, decision.confidence), [direct]
        return decision, selected

    def _plan(self, message: str, hits: Sequence[Hit], detects: bool) -> tuple[Decision, list[Hit]]:
        decision = decide(message, hits, self.settings)
        if not detects or decision.action == HANDOFF:
            return decision, self.select(message, hits) if decision.action == ANSWER else []
        selected = self.select(message, hits)
        if selected and decision.action == CLARIFY:
            decision = Decision(ANSWER, "selected", decision.confidence)
        elif not selected and decision.action == ANSWER:
            decision = Decision(CLARIFY, "nothing_selected", decision.confidence)
        return decision, selected if decision.action == ANSWER else []

    def reply_stream(self, generator, messages: list[dict], sources: Sequence[Hit]):
        """``(stream, pieces)``: the backend's stream (usage, ``close``) and the text to show. A
        model's reply ends at the settings' ``stop`` strings and, with ``cut_repeated_lines``, before
        a line that repeats an earlier one; an FAQ's own answer is shown as written."""
        if generator is not self.generator:
            stream = generator.stream(messages, sources=sources)
            return stream, stream
        stream = generator.stream(messages, sources=sources, stop=list(self.settings.stop))
        return stream, guarded(stream, RepeatGuard()) if self.settings.cut_repeated_lines else stream

    def generator_for(self, decision: Decision):
        """The backend that writes the reply: the FAQ's own answer for a direct decision."""
        return self.direct_generator if decision.reason == DIRECT else self.generator

    def select(self, message: str, hits: Sequence[Hit]) -> list[Hit]:
        """The passages an answer is grounded in (learned selector when configured, else the rule)."""
        if self.selector is not None:
            return self.selector.select(message, hits, self.settings.max_sources)
        return select_sources(hits, self.settings)

    def prompt(self, message: str, sources: Sequence[Hit], turns: Sequence[dict]) -> list[dict]:
        count = getattr(self.generator, "count_tokens", None)
        return build_messages(
            message, sources, turns, self.settings.system_prompt,
            count_tokens=count, history_tokens=self.settings.history_tokens,
        )

    def clarify_text(self, hits: Sequence[Hit]) -> tuple[str, list[Hit]]:
        """A clarifying question offering the (up to two) best distinct topics."""
        topics: list[str] = []
        offered: list[Hit] = []
        for h in hits:
            topic = str((h.metadata or {}).get("question") or h.title or "").strip()
            if topic and topic.lower() not in {t.lower() for t in topics}:
                topics.append(topic)
                offered.append(h)
            if len(topics) == 2:
                break
        joined = " or ".join(f"\u201c{t}\u201d" for t in topics) or "something in our help center"
        return self.settings.clarify_message.format(topics=joined), offered

    # -- the whole turn ---------------------------------------------------------------------
    def respond(self, conversation_id: str, message: str) -> Iterator[Event]:
        """Handle one visitor message (see the module docstring). Raises before streaming when
        the conversation does not exist or the message is empty or too long."""
        message = (message or "").strip()
        if not message:
            raise SupportbotError("message is empty")
        if len(message) > MAX_MESSAGE_CHARS:
            raise SupportbotError(f"message is too long ({len(message)} characters, max {MAX_MESSAGE_CHARS})")
        self.conversations.get(conversation_id)  # NotFound before any event
        return self._respond(conversation_id, message)

    def _respond(self, conversation_id: str, message: str) -> Iterator[Event]:
        t0 = time.perf_counter()
        turns = self.conversations.turns(conversation_id, limit=self.settings.context_turns)
        self.conversations.add_message(conversation_id, "user", message)
        try:
            hits = self.retrieve(message, turns)
            decision, selected = self.plan(message, hits)
        except Exception:  # a broken index must not crash the stream: a person takes over
            log.exception("retrieval failed in conversation %s", conversation_id)
            hits, selected = [], []
            decision = Decision(HANDOFF, "retrieval_error", 0.0)
        generator = self.generator_for(decision)
        model_id = str(getattr(generator, "model_id", ""))
        scores = [
            {"chunk_id": int(h.chunk_id), "doc_id": h.doc_id, "score": round(float(h.score), 6),
             "confidence": round(float(h.confidence), 6)}
            for h in hits
        ]
        msg_id = self.conversations.add_message(
            conversation_id, "bot", "", decision=decision.action, scores=scores,
            model_id=model_id if decision.action == ANSWER else "", complete=False,
        )
        yield Event("meta", {"conversation_id": conversation_id, "message_id": msg_id,
                             "decision": decision.action, "model": model_id})

        if decision.action == HANDOFF:
            yield from self._handoff(conversation_id, msg_id, decision, t0)
        elif decision.action == CLARIFY:
            yield from self._clarify(msg_id, hits, t0)
        else:
            yield from self._answer(msg_id, message, selected, turns, t0, generator)

    def _finish(self, msg_id: int, t0: float, **fields: Any) -> Event:
        latency = (time.perf_counter() - t0) * 1000.0
        self.conversations.update_message(msg_id, latency_ms=latency, complete=True, **fields)
        return Event("done", {"message_id": msg_id, "latency_ms": round(latency, 1),
                              "ttft_ms": fields.get("ttft_ms"),
                              "completion_tokens": fields.get("completion_tokens")})

    def _handoff(self, conversation_id: str, msg_id: int, decision: Decision, t0: float):
        text = (self.settings.requested_handoff_message if decision.reason == "requested"
                else self.settings.handoff_message)
        self.conversations.request_handoff(conversation_id, decision.reason)
        yield Event("handoff", {"reason": decision.reason, "message": text})
        yield self._finish(msg_id, t0, text=text)

    def _clarify(self, msg_id: int, hits: Sequence[Hit], t0: float):
        text, offered = self.clarify_text(hits)
        ttft = (time.perf_counter() - t0) * 1000.0
        yield Event("token", {"text": text})
        sources = [source_entry(n, h) for n, h in enumerate(offered, start=1)]
        yield Event("sources", {"sources": sources})
        yield self._finish(msg_id, t0, text=text, sources=sources, ttft_ms=ttft)

    def _answer(self, msg_id: int, message: str, selected: list[Hit], turns, t0: float, generator):
        messages = self.prompt(message, selected, turns)
        pieces: list[str] = []
        ttft: float | None = None
        finished = stored = False
        stream = None
        try:
            # sources: the extractive backend replies from them; model backends ignore it
            stream, shown = self.reply_stream(generator, messages, selected)
            for piece in shown:
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
            text = exc.message if isinstance(exc, SupportbotError) else "the answer could not be completed"
            yield Event("error", {"message": f"Sorry, something went wrong: {text}. Please try again."})
            return
        finally:
            if not finished and stream is not None and hasattr(stream, "close"):
                stream.close()  # the client went away (GeneratorExit) or it failed: stop generating
            if not finished and not stored:
                self._store_partial(msg_id, pieces, ttft, t0)
        reply = "".join(pieces)
        cited = cited_numbers(reply, len(selected))
        # The numbers the reply cites; when it cites none, every source it was grounded in.
        shown = cited or list(range(1, len(selected) + 1))
        sources = [source_entry(n, selected[n - 1]) for n in shown]
        yield Event("sources", {"sources": sources})
        prompt_tokens, completion_tokens = self._usage(generator, stream, messages, reply)
        yield self._finish(
            msg_id, t0, text=reply, sources=sources, ttft_ms=ttft,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        )

    def _store_partial(self, msg_id: int, pieces: list[str], ttft: float | None, t0: float) -> None:
        self.conversations.update_message(
            msg_id, text="".join(pieces), ttft_ms=ttft, complete=False,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def _usage(self, generator, stream, messages: list[dict], reply: str) -> tuple[int | None, int | None]:
        """Prompt and completion tokens: the backend's own usage, else counted here."""
        usage = getattr(stream, "usage", None)
        if usage and usage.get("completion_tokens"):
            return int(usage.get("prompt_tokens") or 0) or None, int(usage["completion_tokens"])
        tok = getattr(generator, "tokenizer", None)
        count = getattr(generator, "count_tokens", None)
        prompt = completion = None
        try:
            if tok is not None and getattr(tok, "chat_template", None):
                ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
                prompt = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
            elif count is not None:
                prompt = sum(count(m["content"]) for m in messages)
            if count is not None:
                completion = count(reply)
        except Exception:  # counting is best effort; never fail a finished answer over it
            log.debug("token counting failed", exc_info=True)
        return prompt, completion


def answer_once(components, bot_name: str | None, question: str) -> Iterator[Event]:
    """Answer one question in a fresh conversation (``supportbot ask --generate``)."""
    bot = bot_name or components.settings.default_bot
    conversations = components.conversations
    cid = conversations.create(components.db.bot_id(bot), "cli", {"channel": "cli"})
    return components.dialogue(bot).respond(cid, question)
