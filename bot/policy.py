"""The dialogue policy: answer, clarify or hand off, and which retrieved passages ground an answer.

Pure functions of the retriever's hits and ``DialogueSettings``, shared by the dialogue manager,
``supportbot eval`` and ``bench/calibrate_policy.py`` (which picks the thresholds stored as the
settings' defaults from dev data).

Decision, from the top hit's calibrated confidence ``c`` (the retriever's P(top hit relevant)):
  c >= answer_threshold                      -> answer from the selected sources
  clarify_threshold <= c < answer_threshold  -> ask the visitor to rephrase / pick a topic
  c < clarify_threshold (or no hit)          -> polite refusal and hand-off to a person

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

from bot.settings import DialogueSettings
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
    reason: str  # confident | ambiguous | low_confidence | no_knowledge | requested
    confidence: float


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


def entity_of(hit: Hit) -> str:
    """The entity a passage is about: ``metadata.entity_name`` or else the document title."""
    meta = hit.metadata or {}
    return str(meta.get("entity_name") or hit.title or hit.doc_id).strip().lower()


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
