"""The knowledge base of each bot: documents and chunks in the database, published as index snapshots.

The database is the source of truth. Every write (ingest, delete, reindex) commits to the database
first and then publishes a fresh snapshot (dense FAISS index + BM25 + catalog) built from it, under a
per-bot file lock, so the index can always be rebuilt and never drifts from the rows.

The index is derived state. Each publish records in the database what the snapshot holds (its
version, and a digest of its chunk ids and embedding models); ``index_state`` compares that
record, the snapshot on disk and the chunks in the database, and ``ensure_index`` rebuilds the
index when they disagree: a lost or damaged index folder, or a process killed between the
database commit and the publish. The server checks at start; every ingest checks too, so an
ingest that finds every document unchanged still publishes when the index lacks them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from sqlalchemy import delete, func, or_, select
from tqdm.auto import tqdm

from bot.core.locks import exclusive
from bot.core.errors import IndexCorrupt, IngestError, NotFound, SupportbotError
from bot.core.settings import IndexSettings, IngestSettings
from bot.core.store import Database
from bot.core.store.models import Bot, Chunk, Document, IndexVersion
from retrieval.chunking import chunk_document
from retrieval.parsers import SUPPORTED_SUFFIXES, parse_bytes, parse_file
from retrieval.types import ChunkInfo, ChunkText, Embedder, ParsedDocument

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one message per bad file, naming it
    chunks: int = 0
    documents: int = 0
    removed: int = 0  # documents gone from a re-uploaded multi-document file
    seconds: float = 0.0
    version: int | None = None

    def merge(self, other: "IngestReport") -> None:
        for name in ("added", "replaced", "unchanged", "errors"):
            getattr(self, name).extend(getattr(other, name))
        self.chunks += other.chunks
        self.documents += other.documents
        self.removed += other.removed
        self.version = other.version if other.version is not None else self.version

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class IndexState:
    """Whether a bot's published index holds what its database holds, and if not, why."""

    in_sync: bool
    reason: str
    version: int  # the published version (0: none, -1: unreadable)
    chunks: int  # chunks in the database


class _Contents:
    """A digest of a bot's chunks as the index sees them: ids (new ones on every replace) and the
    embedding model of each (a re-embed changes it)."""

    def __init__(self):
        self._h = hashlib.sha256()
        self.count = 0

    def add(self, chunk_id: int, model: str | None) -> None:
        self._h.update(f"{int(chunk_id)}:{model or ''}\n".encode())
        self.count += 1

    @property
    def digest(self) -> str:
        return self._h.hexdigest()


def content_hash(doc: ParsedDocument) -> str:
    payload = {
        "title": doc.title,
        "source": doc.source,
        "metadata": doc.metadata,
        "sections": [[s.heading, s.kind, s.text, s.question, s.answer, s.metadata] for s in doc.sections],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def embedding_text(title: str, chunk: ChunkText) -> str:
    """What the dense index sees for a chunk: the title gives context the chunk text may lack."""
    if title and title.lower() not in chunk.text[: len(title) + 40].lower():
        return f"{title}\n{chunk.text}"
    return chunk.text


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, plus the supported files found under directories (sorted, recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES))
        else:
            out.append(p)
    return out


class KnowledgeBase:
    """Ingest, delete, list and re-index the documents of each bot."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        snapshots,
        ingest: IngestSettings,
        index: IndexSettings,
        lock_dir: Path,
    ):
        self.db = db
        self.embedder = embedder
        self.snapshots = snapshots
        self.ingest_settings = ingest
        self.index_settings = index
        self.lock_dir = Path(lock_dir)

    # ---- writes -------------------------------------------------------------------------
    def ingest(self, bot: str, paths: Sequence[Path], progress: bool = False) -> IngestReport:
        """Parse every file (bad ones are reported, not fatal), then store and index the rest."""
        report = IngestReport()
        docs: list[ParsedDocument] = []
        sources: set[str] = set()
        for path in tqdm(expand_paths(paths), desc="parsing", unit="file", disable=not progress):
            try:
                parsed = parse_file(path, self.ingest_settings)
            except IngestError as e:
                report.errors.append(e.message)
                continue
            docs.extend(parsed)
            sources.update(d.source for d in parsed if d.source)
        if docs:
            report.merge(self.ingest_documents(bot, docs, progress=progress, replace_sources=sources))
        return report

    def ingest_bytes(self, bot: str, name: str, data: bytes) -> IngestReport:
        """One uploaded file (the admin console). Raises IngestError for a bad file."""
        docs = parse_bytes(name, data, self.ingest_settings)
        return self.ingest_documents(bot, docs, replace_sources={d.source for d in docs if d.source})

    def ingest_documents(
        self,
        bot: str,
        docs: Sequence[ParsedDocument],
        progress: bool = False,
        replace_sources: set[str] = frozenset(),
    ) -> IngestReport:
        """Store and index ``docs``; unchanged ones (same id and content hash) are skipped.

        ``replace_sources``: files uploaded whole (a CSV FAQ, a JSONL knowledge base). Documents
        that came from one of them earlier and are missing from this upload are deleted, so a row
        removed from the file leaves the knowledge base too.
        """
        t0 = time.perf_counter()
        report = IngestReport(documents=len(docs))
        bot_id = self.db.bot_id(bot)
        docs = list({d.external_id: d for d in docs}.values())  # last one wins inside one batch
        hashes = {d.external_id: content_hash(d) for d in docs}
        with self.db.session() as s:
            existing = self._all_hashes(s, bot_id)
            stale_ids = (
                s.scalars(
                    select(Document.id).where(
                        Document.bot_id == bot_id,
                        Document.source.in_(sorted(replace_sources)),
                        Document.external_id.not_in(list(hashes)),
                    )
                ).all()
                if replace_sources
                else []
            )
        todo = [d for d in docs if existing.get(d.external_id) != hashes[d.external_id]]
        report.unchanged = [d.external_id for d in docs if existing.get(d.external_id) == hashes[d.external_id]]

        # Chunk and embed everything before touching the database: a failure here stores nothing.
        count = getattr(self.embedder, "count_tokens", None)
        planned: list[tuple[ParsedDocument, list[ChunkText]]] = []
        for d in todo:
            chunks = chunk_document(
                d, self.ingest_settings.chunk_tokens, self.ingest_settings.chunk_overlap, count
            )
            if not chunks:
                report.errors.append(f"{d.source or d.external_id}: no text to index")
                continue
            planned.append((d, chunks))
        texts = [embedding_text(d.title, c) for d, cs in planned for c in cs]
        vecs = self._embed(texts, progress)

        model_id = getattr(self.embedder, "model_id", type(self.embedder).__name__)
        i = 0
        if planned or stale_ids:
            with self.db.session() as s:
                for doc_id in stale_ids:
                    s.delete(s.get(Document, doc_id))
                    report.removed += 1
                for d, chunks in planned:
                    doc = s.scalar(
                        select(Document).where(
                            Document.bot_id == bot_id, Document.external_id == d.external_id
                        )
                    )
                    if doc is None:
                        doc = Document(bot_id=bot_id, external_id=d.external_id)
                        s.add(doc)
                        report.added.append(d.external_id)
                    else:
                        s.execute(delete(Chunk).where(Chunk.document_id == doc.id))
                        report.replaced.append(d.external_id)
                    doc.title, doc.source, doc.mime = d.title, d.source, d.mime
                    doc.content_hash, doc.meta = hashes[d.external_id], d.metadata
                    s.flush()
                    for c in chunks:
                        s.add(
                            Chunk(
                                document_id=doc.id, bot_id=bot_id, ordinal=c.ordinal, kind=c.kind,
                                heading=c.heading, text=c.text, meta=c.metadata,
                                embedding=vecs[i].tobytes(), embedding_model=model_id,
                            )
                        )
                        i += 1
            report.chunks = i
            report.version = self.publish(bot, progress=progress)
        else:
            # Nothing new to store, but the index may still lack what the database holds (an
            # earlier ingest died between its commit and its publish): mend it now.
            state = self.index_state(bot)
            if not state.in_sync:
                log.warning("index of bot %r is out of date (%s): rebuilding it from the database",
                            bot, state.reason)
                report.version = self.reindex(bot, progress=progress, only_if_stale=True)
        report.seconds = time.perf_counter() - t0
        return report

    def delete(self, bot: str, external_id: str) -> None:
        bot_id = self.db.bot_id(bot)
        with self.db.session() as s:
            doc = s.scalar(
                select(Document).where(Document.bot_id == bot_id, Document.external_id == external_id)
            )
            if doc is None:
                raise NotFound(f"no document {external_id!r} in bot {bot!r}")
            s.delete(doc)  # chunks go with it (cascade)
        self.publish(bot)

    def reindex(self, bot: str, progress: bool = False, only_if_stale: bool = False) -> int | None:
        """Re-embed chunks whose embedding is missing or from another model, then rebuild the index.

        ``only_if_stale``: publish only when the index still disagrees with the database once the
        lock is held (another process may have just rebuilt it); None when nothing was published.
        """
        bot_id = self.db.bot_id(bot)
        model_id = getattr(self.embedder, "model_id", type(self.embedder).__name__)
        with self.db.session() as s:
            stale = s.execute(
                select(Chunk.id, Chunk.text, Document.title)
                .join(Document)
                .where(
                    Chunk.bot_id == bot_id,
                    or_(Chunk.embedding.is_(None), Chunk.embedding_model != model_id),
                )
            ).all()
        if stale:
            vecs = self._embed(
                [embedding_text(title, ChunkText(text=text, ordinal=0)) for _, text, title in stale],
                progress,
            )
            with self.db.session() as s:
                for (cid, _, _), v in zip(stale, vecs):
                    s.get(Chunk, cid).embedding = v.tobytes()
                    s.get(Chunk, cid).embedding_model = model_id
        return self.publish(bot, progress=progress, only_if_stale=only_if_stale)

    def ensure_index(self, bot: str, progress: bool = False) -> int | None:
        """Rebuild the bot's index from the database when it does not hold what the database
        holds (see ``index_state``); the new version, or None when it was in sync."""
        state = self.index_state(bot)
        if state.in_sync:
            return None
        log.warning("index of bot %r is out of date (%s): rebuilding it from the database (%d chunks)",
                    bot, state.reason, state.chunks)
        version = self.reindex(bot, progress=progress, only_if_stale=True)
        if version is not None:
            log.warning("index of bot %r rebuilt: version %d", bot, version)
        return version

    def index_state(self, bot: str) -> IndexState:
        """Compare the database's chunks, the record of the last publish and the snapshot on disk."""
        bot_id = self.db.bot_id(bot)
        model_id = getattr(self.embedder, "model_id", type(self.embedder).__name__)
        contents, other_model = _Contents(), 0
        with self.db.session() as s:
            for cid, emb_model, missing in s.execute(
                select(Chunk.id, Chunk.embedding_model, Chunk.embedding.is_(None))
                .where(Chunk.bot_id == bot_id).order_by(Chunk.id)
            ):
                contents.add(cid, emb_model)
                other_model += bool(missing) or emb_model != model_id
            row = s.get(IndexVersion, bot_id)
            recorded = (row.version, row.contents, row.chunks) if row is not None else None
        n = contents.count
        try:
            current = self.snapshots.latest_version(bot)
        except IndexCorrupt as exc:
            return IndexState(False, f"the CURRENT pointer is unreadable ({exc.message})", -1, n)

        def stale(reason: str) -> IndexState:
            return IndexState(False, reason, current, n)

        if current <= 0:
            if n == 0:
                return IndexState(True, "empty", 0, 0)
            return stale("no index is published")
        if other_model:
            return stale(f"{other_model} chunks lack an embedding by {model_id}")
        if recorded is None:
            return stale("no record of the published index in the database")
        version, digest, chunks = recorded
        if version != current:
            return stale(f"index v{current} is current, the database records v{version}")
        if digest != contents.digest or chunks != n:
            return stale("the database's chunks differ from the published index")
        manifest = self.snapshots.manifest(bot, current)
        if manifest is None:
            return stale(f"snapshot v{current} is missing or unfinished")
        if manifest.get("chunks") != n or manifest.get("embedder_id") != model_id:
            return stale(f"snapshot v{current} holds {manifest.get('chunks')} chunks by "
                         f"{manifest.get('embedder_id')!r}, the database {n} by {model_id!r}")
        return IndexState(True, "in sync", current, n)

    def bots(self) -> list[str]:
        """Every bot of the database, by name."""
        with self.db.session() as s:
            return list(s.scalars(select(Bot.name).order_by(Bot.name)))

    # ---- reads --------------------------------------------------------------------------
    def documents(self, bot: str, query: str | None = None, limit: int = 1000) -> list[dict]:
        bot_id = self.db.bot_id(bot)
        with self.db.session() as s:
            q = (
                select(Document, func.count(Chunk.id))
                .outerjoin(Chunk)
                .where(Document.bot_id == bot_id)
                .group_by(Document.id)
                .order_by(Document.external_id)
                .limit(limit)
            )
            if query:
                like = f"%{query}%"
                q = q.where(or_(Document.title.ilike(like), Document.external_id.ilike(like)))
            return [
                {
                    "id": d.external_id, "title": d.title, "source": d.source, "mime": d.mime,
                    "chunks": n, "hash": d.content_hash[:12],
                    "updated_at": d.updated_at.isoformat(timespec="seconds"),
                }
                for d, n in s.execute(q).all()
            ]

    def count(self, bot: str) -> int:
        bot_id = self.db.bot_id(bot)
        with self.db.session() as s:
            return s.scalar(select(func.count(Document.id)).where(Document.bot_id == bot_id)) or 0

    # ---- index publishing ---------------------------------------------------------------
    def publish(self, bot: str, progress: bool = False, only_if_stale: bool = False) -> int | None:
        """Build a snapshot of the bot's chunks from the database and publish it atomically, and
        record what it holds. ``only_if_stale``: None, publishing nothing, when the index already
        holds what the database holds once the lock is held."""
        from retrieval.bm25_index import BM25Index
        from retrieval.faiss_index import FaissIndex
        from retrieval.snapshot import Snapshot

        bot_id = self.db.bot_id(bot)
        with exclusive(self.lock_dir / f"{bot}.lock"):
            if only_if_stale and self.index_state(bot).in_sync:
                return None
            contents = _Contents()
            catalog: dict[int, ChunkInfo] = {}
            ids: list[int] = []
            vecs: list[np.ndarray] = []
            with self.db.session() as s:
                rows = s.execute(
                    select(Chunk, Document.external_id, Document.title, Document.source, Document.meta)
                    .join(Document)
                    .where(Chunk.bot_id == bot_id)
                    .order_by(Chunk.id)
                ).all()
                for c, ext_id, title, source, doc_meta in rows:
                    if c.embedding is None:
                        raise SupportbotError(f"chunk {c.id} has no embedding: run `supportbot reindex`")
                    contents.add(c.id, c.embedding_model)
                    catalog[c.id] = ChunkInfo(
                        chunk_id=c.id, doc_id=ext_id, title=title, text=c.text, source=source,
                        kind=c.kind, metadata={**(doc_meta or {}), **(c.meta or {}), "heading": c.heading},
                    )
                    ids.append(c.id)
                    vecs.append(np.frombuffer(c.embedding, dtype=np.float32))
            dim = self.embedder.dim
            dense = FaissIndex(dim, self.index_settings)
            if ids:
                dense.add(np.asarray(ids, dtype=np.int64), np.vstack(vecs).astype(np.float32))
            lexical = BM25Index()
            lexical.build(ids, [self._lexical_text(catalog[i]) for i in ids])
            model_id = getattr(self.embedder, "model_id", type(self.embedder).__name__)
            snap = Snapshot(dense=dense, lexical=lexical, catalog=catalog, version=0, embedder_id=model_id)
            version = self.snapshots.publish(bot, snap)
            with self.db.session() as s:
                row = s.get(IndexVersion, bot_id)
                if row is None:
                    row = IndexVersion(bot_id=bot_id, version=version)
                    s.add(row)
                row.version, row.contents, row.chunks = version, contents.digest, contents.count
            return version

    # ---- internals ----------------------------------------------------------------------
    @staticmethod
    def _lexical_text(info: ChunkInfo) -> str:
        return f"{info.title}\n{info.text}" if info.title else info.text

    @staticmethod
    def _all_hashes(s, bot_id: int) -> dict[str, str]:
        return dict(
            s.execute(
                select(Document.external_id, Document.content_hash).where(Document.bot_id == bot_id)
            ).all()
        )

    def _embed(self, texts: list[str], progress: bool) -> np.ndarray:
        dim = self.embedder.dim
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        step = 256
        out = []
        with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=not progress) as bar:
            for i in range(0, len(texts), step):
                out.append(np.asarray(self.embedder.embed(texts[i : i + step]), dtype=np.float32))
                bar.update(len(texts[i : i + step]))
        return np.vstack(out)
