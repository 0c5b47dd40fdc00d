"""Every bad answer becomes a fix: the bot's bad answers, the agent's right answer, and what it
becomes (a curated FAQ entry, a regression case, a training example).

``Fixes(db, knowledge, embedder)``:

* ``bad_answers(bot)`` lists what the bot got wrong, with what it retrieved: replies rated down
  (the latest ``Feedback`` of a bot message is -1), hand-offs it made because it could not answer
  (decision ``handoff`` for a reason in ``NOT_ANSWERED``; a visitor asking for a person is not a
  bad answer) and questions it asked back on (decision ``clarify``). Each comes with the visitor's
  question (the user message before it), the reply, its sources and the retrieval scores. A
  message that already has a fix (approved, draft or dismissed) is not listed again.
* ``write(bot, question, answer, message_id=...)`` stores the agent's answer as an approved
  ``Fix`` and publishes it as a curated FAQ entry: a document ``curated/fix-<id>`` (one FAQ
  section, question + answer, ``doc_type`` faq) ingested through the knowledge base's own
  ``ingest_documents`` (the path an admin upload takes), so the index is republished at once.
  The bot then replies with the entry's own answer when a visitor's question matches it: an FAQ
  entry on top at calibrated confidence >= ``dialogue.direct_answer_threshold`` is replied
  directly (``bot/policy.py`` ``direct_source``; the threshold is fitted by
  ``bench/calibrate_direct.py``). Curated entries are FAQ entries like any other, so no rule of
  their own is needed (``tests/test_fixes.py`` asks paraphrases through the real pipeline).
* ``draft_from_resolved(bot)`` drafts question-and-answer pairs from conversations an agent
  resolved (the visitor's question, the agent's reply), skipping those whose question an FAQ
  entry or a fix already covers (``DUPLICATE_COSINE`` below); drafts wait for ``approve`` (with
  edits) or ``dismiss``.
* ``regression_cases(bot)`` and ``training_records(bot)`` export the approved fixes for
  ``supportbot eval --regressions`` / the promotion gate and for ``supportbot build-dataset``.
  Nothing here reads ``Conversation.visitor_email``: it never reaches an export.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from sqlalchemy import func, select

from bot.core.errors import NotFound, SupportbotError
from bot.core.store.db import Database
from bot.core.store.models import Chunk, Conversation, Document, Feedback, Fix, Handoff, Message, utcnow
from bot.policy import wants_human
from retrieval.types import Embedder, ParsedDocument, Section

KINDS = ("rated_down", "not_answered", "asked_back", "resolved")
STATUSES = ("draft", "approved", "dismissed")
# Hand-off reasons that mean the bot could not answer from its knowledge (bot/policy.py). Not
# "requested" (the visitor asked for a person) nor "retrieval_error" (a failure, not a gap).
NOT_ANSWERED = ("low_confidence", "not_in_knowledge", "no_knowledge")
CURATED_PREFIX = "curated/fix-"
# A drafted question duplicates an FAQ entry or a fix when the cosine of their MiniLM embeddings
# (question against question) is at least this. Fitted by `python bench/calibrate_fix_dedup.py`
# on the fictional companies of bench/faq_corpus (visitors' casual paraphrases against every
# entry question of their company): the lowest threshold at which at most 5% of the questions
# whose entry is missing would be dropped as duplicates of another entry, on the fit companies
# (4.3% there, 10% on the held-out ones), because dropping a new question loses a fix while
# drafting a duplicate costs an agent one click. It catches about half the paraphrases of an
# existing entry (46% fit, 51% held out); close rewordings, the common case, score far above it.
DUPLICATE_COSINE = 0.6
MAX_QUESTION = 2000
MAX_ANSWER = 8000


def curated_id(fix_id: int) -> str:
    return f"{CURATED_PREFIX}{fix_id}"


def curated_document(fix_id: int, question: str, answer: str) -> ParsedDocument:
    """The FAQ entry a fix publishes: one FAQ section (never split), marked curated."""
    title = " ".join(question.split())[:200]
    section = Section(text=f"{question}\n{answer}", heading=title, kind="faq", question=question, answer=answer)
    return ParsedDocument(external_id=curated_id(fix_id), title=title, sections=[section], source="",
                          mime="text/plain", metadata={"doc_type": "faq", "curated": True, "fix_id": fix_id})


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


@dataclass
class BadAnswer:
    """One reply of the bot an agent should write the right answer for."""

    kind: str  # rated_down | not_answered | asked_back
    conversation_id: str
    message_id: int
    question: str
    reply: str
    reason: str = ""  # the hand-off reason, the feedback comment, or the decision
    decision: str = ""
    sources: list[dict] = field(default_factory=list)
    # The top retrieved candidates: {"doc_id", "title", "text", "score", "confidence"}
    retrieved: list[dict] = field(default_factory=list)
    created_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DraftReport:
    drafted: list[int] = field(default_factory=list)  # new Fix ids
    duplicates: list[dict] = field(default_factory=list)  # {"question", "of", "cosine"}
    seen: int = 0  # agent replies considered


def _clean(text: str, limit: int, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise SupportbotError(f"the {what} is empty")
    if len(text) > limit:
        raise SupportbotError(f"the {what} is too long ({len(text)} characters, max {limit})")
    return text


class Fixes:
    """Bad answers and the fixes written for them, over the project's one database.

    ``knowledge`` (a ``retrieval.knowledge.KnowledgeBase``: ``ingest_documents``, ``delete``) publishes
    the curated entries; ``embedder`` (the retriever's, MiniLM by default) de-duplicates drafts.
    """

    def __init__(self, db: Database, knowledge=None, embedder: Embedder | None = None,
                 duplicate_cosine: float = DUPLICATE_COSINE):
        self.db = db
        self.knowledge = knowledge
        self.embedder = embedder
        self.duplicate_cosine = duplicate_cosine

    # -- the bad answers ------------------------------------------------------------------------
    def bad_answers(self, bot: str, limit: int = 100, retrieved: int = 3) -> list[BadAnswer]:
        """The bot's bad answers of ``bot``, newest first (see the module docstring)."""
        bot_id = self.db.bot_id(bot)
        limit = max(1, min(int(limit), 1000))
        with self.db.session() as s:
            fixed = select(Fix.message_id).where(Fix.bot_id == bot_id, Fix.message_id.is_not(None))
            latest = (select(func.max(Feedback.id).label("id")).group_by(Feedback.message_id).subquery())
            rated = dict(s.execute(
                select(Feedback.message_id, Feedback.comment)
                .join(latest, latest.c.id == Feedback.id)
                .join(Conversation, Conversation.id == Feedback.conversation_id)
                .where(Conversation.bot_id == bot_id, Feedback.rating == -1)
            ).all())
            base = (select(Message).join(Conversation, Conversation.id == Message.conversation_id)
                    .where(Conversation.bot_id == bot_id, Message.role == "bot", Message.complete.is_(True),
                           Message.id.not_in(fixed)))
            # Over-fetch: requested hand-offs are dropped below.
            rows = s.scalars(
                base.where((Message.id.in_(list(rated))) | Message.decision.in_(("handoff", "clarify")))
                .order_by(Message.id.desc()).limit(limit * 3)
            ).all()
            out: list[BadAnswer] = []
            for m in rows:
                question = s.scalar(
                    select(Message.text).where(Message.conversation_id == m.conversation_id,
                                               Message.role == "user", Message.id < m.id)
                    .order_by(Message.id.desc()).limit(1)) or ""
                if m.id in rated:
                    kind, reason = "rated_down", rated[m.id] or "rated down"
                elif m.decision == "clarify":
                    kind, reason = "asked_back", "clarify"
                else:
                    reason = s.scalar(
                        select(Handoff.reason).where(Handoff.conversation_id == m.conversation_id,
                                                     Handoff.created_at >= m.created_at)
                        .order_by(Handoff.id).limit(1))
                    if reason is None:  # no hand-off row: an explicit request still is none of ours
                        reason = "requested" if wants_human(question) else "not_answered"
                    if reason != "not_answered" and reason not in NOT_ANSWERED:
                        continue
                    kind = "not_answered"
                out.append(BadAnswer(
                    kind=kind, conversation_id=m.conversation_id, message_id=m.id, question=question,
                    reply=m.text, reason=reason, decision=m.decision, sources=list(m.sources or []),
                    retrieved=self._retrieved(s, list(m.scores or [])[:retrieved]), created_at=_iso(m.created_at),
                ))
                if len(out) >= limit:
                    break
            return out

    @staticmethod
    def _retrieved(s, scores: list[dict]) -> list[dict]:
        ids = [int(x["chunk_id"]) for x in scores if "chunk_id" in x]
        chunks = {c.id: c for c in s.scalars(select(Chunk).where(Chunk.id.in_(ids)))} if ids else {}
        out = []
        for x in scores:
            c = chunks.get(int(x.get("chunk_id", -1)))
            out.append({
                "doc_id": x.get("doc_id", ""), "title": (c.heading if c is not None else "") or "",
                "text": (c.text[:400] if c is not None else "(no longer in the knowledge base)"),
                "score": x.get("score"), "confidence": x.get("confidence"),
            })
        return out

    def bad_answer(self, bot: str, message_id: int) -> BadAnswer:
        """One listed bad answer (``NotFound`` when the message is not one, or already fixed)."""
        for b in self.bad_answers(bot, limit=1000):
            if b.message_id == message_id:
                return b
        raise NotFound(f"message {message_id} is not an open bad answer of bot {bot!r}")

    # -- fixes ----------------------------------------------------------------------------------
    def write(self, bot: str, question: str, answer: str, *, message_id: int | None = None,
              created_by: str = "") -> dict:
        """The agent's right answer: an approved fix, published as a curated FAQ entry. With
        ``message_id`` (a listed bad answer) it records which reply it fixes."""
        question = _clean(question, MAX_QUESTION, "question")
        answer = _clean(answer, MAX_ANSWER, "answer")
        kind, conversation_id = "not_answered", None  # e.g. an unanswered question of the analytics page
        if message_id is not None:
            bad = self.bad_answer(bot, int(message_id))
            kind, conversation_id = bad.kind, bad.conversation_id
        fix_id = self._insert(bot, kind, question, answer, "draft", conversation_id, message_id, created_by)
        return self.approve(bot, fix_id, by=created_by)

    def _insert(self, bot: str, kind: str, question: str, answer: str, status: str,
                conversation_id: str | None, message_id: int | None, created_by: str) -> int:
        with self.db.session() as s:
            fix = Fix(bot_id=self.db.bot_id(bot), kind=kind, question=question, answer=answer, status=status,
                      conversation_id=conversation_id, message_id=message_id, created_by=created_by[:128])
            s.add(fix)
            s.flush()
            return fix.id

    def _row(self, s, bot: str, fix_id: int) -> Fix:
        fix = s.get(Fix, int(fix_id))
        if fix is None or fix.bot_id != self.db.bot_id(bot):
            raise NotFound(f"no fix {fix_id} in bot {bot!r}")
        return fix

    def get(self, bot: str, fix_id: int) -> dict:
        with self.db.session() as s:
            return self._dict(self._row(s, bot, fix_id))

    def approve(self, bot: str, fix_id: int, question: str | None = None, answer: str | None = None,
                by: str = "") -> dict:
        """Approve a fix (a draft, or an approved one edited): its curated entry is (re)published
        first, then the row is marked approved, so an approved fix always has its entry."""
        if self.knowledge is None:
            raise SupportbotError("publishing a fix needs the knowledge base")
        with self.db.session() as s:
            fix = self._row(s, bot, fix_id)
            q = _clean(question if question is not None else fix.question, MAX_QUESTION, "question")
            a = _clean(answer if answer is not None else fix.answer, MAX_ANSWER, "answer")
        report = self.knowledge.ingest_documents(bot, [curated_document(int(fix_id), q, a)])
        if report.errors:
            raise SupportbotError("the curated entry was not published: " + "; ".join(report.errors))
        external = curated_id(int(fix_id))
        with self.db.session() as s:
            fix = self._row(s, bot, fix_id)
            doc_id = s.scalar(select(Document.id).where(Document.bot_id == fix.bot_id,
                                                        Document.external_id == external))
            fix.question, fix.answer, fix.status, fix.document_id = q, a, "approved", doc_id
            fix.approved_at = utcnow()
            if by and not fix.created_by:
                fix.created_by = by[:128]
            s.flush()
            return self._dict(fix)

    def dismiss(self, bot: str, fix_id: int) -> dict:
        """Dismiss a draft, or withdraw an approved fix (its curated entry is deleted)."""
        with self.db.session() as s:
            fix = self._row(s, bot, fix_id)
            had_entry = fix.status == "approved"
        if had_entry and self.knowledge is not None:
            try:
                self.knowledge.delete(bot, curated_id(int(fix_id)))
            except NotFound:
                pass  # deleted from the documents page already
        with self.db.session() as s:
            fix = self._row(s, bot, fix_id)
            fix.status, fix.document_id = "dismissed", None
            s.flush()
            return self._dict(fix)

    def dismiss_bad_answer(self, bot: str, message_id: int, by: str = "") -> dict:
        """Take a bad answer off the list without writing an answer (a dismissed fix records it)."""
        bad = self.bad_answer(bot, int(message_id))
        fix_id = self._insert(bot, bad.kind, bad.question or "(no question)", "", "dismissed",
                              bad.conversation_id, bad.message_id, by)
        return self.get(bot, fix_id)

    def list(self, bot: str, status: str | None = None, limit: int = 500) -> list[dict]:
        if status is not None and status not in STATUSES:
            raise SupportbotError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        query = select(Fix).where(Fix.bot_id == self.db.bot_id(bot))
        if status is not None:
            query = query.where(Fix.status == status)
        with self.db.session() as s:
            rows = s.scalars(query.order_by(Fix.id.desc()).limit(max(1, min(int(limit), 5000)))).all()
            return [self._dict(f) for f in rows]

    @staticmethod
    def _dict(f: Fix) -> dict:
        return {"id": f.id, "kind": f.kind, "status": f.status, "question": f.question, "answer": f.answer,
                "conversation_id": f.conversation_id, "message_id": f.message_id,
                "document": curated_id(f.id) if f.document_id is not None else None,
                "created_by": f.created_by, "created_at": _iso(f.created_at), "approved_at": _iso(f.approved_at)}

    # -- drafts from resolved conversations -----------------------------------------------------
    def resolved_pairs(self, bot: str, limit: int = 500) -> list[dict]:
        """(question, agent's reply) pairs of resolved conversations not drafted yet: each run of
        ``human`` messages answers the visitor's last message before it that is not a request for
        a person (the question the hand-off was about)."""
        bot_id = self.db.bot_id(bot)
        with self.db.session() as s:
            fixed = select(Fix.message_id).where(Fix.bot_id == bot_id, Fix.message_id.is_not(None))
            done = set(s.scalars(fixed))
            # Oldest first: of two agents' answers to one question, the first is drafted.
            convs = s.scalars(
                select(Conversation.id).where(
                    Conversation.bot_id == bot_id, Conversation.status == "resolved",
                    select(Message.id).where(Message.conversation_id == Conversation.id, Message.role == "human",
                                             Message.id.not_in(fixed)).exists())
                .order_by(Conversation.updated_at, Conversation.id).limit(max(1, min(int(limit), 5000)))
            ).all()
            pairs = []
            for cid in convs:
                msgs = s.execute(select(Message.id, Message.role, Message.text)
                                 .where(Message.conversation_id == cid).order_by(Message.id)).all()
                question, i = "", 0
                while i < len(msgs):
                    mid, role, text = msgs[i]
                    if role == "user" and text.strip() and not wants_human(text):
                        question = text.strip()
                    if role != "human":
                        i += 1
                        continue
                    run = []
                    while i < len(msgs) and msgs[i].role == "human":
                        run.append(msgs[i])
                        i += 1
                    answer = "\n".join(m.text.strip() for m in run if m.text.strip())
                    if question and answer and run[0].id not in done:
                        pairs.append({"conversation_id": cid, "message_id": run[0].id,
                                      "question": question[:MAX_QUESTION], "answer": answer[:MAX_ANSWER]})
                    question = ""
            return pairs

    def known_questions(self, bot: str) -> list[tuple[str, str]]:
        """(question, where) of every FAQ entry of the bot (curated ones included) and every
        draft or approved fix: what a new draft must not repeat."""
        bot_id = self.db.bot_id(bot)
        out: list[tuple[str, str]] = []
        with self.db.session() as s:
            for text, meta, ext in s.execute(
                    select(Chunk.text, Chunk.meta, Document.external_id).join(Document, Document.id == Chunk.document_id)
                    .where(Chunk.bot_id == bot_id, Chunk.kind == "faq")):
                q = str((meta or {}).get("question") or "").strip() or text.strip().split("\n", 1)[0]
                if q:
                    out.append((q, ext))
            for fid, q in s.execute(select(Fix.id, Fix.question).where(
                    Fix.bot_id == bot_id, Fix.status.in_(("draft", "approved")))):
                out.append((q, f"fix {fid}"))
        return out

    def draft_from_resolved(self, bot: str, limit: int = 500) -> DraftReport:
        """Store a draft fix for each new pair of ``resolved_pairs`` whose question no FAQ entry,
        fix or earlier draft of this run covers (cosine >= ``duplicate_cosine``)."""
        if self.embedder is None:
            raise SupportbotError("drafting from conversations needs the embedder (to skip duplicates)")
        report = DraftReport()
        pairs = self.resolved_pairs(bot, limit)
        report.seen = len(pairs)
        if not pairs:
            return report
        known = self.known_questions(bot)
        known_vecs = self._embed([q for q, _ in known])
        for pair in pairs:
            vec = self._embed([pair["question"]])
            if len(known):
                sims = known_vecs @ vec[0]
                best = int(np.argmax(sims))
                if float(sims[best]) >= self.duplicate_cosine:
                    report.duplicates.append({"question": pair["question"], "of": known[best][1],
                                              "cosine": round(float(sims[best]), 3)})
                    # Recorded as dismissed so the same reply is not offered again.
                    self._insert(bot, "resolved", pair["question"], pair["answer"], "dismissed",
                                 pair["conversation_id"], pair["message_id"], "duplicate")
                    continue
            fix_id = self._insert(bot, "resolved", pair["question"], pair["answer"], "draft",
                                  pair["conversation_id"], pair["message_id"], "")
            report.drafted.append(fix_id)
            known.append((pair["question"], f"fix {fix_id}"))
            known_vecs = np.vstack([known_vecs, vec]) if len(known_vecs) else vec
        return report

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, int(getattr(self.embedder, "dim", 1))), dtype=np.float32)
        return np.asarray(self.embedder.embed(list(texts)), dtype=np.float32)

    # -- exports --------------------------------------------------------------------------------
    def regression_cases(self, bot: str) -> list[dict[str, Any]]:
        """Each approved fix as a regression case: the question, the answer a right reply holds,
        and the decision expected (answer)."""
        return [{"id": f"fix-{f['id']}", "fix_id": f["id"], "question": f["question"],
                 "expected_answer": f["answer"], "expected_decision": "answer"}
                for f in reversed(self.list(bot, status="approved", limit=5000))]

    def training_records(self, bot: str) -> list[dict[str, Any]]:
        """Each approved fix as a one-turn transcript (``training.importers`` format): the
        question, the agent's answer. Only the fix's own text: no visitor id, no email."""
        return [{"id": f"fix-{f['id']}", "turns": [{"role": "user", "text": f["question"]},
                                                   {"role": "agent", "text": f["answer"]}]}
                for f in reversed(self.list(bot, status="approved", limit=5000))]


__all__ = ["Fixes", "BadAnswer", "DraftReport", "KINDS", "STATUSES", "NOT_ANSWERED", "DUPLICATE_COSINE",
           "curated_document", "curated_id", "and_"]
