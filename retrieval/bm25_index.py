"""Lexical index: BM25 (``bm25s``) over chunk texts, keyed by chunk id.

Texts are lower-cased, split into word tokens, English stopwords dropped and words
Snowball-stemmed (PyStemmer): ``bench/tune_fusion.py --analyzers`` compares this with no stemming
and with stopwords kept: on dev data, BM25 alone, this analyzer wins clearly on DSTC11 and
stemming wins clearly on StackFAQ, where keeping stopwords is about even. The index is rebuilt in
full (``build``): a few seconds for the DSTC11 knowledge base on 2 busy cores, about twice
bm25s's unstemmed quick-start path (``bench/retrieval_latency.py``). Figures in the README.

Saved as NumPy arrays and JSON only (no pickle): files may sit on a volume several hosts share.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import bm25s
import numpy as np

from bot.core.errors import ConfigError

FORMAT_VERSION = 1
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class Analyzer:
    """Text -> list of index terms. ``stemmer`` is a Snowball language name or "" for none."""

    def __init__(self, stemmer: str = "english", stopwords: bool = True):
        self.stemmer_name = stemmer
        self.use_stopwords = stopwords
        self._stopwords = frozenset(bm25s.stopwords.STOPWORDS_EN) if stopwords else frozenset()
        self._stem = None
        if stemmer:
            import Stemmer  # PyStemmer

            self._stem = Stemmer.Stemmer(stemmer).stemWords

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stopwords]
        return self._stem(words) if self._stem else words

    def config(self) -> dict:
        return {"stemmer": self.stemmer_name, "stopwords": self.use_stopwords}


class BM25Index:
    """BM25 over chunks. ``search`` returns raw BM25 scores; ``normalised_search`` divides them by
    the best score any chunk could get for the query's terms, giving values in [0, 1] that are
    comparable across queries (the retriever's fusion and confidence use those)."""

    def __init__(self, analyzer: Analyzer | None = None, k1: float = 1.2, b: float = 0.75):
        self.analyzer = analyzer or Analyzer()
        self.k1, self.b = k1, b
        self._bm25: bm25s.BM25 | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._pos: dict[int, int] = {}
        self._term_max = np.zeros(0, dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def build(self, ids: Sequence[int], texts: Sequence[str]) -> "BM25Index":
        """(Re)build the whole index from chunk ids and their texts."""
        if len(ids) != len(texts):
            raise ValueError(f"BM25Index.build: {len(ids)} ids for {len(texts)} texts")
        self._ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(np.unique(self._ids)) != len(self._ids):
            raise ValueError("BM25Index.build: chunk ids must be unique")
        self._pos = {int(i): n for n, i in enumerate(self._ids)}
        if len(self._ids) == 0:
            self._bm25 = None
            self._term_max = np.zeros(0, dtype=np.float32)
            return self
        bm25 = bm25s.BM25(k1=self.k1, b=self.b)
        # An empty token list would make bm25s drop the row; "" keeps rows aligned with ids.
        tokens = [self.analyzer(t) or [""] for t in texts]
        bm25.index(tokens, show_progress=False)
        self._bm25 = bm25
        self._term_max = self._max_per_term()
        return self

    def _max_per_term(self) -> np.ndarray:
        # scores["data"] holds per (term, doc) contributions in CSC layout: column t spans
        # indptr[t]:indptr[t+1]. The column max is the most one term can add to any score.
        s = self._bm25.scores
        data, indptr = s["data"], s["indptr"]
        out = np.zeros(len(indptr) - 1, dtype=np.float32)
        nonempty = np.diff(indptr) > 0
        out[nonempty] = np.maximum.reduceat(data, indptr[:-1][nonempty]) if len(data) else 0.0
        return out

    def _query_terms(self, query: str) -> list[int]:
        vocab = self._bm25.vocab_dict
        return list(dict.fromkeys(vocab[t] for t in self.analyzer(query) if t in vocab and t))

    def scores_all(self, query: str) -> tuple[np.ndarray, float]:
        """Raw scores for every chunk (aligned with ``ids``) and the query's best possible score."""
        if self._bm25 is None:
            return np.zeros(0, dtype=np.float32), 0.0
        terms = self._query_terms(query)
        if not terms:
            return np.zeros(len(self._ids), dtype=np.float32), 0.0
        scores = self._bm25.get_scores_from_ids(terms)
        return np.asarray(scores, dtype=np.float32), float(self._term_max[terms].sum())

    def search(
        self, query: str, k: int, allowed_ids: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` chunks with a positive score: (scores float32 (m,), ids int64 (m,)), m <= k,
        best first. ``allowed_ids`` restricts the result to those chunk ids."""
        scores, _ = self.scores_all(query)
        return self._top(scores, k, allowed_ids)

    def normalised_search(
        self, query: str, k: int, allowed_ids: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search`` with scores divided by the query's best possible score (in [0, 1])."""
        scores, best = self.scores_all(query)
        if best > 0:
            scores = scores / best
        return self._top(scores, k, allowed_ids)

    def _top(self, scores: np.ndarray, k: int, allowed_ids) -> tuple[np.ndarray, np.ndarray]:
        if len(scores) == 0 or k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if allowed_ids is not None:
            rows = np.fromiter(
                (self._pos[i] for i in map(int, np.asarray(allowed_ids).reshape(-1)) if i in self._pos),
                dtype=np.int64,
            )
        else:
            rows = np.flatnonzero(scores > 0)
        rows = rows[scores[rows] > 0]
        if len(rows) > k:
            rows = rows[np.argpartition(-scores[rows], k - 1)[:k]]
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        return scores[rows].astype(np.float32), self._ids[rows]

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_VERSION, "k1": self.k1, "b": self.b, **self.analyzer.config()}
        np.save(directory / "ids.npy", self._ids, allow_pickle=False)
        if self._bm25 is not None:
            self._bm25.save(str(directory / "bm25"), show_progress=False)
        _write_json(directory / "bm25_meta.json", meta)

    @classmethod
    def load(cls, directory: Path) -> "BM25Index":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "bm25_meta.json").read_text())
            ids = np.load(directory / "ids.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the BM25 index in {directory}: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{directory}: BM25 index format {meta.get('format')}, expected {FORMAT_VERSION}")
        index = cls(Analyzer(meta["stemmer"], meta["stopwords"]), k1=meta["k1"], b=meta["b"])
        index._ids = ids.astype(np.int64)
        index._pos = {int(i): n for n, i in enumerate(index._ids)}
        if len(ids):
            try:
                index._bm25 = bm25s.BM25.load(str(directory / "bm25"), show_progress=False, verbosity=0)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the BM25 index in {directory}: {exc}") from exc
            index._term_max = index._max_per_term()
        return index


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
