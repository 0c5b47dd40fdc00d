"""The dialogue policy: answer, clarify or hand off, and which retrieved passages ground an answer.

Pure functions of the retriever's hits and ``DialogueSettings``, shared by the dialogue manager,
``supportbot eval`` and ``bench/calibrate_policy.py`` (which picks the thresholds stored as the
settings' defaults from dev data).

Decision, from the top hit's calibrated confidence ``c`` (the retriever's P(top hit relevant)):
  c >= answer_threshold                      -> answer from the selected sources
  clarify_threshold <= c < answer_threshold  -> ask the visitor to rephrase / pick a topic
  c < clarify_threshold (or no hit)          -> polite refusal and hand-off to a person

Direct answers (``direct_source``): when the bot answers and the top hit is an FAQ entry (a
question with its answer) at confidence >= ``direct_answer_threshold``, the reply is that entry's
own answer, verbatim and cited, instead of a generated one (what Dify calls an annotation reply).
The site owner wrote that answer for this question; a small model paraphrasing it can only make it
worse (on the sample FAQ the default 135M model invented shipping rates and echoed source headers
instead). The threshold (0.825) is chosen by ``bench/calibrate_direct.py``: 99 % of direct replies right
on StackFAQ's help-desk paraphrases (74 % of them replied directly); on DSTC11's hotel conversations,
whose questions mostly need reviews, it fires on 2.5 % of answered turns. With the cross-encoder
selector (``dialogue.selector = "dstc11-cross"``), only when it chose that entry alone.

Source selection ("knowledge selection" as DSTC11 scores it): the passages within
``select_margin`` of the top passage's fused score (relative to the top score's distance from the
weakest candidate), from the top passage's entity (title / ``entity_name``) when
``select_same_entity``, at most ``max_sources``. This rule is the fallback: by default
(``dialogue.selector = "auto"``) the learned selector of ``bot/selector.py`` chooses instead when
it was trained for the retriever's embedder (dstc11 dev selection F1 0.65 against 0.45 for the
best rule, same hits, bench/calibrate_policy.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from bot.core.settings import DialogueSettings
from retrieval.types import Hit

ANSWER, CLARIFY, HANDOFF = "answer", "clarify", "handoff"

# Explicit requests for a person ("talk to a human", "can I speak with an agent?").
_HUMAN = re.compile(
    r"\b(talk|speak|chat|connect|transfer|put)\b[^.?!]{0,30}\b(human|person|agent|someone|somebody|"
    r"representative|operator|staff|support team|real person)\b"
    r"|\b(human|live|real)\s+(agent|person|support)\b|\bagent\s+please\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Decision:
    action: str  # answer | clarify | handoff
    reason: str  # confident | ambiguous | low_confidence | no_knowledge | requested | selected | direct
    confidence: float


DIRECT = "direct"


def direct_source(
    decision: Decision, hits: Sequence[Hit], settings: DialogueSettings, selected: Sequence[Hit] | None = None,
) -> Hit | None:
    """The FAQ entry to reply with verbatim, or None to generate (see the module docstring).

    ``selected``: what a knowledge selector trusted to ground answers (the cross-encoder) chose;
    then the top hit is replied directly only when it is the one passage chosen (a question that
    needs reviews too gets a generated reply grounded in all of them)."""
    from bot.generators.extractive_generator import faq_answer

    if decision.action != ANSWER or not hits or float(hits[0].confidence) < settings.direct_answer_threshold:
        return None
    if selected is not None and [h.chunk_id for h in selected] != [hits[0].chunk_id]:
        return None
    return hits[0] if faq_answer(hits[0]) else None


def wants_human(message: str) -> bool:
    """True when the visitor asks for a person."""
    return bool(_HUMAN.search(message))


def decide(message: str, hits: Sequence[Hit], settings: DialogueSettings) -> Decision:
    """Answer, clarify or hand off (see the module docstring)."""
    if wants_human(message):
        return Decision(HANDOFF, "requested", float(hits[0].confidence) if hits else 0.0)
    if not hits:
        return Decision(HANDOFF, "no_knowledge", 0.0)
    c = float(hits[0].confidence)
    if c >= settings.answer_threshold:
        return Decision(ANSWER, "confident", c)
    if c >= settings.clarify_threshold:
        return Decision(CLARIFY, "ambiguous", c)
    return Decision(HANDOFF, "low_confidence", c)


def entity_name(hit: Hit) -> str:
    """The entity a passage is about, as written: ``metadata.entity_name``, else the title."""
    meta = hit.metadata or {}
    return str(meta.get("entity_name") or hit.title or hit.doc_id).strip()


def entity_of(hit: Hit) -> str:
    """``entity_name`` lowercased, for comparing entities."""
    return entity_name(hit).lower()


def select_sources(hits: Sequence[Hit], settings: DialogueSettings) -> list[Hit]:
    """The hits an answer is grounded in, best first (always the top hit when there is one).

    A hit is kept when its score is within ``select_margin`` of the top score, measured as a
    fraction of the spread between the top and the last candidate's score (scale-free, so it works
    whatever the retriever's score range), and, with ``select_same_entity``, when it is about the
    top hit's entity. Duplicates of one chunk are dropped.
    """
    if not hits:
        return []
    top = hits[0]
    spread = float(top.score) - min(float(h.score) for h in hits)
    floor = float(top.score) - settings.select_margin * spread
    entity = entity_of(top)
    chosen: list[Hit] = []
    seen: set[int] = set()
    for h in hits:
        if len(chosen) >= settings.max_sources:
            break
        if h.chunk_id in seen or float(h.score) < floor:
            continue
        if settings.select_same_entity and entity_of(h) != entity:
            continue
        if float(h.confidence) < settings.select_min_confidence and h is not top:
            continue
        seen.add(h.chunk_id)
        chosen.append(h)
    return chosen
