"""Data types and interfaces shared by the retrieval components.

Interfaces are ``typing.Protocol``s with one main verb each; contract tests in ``tests/`` run
against every implementation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


def question_key(text: str) -> str:
    """``text``'s words, lowercased, punctuation and spacing folded: two texts with one key ask the
    same question ("How do I reset my password?" / "how do i reset my password")."""
    return re.sub(r"\W+", " ", text.lower()).strip()


@dataclass
class Section:
    """One piece of a parsed document before chunking.

    ``kind == "faq"`` marks a question/answer pair that is kept whole (never split).
    """

    text: str
    heading: str = ""
    kind: str = "text"  # "text" | "faq"
    question: str = ""
    answer: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParsedDocument:
    """A document as read from a file or a JSONL knowledge-base line.

    ``external_id`` is stable: the id given in the source (JSONL ``id``, CSV ``id`` column) or
    derived from the file name, so re-uploading the same file replaces its chunks.
    """

    external_id: str
    title: str
    sections: list[Section]
    source: str = ""  # file name or URL shown to visitors
    mime: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChunkText:
    """A chunk ready to be stored and embedded."""

    text: str
    ordinal: int
    heading: str = ""
    kind: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChunkInfo:
    """What the retriever knows about a stored chunk (kept in memory in the index snapshot)."""

    chunk_id: int
    doc_id: str  # the document's external id
    title: str
    text: str
    source: str = ""
    kind: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    """One search result. ``confidence`` is calibrated in [0, 1]; ``score`` is the raw fused score."""

    chunk_id: int
    doc_id: str
    title: str
    text: str
    score: float
    confidence: float
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # The passage is about the entity the conversation names (the retriever's entity matcher);
    # False when it names none or the knowledge base has no entities.
    in_entity: bool = False

    @property
    def entity(self) -> str:
        """The entity the passage is about, as written: ``metadata["entity_name"]``, else the
        title, else the document id."""
        return str((self.metadata or {}).get("entity_name") or self.title or self.doc_id).strip()

    @property
    def entity_key(self) -> str:
        """``entity`` lowercased, for comparing the entities of two passages."""
        return self.entity.lower()

    @property
    def doc_type(self) -> str:
        """``metadata["doc_type"]`` (``faq``, ``review``, ...) or ``""``."""
        return str((self.metadata or {}).get("doc_type") or "")

    @property
    def question(self) -> str:
        """The FAQ question of an FAQ entry (``metadata["question"]``), else ``""``."""
        return str((self.metadata or {}).get("question") or "").strip()

    @property
    def faq_answer(self) -> str | None:
        """The answer part of an FAQ entry, or ``None`` when the passage is not one:
        ``metadata["answer"]``, else for a chunk marked FAQ (``kind`` / ``doc_type``) the text
        after its question line."""
        meta = self.metadata or {}
        answer = str(meta.get("answer") or "").strip()
        if answer:
            return answer
        if meta.get("kind") != "faq" and meta.get("doc_type") != "faq":
            return None
        _question, _, rest = str(self.text or "").strip().partition("\n")
        return rest.strip() or None

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "title": self.title,
            "text": self.text,
            "score": round(float(self.score), 6),
            "confidence": round(float(self.confidence), 6),
            "source": self.source,
            "metadata": self.metadata,
        }


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 (n, dim), each row L2-normalised."""


@runtime_checkable
class VectorIndex(Protocol):
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores (n, k) float32, ids (n, k) int64); missing slots have id -1."""

    def __len__(self) -> int: ...


Turn = dict  # {"role": "user" | "agent" | "bot" | "human", "text": str}


@runtime_checkable
class Retriever(Protocol):
    def search(
        self,
        query: str,
        k: int = 5,
        filters: dict[str, Any] | None = None,
        turns: Sequence[Turn] = (),
    ) -> list[Hit]:
        """Rank chunks for ``query`` (the last user message) in the conversation ``turns``.

        ``turns`` are the earlier turns (oldest first), without the query itself.
        ``filters`` match chunk metadata keys (``{"domain": "hotel"}``) or ``doc_id``.
        """
