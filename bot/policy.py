"""The dialogue policy: answer, clarify or hand off, and when an FAQ entry is the reply itself.

Pure functions of the retriever's hits, the selector's verdict and ``DialogueSettings``, used by
the turn pipeline (``bot/pipeline.py``) and by ``bench/calibrate_policy.py``, which picks the
thresholds stored as the settings' defaults from dev data.

Decision, from the top hit's calibrated confidence ``c`` (the retriever's P(top hit relevant)):
  c >= answer_threshold                      -> answer from the selected sources
  clarify_threshold <= c < answer_threshold  -> ask the visitor to rephrase / pick a topic
  c < clarify_threshold (or no hit)          -> polite refusal and hand-off to a person
A selector that judges whether the turn needs knowledge (``Selection.needs_knowledge``) then
decides (``with_selection``): it answers what it grounded, hands off a knowledge turn it could
not ground, and does not answer a turn that needs no knowledge.

Direct answers (``direct_source``): when the bot answers and the top hit is an FAQ entry (a
question with its answer) at confidence >= ``direct_answer_threshold``, the reply is that entry's
own answer, verbatim and cited, instead of a generated one (what Dify calls an annotation reply).
The site owner wrote that answer for this question; a small model paraphrasing it can only make it
worse. With a selector that judges knowledge, the threshold is on its P(grounds the answer) of the
entry; otherwise (the rule, the MLP) on the retrieval confidence of the top hit. It is chosen by ``bench/calibrate_direct.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from bot.core.settings import DialogueSettings
from bot.cross_selector import pool_kind
from bot.selection import Selection
from retrieval.types import Hit

ANSWER, CLARIFY, HANDOFF = "answer", "clarify", "handoff"
DIRECT = "direct"  # the reason of an answer that is an FAQ entry's own text
PASSAGE = "passage"  # the reason of an answer written from the help-center passage the matcher found

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
    # | direct | retrieval_error | off_topic (``TurnPipeline.on_topic``)
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


def with_selection(decision: Decision, selection: Selection, entity_named: bool = False) -> Decision:
    """The decision once a selector judged the turn (``selection.needs_knowledge``; None: it does
    not, and the retrieval confidence alone decides).

    A selector that judges knowledge decides: it answers when it selected passages (also a turn the
    retrieval confidence would ask back on: the selector read the question and the passage
    together), hands off a knowledge turn it found nothing to ground (the knowledge base
    does not answer it) and does not answer a turn that needs no knowledge. An explicit request for
    a person and an empty retrieval stay hand-offs, and so does a turn whose top hit is below
    ``clarify_threshold`` (``low_confidence``: nothing in the knowledge base is close; the
    DSTC11 cross-encoder had grounded 20 of the 60 out-of-scope questions of ``supportbot eval``,
    all but 2 of them below that calibrated threshold), unless ``entity_named``: the
    conversation names an entity of the knowledge base and its passages were retrieved (see
    ``named_entity``). Then the selector may still ground the turn in them; when it grounds
    nothing, the hand-off stands."""
    floor = ("requested", "no_knowledge") if entity_named else ("requested", "no_knowledge", "low_confidence")
    if selection.needs_knowledge is None or decision.reason in floor:
        return decision
    if selection.passages:
        return decision if decision.action == ANSWER else Decision(ANSWER, "selected", decision.confidence)
    if decision.reason == "low_confidence":
        return decision
    if selection.needs_knowledge:
        return Decision(HANDOFF, "not_in_knowledge", decision.confidence)
    return decision if decision.action != ANSWER else Decision(CLARIFY, "no_knowledge_needed", decision.confidence)


def named_entity(hits: Sequence[Hit]) -> bool:
    """True when ``hits`` hold passages about the entity the conversation names (a hotel, a
    product: ``Hit.in_entity``) in a knowledge base of entities. The retrieval confidence is then
    no reason to hand off: it is low when the top hit is another entity's passage on the same
    subject ("is the room clean?" against every hotel's reviews about clean rooms), which is how 7
    of the 10 knowledge turns of DSTC11 dev that the bot did not answer were lost, each in a
    conversation naming the hotel or restaurant (``supportbot eval``; README)."""
    return any(h.in_entity for h in hits) and pool_kind(hits) == "entity"


def with_match(decision: Decision, probability: float | None, direct: float, clarify: float) -> Decision:
    """The decision on a flat knowledge base whose top hit is an FAQ entry, from the FAQ matcher's
    P(that entry answers the question) (``bot/faq_match.py``; None: no matcher, ``decision``
    stands): at ``direct`` or more the reply is the entry's own answer; from ``clarify`` the bot
    asks back (the entry is a likely topic); below it hands off, because the FAQ does not answer
    the question. An explicit request for a person and an empty retrieval stay hand-offs."""
    if probability is None or decision.reason in ("requested", "no_knowledge"):
        return decision
    if probability >= direct:
        return Decision(ANSWER, DIRECT, probability)
    if probability >= clarify:
        return Decision(CLARIFY, "ambiguous", probability)
    return Decision(HANDOFF, "not_in_knowledge", probability)


def direct_source(decision: Decision, hits: Sequence[Hit], settings: DialogueSettings,
                  selection: Selection | None = None) -> Hit | None:
    """The FAQ entry to reply with verbatim, or None to generate (see the module docstring).

    With a selector that judges knowledge and scores its passages (``selection.scores``), the
    passage it finds most likely to ground the answer, when that is an FAQ entry at P >= ``direct_answer_threshold`` and
    no other kind of passage (a review, a help page) was selected with it; otherwise the top hit
    at retrieval confidence >= the threshold."""
    if decision.action != ANSWER or not hits:
        return None
    if selection is not None and selection.scores is not None and selection.needs_knowledge is not None:
        if not selection.passages or any(not h.faq_answer for h in selection.passages):
            return None
        best = max(range(len(selection.passages)), key=lambda i: selection.scores[i])
        return selection.passages[best] if selection.scores[best] >= settings.direct_answer_threshold else None
    if float(hits[0].confidence) < settings.direct_answer_threshold:
        return None
    return hits[0] if hits[0].faq_answer else None
