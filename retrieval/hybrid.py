"""Hybrid retriever: dense + BM25 candidates, entity- and conversation-aware, ranked by a small
learned model, with a calibrated confidence.

One ``search`` (see ``retrieval.types.Retriever``):

1. the snapshot in use now (one bot's; another bot's passages are never in it);
2. filters -> the allowed chunk ids (metadata keys or ``doc_id``);
3. the entity the conversation is about (``EntityMatcher`` over earlier turns + the query);
4. candidates: dense top-N and BM25 top-N, over everything and within the entity;
5. features per candidate (``FEATURES``) -> ``FusionModel`` -> P(relevant) and ranking;
6. ``Hit.confidence``: the top hit's calibrated P(relevant), from query-level features, so it is
   low for out-of-scope questions; lower hits get it scaled by their relevance relative to the top.

The conversation enters twice, both without embedding anything but the query: the entity (any
turn, user or agent, most recent mention wins) and the BM25 match of the last ``history_turns``
turns (``lexical_ctx``). A dense context vector (mean embedding of recent turns) was measured too:
it did not help on DSTC11 dev and cost an embedding per new turn (bench/tune_fusion.py ablation).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from bot.core.settings import RetrievalSettings
from retrieval.entities import EntityMatcher, entity_of
from retrieval.fusion import FEATURES, FusionModel
from retrieval.types import ChunkInfo, Embedder, Hit, Turn


class SnapshotView:
    """What the retriever precomputes once per snapshot: ids, entities, FAQ groups, filters."""

    def __init__(self, snapshot: Any):
        self.snapshot = snapshot
        catalog: dict[int, ChunkInfo] = snapshot.catalog
        self.ids = np.fromiter(catalog.keys(), dtype=np.int64, count=len(catalog))
        self.row = {int(i): n for n, i in enumerate(self.ids)}
        infos = [catalog[int(i)] for i in self.ids]
        by_entity: dict[str, list[int]] = {}
        texts: dict[str, list[str]] = {}
        from_title: set[str] = set()
        for cid, info in zip(self.ids, infos):
            name, explicit = entity_of(info.metadata, info.title)
            if name:
                by_entity.setdefault(name, []).append(int(cid))
                texts.setdefault(name, []).append(info.text)
                if not explicit:
                    from_title.add(name)
        # A name that every chunk shares tells nothing apart: entity awareness is off then.
        if len(by_entity) < 2:
            by_entity, texts = {}, {}
        self.entity_ids = {n: np.asarray(v, dtype=np.int64) for n, v in by_entity.items()}
        self.matcher = (
            EntityMatcher(list(by_entity), texts, exact_only=from_title & set(by_entity)) if by_entity else None
        )
        self.is_faq = np.array([c.kind == "faq" for c in infos], dtype=bool)
        # Answers to the same FAQ question (same title and question) form a group; its members
        # are scored together (mean dense score), which ranks a thread by all its answers.
        groups: dict[tuple[str, str], list[int]] = {}
        for r, info in enumerate(infos):
            question = str(info.metadata.get("question") or "").strip().lower()
            if info.kind == "faq" and question:
                groups.setdefault((info.title.strip().lower(), question), []).append(r)
        self.group = np.arange(len(self.ids), dtype=np.int64)  # row -> group id (first row)
        self.siblings: dict[int, np.ndarray] = {}  # group id -> member chunk ids (groups of 2+)
        for rows in groups.values():
            if len(rows) > 1:
                self.group[rows] = rows[0]
                self.siblings[rows[0]] = self.ids[rows]
        self._infos = infos
        self._filter_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def allowed(self, filters: dict[str, Any] | None) -> np.ndarray | None:
        """Chunk ids passing ``filters`` (None when there are none). A filter value that is a
        list or tuple matches any of its items; ``doc_id`` matches the document's external id."""
        if not filters:
            return None
        key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple, set)) else (v,)) for k, v in filters.items()))
        with self._lock:
            hit = self._filter_cache.get(key)
        if hit is not None:
            return hit
        wanted = [(k, {str(x) for x in vals}) for k, vals in key]

        def ok(info: ChunkInfo) -> bool:
            for k, vals in wanted:
                v = info.doc_id if k == "doc_id" else info.metadata.get(k)
                if v is None or (str(v) not in vals and not (isinstance(v, list) and vals & {str(x) for x in v})):
                    return False
            return True

        ids = np.asarray([i for i, info in zip(self.ids, self._infos) if ok(info)], dtype=np.int64)
        with self._lock:
            self._filter_cache[key] = ids
            if len(self._filter_cache) > 256:
                self._filter_cache.popitem(last=False)
        return ids


@dataclass
class Candidates:
    """Candidate chunks of one query: ids (n,), features ``X`` (n, len(FEATURES)) and the
    entity (or ambiguous group) the conversation is about, ``()`` when none."""

    ids: np.ndarray
    X: np.ndarray
    entity: tuple[str, ...]


class HybridRetriever:
    """``Retriever`` over the snapshot ``snapshot_provider()`` returns (None: nothing indexed).

    ``model`` is the fusion model; by default the one fitted by ``bench/tune_fusion.py`` and
    shipped as ``retrieval/fusion.json``. Safe to share between threads.
    """

    def __init__(
        self,
        embedder: Embedder,
        snapshot_provider: Callable[[], Any],
        settings: RetrievalSettings,
        model: FusionModel | None = None,
    ):
        self.embedder = embedder
        self.snapshot_provider = snapshot_provider
        self.settings = settings
        self.model = model or FusionModel.load(settings.fusion_model or None)
        self._view: SnapshotView | None = None
        self._view_lock = threading.Lock()

    # ---- public -------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 5,
        filters: dict[str, Any] | None = None,
        turns: Sequence[Turn] = (),
    ) -> list[Hit]:
        view = self.view()
        if view is None or not query.strip() or k <= 0:
            return []
        cands = self.candidates(query, filters, turns, view)
        if cands is None or not len(cands.ids):
            return []
        logits = self.model.score(cands.X)
        order = np.argsort(-logits, kind="stable")[:k]
        top = order[0]
        conf_top = self.model.confidence(cands.X[top])
        p = 1.0 / (1.0 + np.exp(-logits[order]))
        catalog = view.snapshot.catalog
        in_entity = cands.X[:, FEATURES.index("entity")] > 0
        hits = []
        for rank, (row, p_row) in enumerate(zip(order, p)):
            info = catalog[int(cands.ids[row])]
            conf = conf_top if rank == 0 else conf_top * float(p_row / p[0])
            hits.append(
                Hit(
                    chunk_id=info.chunk_id, doc_id=info.doc_id, title=info.title, text=info.text,
                    score=float(logits[row]), confidence=float(min(max(conf, 0.0), 1.0)),
                    source=info.source, metadata=info.metadata, in_entity=bool(in_entity[row]),
                )
            )
        return hits

    def view(self) -> SnapshotView | None:
        """The precomputed view of the current snapshot (rebuilt when the snapshot changes)."""
        snap = self.snapshot_provider()
        if snap is None or not snap.catalog:
            return None
        view = self._view
        if view is not None and view.snapshot is snap:
            return view
        with self._view_lock:
            if self._view is None or self._view.snapshot is not snap:
                self._view = SnapshotView(snap)
            return self._view

    # ---- candidates and features --------------------------------------------------------
    def candidates(
        self,
        query: str,
        filters: dict[str, Any] | None = None,
        turns: Sequence[Turn] = (),
        view: SnapshotView | None = None,
    ) -> Candidates | None:
        """Candidates and features for one query (the tuning script fits the model on these)."""
        view = view or self.view()
        if view is None:
            return None
        snap = view.snapshot
        allowed = view.allowed(filters)
        if allowed is not None and not len(allowed):
            return Candidates(np.zeros(0, np.int64), np.zeros((0, len(FEATURES)), np.float32), ())
        texts = [t.get("text", "") for t in turns if t.get("text")]
        entity: tuple[str, ...] = view.matcher.current(texts + [query]) if view.matcher else ()
        ent_ids = np.concatenate([view.entity_ids[n] for n in entity]) if entity else None
        if ent_ids is not None and allowed is not None:
            ent_ids = np.intersect1d(ent_ids, allowed)
        if ent_ids is not None and not len(ent_ids):
            ent_ids = None

        recent = texts[-self.settings.history_turns:] if self.settings.history_turns > 0 else []
        qv = self.embedder.embed([query])  # (1, d)

        n = self.settings.fusion_candidates
        pool: list[np.ndarray] = []
        _, ids = snap.dense.search(qv, n, allowed_ids=allowed)
        pool.append(ids[0])
        if ent_ids is not None:
            _, ids = snap.dense.search(qv, n, allowed_ids=ent_ids)
            pool.append(ids[0])
        lex_all = np.zeros(len(view.ids), dtype=np.float32)
        lex_ctx_all = lex_all
        lexical = snap.lexical
        if lexical is not None and len(lexical):
            raw, best = lexical.scores_all(query)
            if best > 0:
                lex_all = _align(raw / best, lexical.ids, view)
                pool.append(_top_rows(lex_all, view, n, allowed))
                if ent_ids is not None:
                    pool.append(_top_rows(lex_all, view, n, ent_ids))
            if recent:
                raw, best = lexical.scores_all(" ".join(recent))
                if best > 0:
                    lex_ctx_all = _align(raw / best, lexical.ids, view)
        cand = np.unique(np.concatenate(pool))
        cand = cand[cand >= 0]
        if not len(cand):
            return Candidates(cand, np.zeros((0, len(FEATURES)), np.float32), entity)
        if view.siblings:
            groups = {int(view.group[view.row[int(i)]]) for i in cand}
            extra = [view.siblings[g] for g in groups if g in view.siblings]
            if extra:
                cand = np.unique(np.concatenate([cand, *extra]))
                if allowed is not None:
                    cand = np.intersect1d(cand, allowed)
        # Exact dense scores of every candidate (some came from BM25 only).
        s, ids = snap.dense.search(qv, len(cand), allowed_ids=cand)
        dense = _scores_for(cand, ids[0], s[0])
        rows = np.fromiter((view.row[int(i)] for i in cand), dtype=np.int64, count=len(cand))
        lex = lex_all[rows]
        lex_ctx = lex_ctx_all[rows]
        in_entity = (
            np.isin(cand, ent_ids).astype(np.float32) if ent_ids is not None else np.zeros(len(cand), np.float32)
        )
        group = view.group[rows]
        _, inverse = np.unique(group, return_inverse=True)
        dense_group = (np.bincount(inverse, weights=dense) / np.bincount(inverse))[inverse]
        feats = {
            "dense": dense,
            "dense_group": dense_group,
            "dense_gap": dense - dense.max(),
            "lexical": lex,
            "lexical_gap": lex - lex.max(),
            "lexical_ctx": lex_ctx,
            "entity": in_entity,
            "entity_found": np.full(len(cand), float(ent_ids is not None), np.float32),
            "faq": view.is_faq[rows].astype(np.float32),
            "has_context": np.full(len(cand), float(bool(recent)), np.float32),
        }
        X = np.stack([feats[f] for f in FEATURES], axis=1).astype(np.float32)
        return Candidates(cand, X, entity)


def _align(scores: np.ndarray, lex_ids: np.ndarray, view: SnapshotView) -> np.ndarray:
    """Lexical scores (aligned with the BM25 index's ids) re-aligned to the view's rows."""
    if len(lex_ids) == len(view.ids) and np.array_equal(lex_ids, view.ids):
        return scores.astype(np.float32)
    out = np.zeros(len(view.ids), dtype=np.float32)
    for i, s in zip(lex_ids, scores):
        r = view.row.get(int(i))
        if r is not None:
            out[r] = s
    return out


def _top_rows(scores: np.ndarray, view: SnapshotView, n: int, subset: np.ndarray | None) -> np.ndarray:
    """Chunk ids of the ``n`` best positive ``scores`` (view-aligned), within ``subset`` ids."""
    if subset is not None:
        rows = np.fromiter((view.row[int(i)] for i in subset if int(i) in view.row), dtype=np.int64)
    else:
        rows = np.flatnonzero(scores > 0)
    rows = rows[scores[rows] > 0]
    if len(rows) > n:
        rows = rows[np.argpartition(-scores[rows], n - 1)[:n]]
    return view.ids[rows]


def _scores_for(cand: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    m = dict(zip(ids.tolist(), scores.tolist()))
    return np.asarray([m.get(int(i), 0.0) for i in cand], dtype=np.float32)
