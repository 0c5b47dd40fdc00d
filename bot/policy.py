"""The dialogue policy: answer, clarify or hand off, and when an FAQ entry is the reply itself.

Pure functions of the retriever's hits, the selector's verdict and ``DialogueSettings``, used by
the turn pipeline (``bot/pipeline.py``) and by ``bench/calibrate_policy.py``, which picks the
thresholds stored as the settings' defaults from dev data.

Decision, from the top hit's calibrated confidence ``c`` (the retriever's P(top hit relevant)):
  c >= answer_threshold                      -> answer from the selected sources
  clarify_threshold <= c < answer_threshold  -> ask the visitor to rephrase / pick a topic
  c < clarify_threshold (or no hit)          -> polite refusal and hand-off to a person
A selector that judges whether the turn needs knowledge (``Selection.needs_knowledge``) then
upgrades an ask-back to an answer when it selected passages, and turns an answer into an ask-back
when it selected none (``with_selection``). A hand-off stays one: letting the selector override
it answered out-of-scope questions (``bench/calibrate_policy.py`` measures it).

Direct answers (``direct_source``): when the bot answers and the top hit is an FAQ entry (a
question with its answer) at confidence >= ``direct_answer_threshold``, the reply is that entry's
own answer, verbatim and cited, instead of a generated one (what Dify calls an annotation reply).
The site owner wrote that answer for this question; a small model paraphrasing it can only make it
worse. The threshold is chosen by ``bench/calibrate_direct.py``. With a selector that judges
knowledge, only when it chose that entry alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from bot.core.settings import DialogueSettings
from retrieval.types import Hit

ANSWER, CLARIFY, HANDOFF = "answer", "clarify", "handoff"
DIRECT = "direct"  # the reason of an answer that is an FAQ entry's own text

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
    # confident | ambiguous | low_confidence | no_knowledge | requested | selected | nothing_selected
    # | direct | retrieval_error
    reason: str
    confidence: float


def wants_human(message: str) -> bool:
    """True when the visitor asks for a person."""
    return bool(_HUMAN.search(message))


def decide(message: str, hits: Sequence[Hit], settings: DialogueSettings) -> Decision:
    """Answer, clarify or hand off from the retrieval confidence (see the module docstring)."""
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


def with_selection(decision: Decision, needs_knowledge: bool | None) -> Decision:
    """The decision once a selector judged the turn (``needs_knowledge``; None: it does not)."""
    if needs_knowledge is None or decision.action == HANDOFF:
        return decision
    if needs_knowledge and decision.action == CLARIFY:
        return Decision(ANSWER, "selected", decision.confidence)
    if not needs_knowledge and decision.action == ANSWER:
        return Decision(CLARIFY, "nothing_selected", decision.confidence)
    return decision


def direct_source(
    decision: Decision, hits: Sequence[Hit], settings: DialogueSettings, selected: Sequence[Hit] | None = None,
) -> Hit | None:
    """The FAQ entry to reply with verbatim, or None to generate (see the module docstring).

    ``selected``: what a selector that judges knowledge chose; then the top hit is replied
    directly only when it is the one passage chosen (a question that needs reviews too gets a
    generated reply grounded in all of them)."""
    if decision.action != ANSWER or not hits or float(hits[0].confidence) < settings.direct_answer_threshold:
        return None
    if selected is not None and [h.chunk_id for h in selected] != [hits[0].chunk_id]:
        return None
    return hits[0] if hits[0].faq_answer else None
