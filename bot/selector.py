"""Learned knowledge selection: which retrieved passages an answer should be grounded in.

The rule in ``bot.policy.select_sources`` keeps passages near the top score; it cannot tell a
review sentence about the asked aspect ("are the bathrooms clean?") from a neighbour about
something else. ``LearnedSelector`` scores each candidate with a small MLP over the question and
passage embeddings (the retriever's own embedder) and a few ranking features, trained on
dialogues with gold knowledge by ``bench/train_selector.py``:

    x = [q * s, |q - s|, cos, top_cos - cos, rank / K, z-score of cos, is_faq, same entity as top]
    P(grounds the answer) = sigmoid(w2 . relu(W1 x + b1) + b2)          # (d*2 + 6) -> h -> 1

Weights live in an ``.npz`` with a JSON header naming the embedder they were trained with; a
selector never runs on another embedder's vectors. Inference is NumPy only.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from bot.core.errors import ConfigError
from retrieval.types import Hit

BUNDLED = {"dstc11": Path(__file__).with_name("selectors") / "dstc11-minilm.npz"}
FEATURE_VERSION = 1
N_SCALAR = 6


def _entity(hit: Hit) -> str:
    meta = hit.metadata or {}
    return str(meta.get("entity_name") or hit.title or "").strip().lower()


def features(qvec: np.ndarray, hvecs: np.ndarray, hits: Sequence[Hit], k: int) -> np.ndarray:
    """(n, 2d + N_SCALAR) float32 features of ``hits`` (in the retriever's order) for one query.

    ``qvec`` (d,) and ``hvecs`` (n, d) are L2-normalised embeddings.
    """
    cos = hvecs @ qvec  # (n,)
    top = float(cos.max()) if len(cos) else 0.0
    z = (cos - cos.mean()) / (cos.std() + 1e-6)
    top_entity = _entity(hits[0]) if hits else ""
    scalars = np.stack(
        [
            cos,
            top - cos,
            np.arange(len(hits), dtype=np.float32) / max(k, 1),
            z,
            np.array([(h.metadata or {}).get("doc_type") == "faq" for h in hits], dtype=np.float32),
            np.array([_entity(h) == top_entity for h in hits], dtype=np.float32),
        ],
        axis=1,
    )
    return np.hstack([hvecs * qvec, np.abs(hvecs - qvec), scalars]).astype(np.float32)


class LearnedSelector:
    """``select(message, hits, max_sources)``: the passages with P >= threshold (always the best one)."""

    def __init__(self, embedder, weights: dict[str, np.ndarray], meta: dict, stored_vectors=None):
        self.embedder = embedder
        # chunk ids -> (n, d) stored passage vectors, or None (then the texts are embedded)
        self.stored_vectors = stored_vectors
        self.w1, self.b1 = weights["w1"], weights["b1"]  # (in, h), (h,)
        self.w2, self.b2 = weights["w2"], weights["b2"]  # (h,), ()
        self.meta = meta
        self.threshold = float(meta["threshold"])
        self.k = int(meta["k"])
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # passage text -> vector
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, embedder) -> "LearnedSelector":
        path = BUNDLED.get(name_or_path) or Path(name_or_path).expanduser()
        try:
            with np.load(path, allow_pickle=False) as data:
                weights = {k: data[k] for k in ("w1", "b1", "w2", "b2")}
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"dialogue.selector={name_or_path!r}: cannot read {path}: {exc}") from exc
        if meta.get("feature_version") != FEATURE_VERSION:
            raise ConfigError(f"{path}: selector features v{meta.get('feature_version')}, expected v{FEATURE_VERSION}")
        have = getattr(embedder, "model_id", None)
        if embedder is None or have != meta.get("embedder"):
            raise ConfigError(
                f"{path}: selector trained on embedder {meta.get('embedder')!r}, the retriever uses {have!r}"
            )
        return cls(embedder, weights, meta)

    def _vectors(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        new = self.embedder.embed(missing) if missing else np.zeros((0, 0), np.float32)
        with self._lock:
            for t, v in zip(missing, new):
                self._cache[t] = v
                if len(self._cache) > 20000:
                    self._cache.popitem(last=False)
            return np.vstack([self._cache[t] for t in texts]).astype(np.float32)

    def probabilities(self, message: str, hits: Sequence[Hit]) -> np.ndarray:
        if not hits:
            return np.zeros(0, np.float32)
        qvec = self.embedder.embed([message])[0]
        hvecs = self.stored_vectors([h.chunk_id for h in hits]) if self.stored_vectors else None
        if hvecs is None:
            hvecs = self._vectors([h.text for h in hits])
        x = features(qvec, hvecs, hits, self.k)
        h = np.maximum(x @ self.w1 + self.b1, 0.0)  # (n, hidden)
        return 1.0 / (1.0 + np.exp(-(h @ self.w2 + self.b2)))

    def select(self, message: str, hits: Sequence[Hit], max_sources: int) -> list[Hit]:
        hits = list(hits)[: self.k]
        if not hits:
            return []
        p = self.probabilities(message, hits)
        order = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= self.threshold]
        if not order:
            order = [int(np.argmax(p))]
        order = order[:max_sources]
        # Keep the retriever's order among the chosen: the best-ranked passage stays [1].
        return [hits[i] for i in sorted(order)]


class SnapshotVectors:
    """Passage vectors stored in the retriever's current index snapshot, by chunk id, so the
    selector does not embed passages again. Returns None when a chunk is not there."""

    def __init__(self, retriever):
        self.retriever = retriever
        self._snapshot = None
        self._rows: dict[int, int] = {}
        self._vecs = np.zeros((0, 0), np.float32)
        self._lock = threading.Lock()

    def __call__(self, chunk_ids: Sequence[int]) -> np.ndarray | None:
        view = self.retriever.view() if hasattr(self.retriever, "view") else None
        snap = getattr(view, "snapshot", None)
        dense = getattr(snap, "dense", None)
        if dense is None or not hasattr(dense, "vectors"):
            return None
        with self._lock:
            if snap is not self._snapshot:
                ids, vecs = dense.vectors()
                self._rows = {int(i): r for r, i in enumerate(ids)}
                self._vecs, self._snapshot = vecs.astype(np.float32), snap
            rows = [self._rows.get(int(i)) for i in chunk_ids]
            if any(r is None for r in rows):
                return None
            return self._vecs[rows]


def load_selector(name: str, embedder, threads: int = 1):
    """The selector named by ``dialogue.selector``: ``""`` none (the rule); ``"auto"`` the bundled
    MLP when it was trained for this embedder, else none; a bundled name (``dstc11``,
    ``dstc11-cross``) or a path: a folder is a cross selector (``bot/cross_selector.py``), a file
    an MLP ``.npz`` (strict: a wrong embedder or a broken file is a ConfigError).

    ``auto`` does not pick the cross-encoder: it was trained on DSTC11 (hotel and restaurant
    reviews), and its knowledge-turn detector asked back on 27 of 34 in-scope questions about the
    sample FAQ (the MLP: 8), at ~1 s per answered question on one thread. It is the choice for
    DSTC11-like knowledge bases (dev selection F1 0.846 against 0.547 for the MLP)."""
    from bot.cross_selector import BUNDLED_CROSS, CrossSelector

    if not name:
        return None
    if name == "auto":
        path = BUNDLED["dstc11"]
        if embedder is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                trained_for = json.loads(str(data["meta"])).get("embedder")
        except (OSError, KeyError, ValueError):
            return None
        if trained_for != getattr(embedder, "model_id", None):
            return None
        name = "dstc11"
    cross = BUNDLED_CROSS.get(name)
    if cross is not None or (name not in BUNDLED and Path(name).expanduser().is_dir()):
        return CrossSelector.load(cross or name, threads=threads, embedder=embedder)
    return LearnedSelector.load(name, embedder)
