"""The turn pipeline: retrieve -> plan -> prompt -> guarded reply stream, for one visitor message.

One object runs the path every message takes, with its parts passed in (a ``Retriever``, a
``Selector``, the model ``Generator`` and the ``extractive`` one for direct FAQ replies):

    hits  = pipeline.retrieve(message, turns)      # entity-aware hybrid search, the selector's pool
    plan  = pipeline.plan(message, hits, turns)    # answer | clarify | hand off, and the sources
    reply = pipeline.reply(plan, message, turns)   # the text the visitor is shown, streamed

The dialogue manager (``bot/dialogue.py``) adds storage and events around it, ``supportbot eval``
(``bot/evaluate.py``) scores it without storing, and training (``training/sft_dataset.py``) takes
the sources it would ground a turn in. Nothing here stores anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Iterator, Sequence

from bot.checker import Checker
from bot.cross_selector import pool_kind
from bot.core.settings import DialogueSettings
from bot.generators.base import GenerationStream, Generator, ReplyGuard, guarded
from bot.policy import (ANSWER, CLARIFY, DIRECT, HANDOFF, PASSAGE, Decision, decide, direct_source,
                        named_entity, with_match, with_selection)
from bot.grounding import GroundedReply
from bot.prompting import build_messages
from bot.selection import Selection, Selector
from retrieval.types import Embedder, Hit, Retriever

if TYPE_CHECKING:
    from bot.faq_match import FAQMatch, FAQMatcher


@dataclass
class Plan:
    """What the bot will do with a message: the decision, every retrieved hit (stored with their
    scores) and ``sources``: the passages an answer is grounded in (empty unless it answers)."""

    decision: Decision
    hits: list[Hit] = field(default_factory=list)
    sources: list[Hit] = field(default_factory=list)
    # The topics a clarifying question offers, when the FAQ matcher chose them (else from ``hits``).
    topics: list[Hit] = field(default_factory=list)

    @property
    def direct(self) -> bool:
        """The reply is an FAQ entry's own answer (no model)."""
        return self.decision.reason == DIRECT


class ReplyStream(Iterator[str]):
    """The text pieces a visitor is shown for an answer, as the generator produces them.

    ``messages`` is the prompt, ``generator`` the backend that writes it; ``usage`` the backend's
    prompt/completion token counts (final once the stream ends); ``close()`` stops generating."""

    def __init__(self, generator: Generator, messages: list[dict], stream: GenerationStream,
                 shown: Iterator[str]):
        self.generator = generator
        self.model_id = str(generator.model_id)
        self.messages = messages
        self._stream = stream
        self._shown = shown

    def __iter__(self) -> "ReplyStream":
        return self

    def __next__(self) -> str:
        return next(self._shown)

    @property
    def usage(self) -> dict[str, int]:
        return dict(self._stream.usage)

    def close(self) -> None:
        close = getattr(self._shown, "close", None)
        if close is not None:
            close()
        self._stream.close()


def topic_text(hit: Hit) -> str:
    """The words a clarifying question offers ``hit`` with: an FAQ entry's question, else its
    title and section; ``""`` (not a topic) when there is no section and the title is only the
    file's name: an uploaded ``faq.txt`` is titled "faq", and "Are you asking about “faq”?" tells
    the visitor nothing."""
    if hit.question:
        return hit.question
    title = str(hit.title or "").strip()
    if title.casefold() == PurePath(str(hit.doc_id or "")).stem.casefold():
        title = ""
    meta = hit.metadata or {}
    # A help center's passage is offered with its section too ("Placing and Changing an Order:
    # Editing or cancelling an order"): one article holds several topics, and the words the
    # topic button sends then retrieve that passage (``TurnPipeline.chosen``).
    section = "" if meta.get("entity_name") else str(meta.get("heading") or "").split(" > ")[-1].strip()
    if section and section.casefold() != title.casefold():
        return f"{title}: {section}" if title else section
    return title


def either(topics) -> str:
    """“A”, “B” or “C”."""
    quoted = [f"\u201c{t}\u201d" for t in topics]
    return " or ".join(filter(None, [", ".join(quoted[:-1]), quoted[-1] if quoted else ""]))


class TurnPipeline:
    """Retrieve, plan and stream the reply for one message (see the module docstring)."""

    def __init__(
        self,
        retriever: Retriever,
        selector: Selector,
        generator: Generator | None,
        direct_generator: Generator,
        settings: DialogueSettings,
        checker: Checker | None = None,
        embedder: Embedder | None = None,
        matcher: "FAQMatcher | None" = None,
    ):
        self.retriever = retriever
        self.selector = selector
        self.generator = generator  # None: plans only (evaluation without generation, training)
        self.direct_generator = direct_generator
        self.settings = settings
        self.checker = checker  # None: generated sentences are shown unchecked
        self.embedder = embedder  # picks the fallback's sentences closest to the question
        self.matcher = matcher  # None: the retrieval confidence and the selector decide everywhere

    # -- retrieve and plan ------------------------------------------------------------------
    def retrieve(self, message: str, turns: Sequence[dict]) -> list[Hit]:
        """Candidates for ``message`` in the conversation ``turns`` (earlier turns, oldest first).
        A selector may read a longer candidate list than the policy (its ``pool``)."""
        k = max(self.settings.candidates, self.selector.pool)
        return self.retriever.search(message, k=k, turns=list(turns))

    def select(self, message: str, hits: Sequence[Hit], turns: Sequence[dict] = ()) -> Selection:
        """The passages an answer to ``message`` would be grounded in (whatever the decision)."""
        return self.selector.select(message, hits, self.settings.max_sources, turns)

    def plan(self, message: str, hits: Sequence[Hit], turns: Sequence[dict] = ()) -> Plan:
        """The decision and the sources an answer is grounded in (``bot/policy.py``): the
        retrieval confidence decides, a selector that judges knowledge refines it, and an FAQ entry
        that answers the question becomes the reply itself."""
        hits = list(hits)
        decision = decide(message, hits, self.settings)
        match = self.match(message, hits, decision)
        if match is None:
            return self._retrieval_plan(message, hits, turns, decision)
        if hits[0].faq_answer or match.kind == "passage" or match.probability >= self._direct(match):
            return self._matched(hits, decision, match)
        # Below a page's intro text (or a glossary), an entry the matcher is sure of is still the
        # reply; one it is not sure of leaves the retrieval path a chance to answer from that
        # text. Short of an answer there, the matcher's verdict stands: its clarifying question
        # offers the entries it finds likely, where the retrieval path would hand off (an FAQ
        # page's intro above "Who can join?" was no reason to hand off "we're moving to oregon,
        # will i have to close my accounts") or offer the intro as a topic.
        plan = self._retrieval_plan(message, hits, turns, decision)
        return plan if plan.decision.action == ANSWER else self._matched(hits, decision, match)

    def _retrieval_plan(self, message: str, hits: list[Hit], turns: Sequence[dict], decision: Decision) -> Plan:
        """The plan without the FAQ matcher: the retrieval confidence's ``decision``, refined by
        the selector."""
        named = named_entity(hits) and decision.reason == "low_confidence"
        if decision.action == HANDOFF and not named:
            return Plan(decision, hits, [])  # requested, no knowledge, or nothing close (policy.with_selection)
        # Past a low confidence, only the named entity's passages may ground the answer: the top
        # hits are other entities' passages on the same subject (policy.named_entity).
        selection = self.select(message, [h for h in hits if h.in_entity] if named else hits, turns)
        decision = with_selection(decision, selection, named)
        if decision.action == ANSWER:
            decision = self.on_topic(message, hits, turns, decision)
            if decision.action != ANSWER:
                return Plan(decision, hits, [])
        direct = direct_source(decision, hits, self.settings, selection)
        if direct is not None:
            return Plan(Decision(ANSWER, DIRECT, decision.confidence), hits, [direct])
        return Plan(decision, hits, selection.passages if decision.action == ANSWER else [])

    def _matched(self, hits: list[Hit], decision: Decision, match: "FAQMatch") -> Plan:
        """The plan the FAQ matcher's verdict gives (``policy.with_match``): the entry's own answer,
        a clarifying question offering it and the entries close to it, or a hand-off."""
        passage = match.kind == "passage"
        clarify = float(self.matcher.passages["clarify"]) if passage else self.matcher.clarify
        decision = with_match(decision, match.probability, self._direct(match), clarify)
        close = [h for h, p in match.rivals if p >= self.settings.clarify_ratio * match.probability]
        topics = [match.entry] + close[: max(self.settings.clarify_topics - 1, 0)]
        if passage and decision.reason == DIRECT and self.settings.passage_reply == "write":
            # The reply is written from the passage (each sentence checked against it), else its
            # sentences closest to the question are quoted; "quote" (the default) shows the
            # passage itself, as an FAQ entry's answer is shown (reason DIRECT, below).
            return Plan(Decision(ANSWER, PASSAGE, decision.confidence), hits, [match.entry])
        return Plan(decision, hits, [match.entry] if decision.reason == DIRECT else [],
                    topics if decision.action == CLARIFY else [])

    def _direct(self, match: "FAQMatch") -> float:
        """The P from which ``match``'s entry is the reply (its own threshold, else the matcher's)."""
        return self.matcher.direct if match.direct is None else match.direct

    def on_topic(self, message: str, hits: Sequence[Hit], turns: Sequence[dict], decision: Decision) -> Decision:
        """An answer ``decision``, or a hand-off (reason ``off_topic``) when in a knowledge base of
        entities the message matches nothing there once retrieved alone: the conversation's entity
        lifts the retrieval confidence of its passages whatever the question
        (``dialogue.entity_alone_floor``; one more search, ~10 ms, for answers only)."""
        floor = self.settings.entity_alone_floor
        if floor <= 0 or not turns or decision.action != ANSWER or pool_kind(hits) != "entity":
            return decision
        alone = self.retriever.search(message, k=1)
        confidence = float(alone[0].confidence) if alone else 0.0
        return decision if confidence >= floor else Decision(HANDOFF, "off_topic", confidence)

    def chosen(self, message: str, chunk_id: int) -> Plan | None:
        """The plan when ``message`` is a topic the bot just offered (``chunk_id``: its entry): the
        visitor chose it, so the reply is that FAQ entry's own answer, or on a help center the
        offered passage (quoted or written from, as a sure passage is: ``_matched``). The entry is
        found by retrieving its words alone (the conversation before is what was unclear); None
        when it was not retrieved or is neither an FAQ entry nor a help center's passage (the
        message is then planned as any other)."""
        hits = self.retrieve(message, [])
        entry = next((h for h in hits if int(h.chunk_id) == int(chunk_id)), None)
        if entry is None:
            return None
        if entry.faq_answer:
            return Plan(Decision(ANSWER, DIRECT, float(entry.confidence)), hits, [entry])
        passages = self.matcher is not None and self.matcher.passages is not None
        if not passages or pool_kind(hits) != "flat" or any(h.faq_answer for h in hits):
            return None
        reason = PASSAGE if self.settings.passage_reply == "write" else DIRECT
        return Plan(Decision(ANSWER, reason, float(entry.confidence)), hits, [entry])

    def match(self, message: str, hits: Sequence[Hit], decision: Decision) -> "FAQMatch | None":
        """The FAQ matcher's verdict: a flat knowledge base whose hits hold an FAQ entry
        (``bot/faq_match.py``), and neither a request for a person nor an empty retrieval."""
        if self.matcher is None or not hits or decision.reason in ("requested", "no_knowledge"):
            return None
        return self.matcher.match(message, hits)

    # -- what the visitor is shown ---------------------------------------------------------
    def clarify(self, hits: Sequence[Hit], chosen: Sequence[Hit] = ()) -> tuple[str, list[Hit]]:
        """A clarifying question offering the best topic and the distinct ones genuinely close to it
        (confidence at least ``clarify_ratio`` of the top's; ``clarify_topics`` in all at most);
        never a topic far below the top. ``chosen``: the topics to offer (a plan's ``topics``), when given."""
        if chosen:
            offered = list(chosen)
            joined = either(topic_text(h) for h in offered)
            return self.settings.clarify_message.format(topics=joined), offered
        topics: list[str] = []
        offered: list[Hit] = []
        top = float(hits[0].confidence) if hits else 0.0
        close = [h for h in hits if float(h.confidence) >= self.settings.clarify_ratio * top]
        if any(h.question for h in close):
            # An FAQ entry is a topic the visitor can pick; a page's intro text next to it is not
            # (its title is the page's: "Returns & Refunds" offered beside "How long do I have
            # to return something?").
            close = [h for h in close if h.question]
        for h in close:  # a hit without a topic of its own does not let one far below it in
            topic = topic_text(h)
            if topic and topic.lower() not in {t.lower() for t in topics}:
                topics.append(topic)
                offered.append(h)
            if len(topics) >= self.settings.clarify_topics:
                break
        joined = either(topics) or "something in our help center"
        return self.settings.clarify_message.format(topics=joined), offered

    def handoff_text(self, decision: Decision) -> str:
        return (self.settings.requested_handoff_message if decision.reason == "requested"
                else self.settings.handoff_message)

    def generator_for(self, plan: Plan) -> Generator:
        """The backend that writes the reply: the FAQ's own answer for a direct plan."""
        if plan.direct:
            return self.direct_generator
        if self.generator is None:
            raise ValueError("this pipeline was built without a generator")
        return self.generator

    def prompt(self, message: str, sources: Sequence[Hit], turns: Sequence[dict]) -> list[dict]:
        count = self.generator.count_tokens if self.generator is not None else None
        return build_messages(
            message, sources, turns, self.settings.system_prompt,
            count_tokens=count, history_tokens=self.settings.history_tokens,
        )

    def reply(self, plan: Plan, message: str, turns: Sequence[dict]) -> ReplyStream:
        """The answer's text stream. A model's reply ends at ``dialogue.stop`` and, with
        ``cut_repeated_lines``, before a line that repeats an earlier one (``ReplyGuard``, the one
        place replies are cut); with a checker, it is shown sentence by sentence, each only when
        the sources support it, else the sources' own words (``bot/grounding.py``). An FAQ's own
        answer is shown as written."""
        if plan.decision.action != ANSWER:
            raise ValueError(f"only an answer has a reply stream, not a {plan.decision.action}")
        generator = self.generator_for(plan)
        messages = self.prompt(message, plan.sources, turns)
        # sources: the extractive backend replies from them; model backends ignore them
        stream = generator.stream(messages, sources=plan.sources)
        if plan.direct:
            return ReplyStream(generator, messages, stream, iter(stream))
        guard = ReplyGuard(self.settings.stop, self.settings.cut_repeated_lines)
        shown: Iterator[str] = guarded(stream, guard)
        if self.checker is not None:
            shown = GroundedReply(shown, plan.sources, message, self.checker, self.settings.fallback_intro,
                                  embed=self.embedder.embed if self.embedder is not None else None,
                                  close=stream.close, review_intro=self.settings.review_intro)
        return ReplyStream(generator, messages, stream, shown)

    def model_id(self, plan: Plan) -> str:
        """The model id stored with the reply ("" unless the bot answers)."""
        return str(self.generator_for(plan).model_id) if plan.decision.action == ANSWER else ""


__all__ = ["ANSWER", "CLARIFY", "HANDOFF", "Plan", "ReplyStream", "TurnPipeline", "topic_text"]

