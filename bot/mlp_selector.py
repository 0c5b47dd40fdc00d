"""The MLP knowledge selector: which retrieved passages an answer should be grounded in.

The rule (``bot.selection.RuleSelector``) keeps passages near the top score; it cannot tell a
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
from bot.selection import Selection
from retrieval.types import Hit

BUNDLED = {"dstc11": Path(__file__).with_name("selectors") / "dstc11-minilm.npz"}
FEATURE_VERSION = 1
N_SCALAR = 6


def features(qvec: np.ndarray, hvecs: np.ndarray, hits: Sequence[Hit], k: int) -> np.ndarray:
    """(n, 2d + N_SCALAR) float32 features of ``hits`` (in the retriever's order) for one query.

    ``qvec`` (d,) and ``hvecs`` (n, d) are L2-normalised embeddings.
    """
    cos = hvecs @ qvec  # (n,)
    top = float(cos.max()) if len(cos) else 0.0
    z = (cos - cos.mean()) / (cos.std() + 1e-6)
    top_entity = hits[0].entity_key if hits else ""
    scalars = np.stack(
        [
            cos,
            top - cos,
            np.arange(len(hits), dtype=np.float32) / max(k, 1),
            z,
            np.array([h.doc_type == "faq" for h in hits], dtype=np.float32),
            np.array([h.entity_key == top_entity for h in hits], dtype=np.float32),
        ],
        axis=1,
    )
    return np.hstack([hvecs * qvec, np.abs(hvecs - qvec), scalars]).astype(np.float32)


class LearnedSelector:
    """``select(message, hits, k)``: the passages with P >= threshold (always the best one)."""

    judges = False  # it always selects something: the retrieval confidence decides

    def __init__(self, embedder, weights: dict[str, np.ndarray], meta: dict, stored_vectors=None):
        self.embedder = embedder
        # chunk ids -> (n, d) stored passage vectors, or None (then the texts are embedded)
        self.stored_vectors = stored_vectors
        self.w1, self.b1 = weights["w1"], weights["b1"]  # (in, h), (h,)
        self.w2, self.b2 = weights["w2"], weights["b2"]  # (h,), ()
        self.meta = meta
        self.threshold = float(meta["threshold"])
        self.pool = int(meta["k"])
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # passage text -> vector
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, embedder, stored_vectors=None) -> "LearnedSelector":
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
        return cls(embedder, weights, meta, stored_vectors=stored_vectors)

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
        x = features(qvec, hvecs, hits, self.pool)
        h = np.maximum(x @ self.w1 + self.b1, 0.0)  # (n, hidden)
        return 1.0 / (1.0 + np.exp(-(h @ self.w2 + self.b2)))

    def select(self, message: str, hits: Sequence[Hit], k: int, turns: Sequence[dict] = ()) -> Selection:
        hits = list(hits)[: self.pool]
        if not hits:
            return Selection([])
        p = self.probabilities(message, hits)
        order = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= self.threshold]
        if not order:
            order = [int(np.argmax(p))]
        order = order[:k]
        # Keep the retriever's order among the chosen: the best-ranked passage stays [1].
        return Selection([hits[i] for i in sorted(order)], scores=[float(p[i]) for i in sorted(order)])
