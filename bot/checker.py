"""Support checking: is a reply sentence backed by the source passages it is grounded in?

The bot streams its reply sentence by sentence; before a sentence is shown it must pass the
degenerate-output checks (header echoes, number loops, question echoes, repeats) and a ``Checker``:

    checker = load_checker("default", embedder)       # the retriever's embedder
    splitter, guard = SentenceSplitter(), DegenerateGuard(sources, question)
    for piece in stream:                              # and splitter.flush() at the end
        for sentence in splitter.feed(piece):
            if guard.check(sentence) is None and \
                    checker.supports(sources, sentence) >= checker.threshold:
                show(sentence)

``CalibratedChecker`` is a logistic regression over the features of ``bot.checking.features``
(word and number coverage, polarity and condition agreement with the best-matching source
sentence, embedding cosines, filler), fitted by ``bench/train_checker.py`` into
``bot/checkers/checker.json``. Its score is a probability that the sources support the sentence,
calibrated on the labelled set in ``bench/checker_set/``; the threshold in the JSON was chosen
there for high precision of the sentences shown. ``OverlapChecker`` is a simple model-free
stand-in for tests.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from bot.checking import text as tx
from bot.checking.degenerate import REASONS, DegenerateGuard, degenerate
from bot.checking.features import (FEATURE_VERSION, FEATURES, Evidence, build_evidence,
                                   sentence_features, split_evidence)
from bot.checking.quantities import Quantity, quantities, quantity_supported
from bot.checking.splitter import SentenceSplitter, split_sentences
from bot.core.errors import ConfigError
from retrieval.types import Embedder

__all__ = [
    "Checker", "OverlapChecker", "CalibratedChecker", "FeatureExtractor", "load_checker",
    "degenerate", "DegenerateGuard", "REASONS", "SentenceSplitter", "split_sentences", "BUNDLED",
]

BUNDLED = {"default": Path(__file__).with_name("checkers") / "checker.json"}
FORMAT = "supportbot-checker"


@runtime_checkable
class Checker(Protocol):
    """``supports(sources, sentence)``: probability in [0, 1] that ``sources`` (passage texts)
    support ``sentence``; the sentence is shown iff the score is >= ``threshold``."""

    threshold: float

    def supports(self, sources: Sequence[str], sentence: str) -> float: ...


class OverlapChecker:
    """Share of the sentence's content words found in the sources; 0 when a number of the
    sentence is stated nowhere in them; 1 for filler. Monotone in support, not calibrated."""

    def __init__(self, threshold: float = 0.75):
        self.threshold = threshold

    def supports(self, sources: Sequence[str], sentence: str) -> float:
        if tx.is_filler(sentence):
            return 1.0
        pool_tokens: set[str] = set()
        pool_qty: list[Quantity] = []
        for src in sources:
            pool_tokens |= set(tx.content_tokens(src))
            pool_qty += quantities(src, generous=True)
        if any(not quantity_supported(q, pool_qty) for q in quantities(sentence)):
            return 0.0
        toks = tx.content_tokens(sentence)
        if not toks:
            return 0.0
        return sum(t in pool_tokens for t in toks) / len(toks)


class FeatureExtractor:
    """``FEATURES`` rows of (sources, sentence) pairs. The analysed sources (with their sentence
    embeddings) are cached: every sentence of a reply is checked against the same sources, so
    only the reply sentence itself is embedded per call. Thread-safe."""

    def __init__(self, embedder: Embedder, max_sources: int = 64, max_vectors: int = 20_000):
        self.embedder = embedder
        self._evidence: OrderedDict[tuple[str, ...], Evidence] = OrderedDict()
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_sources, self._max_vectors = max_sources, max_vectors
        self._lock = threading.Lock()

    def _embed_sources(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of source sentences: from the cache where possible (sources overlap between
        replies), the rest in one batch."""
        with self._lock:
            cached = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in cached:
                self._vectors.move_to_end(t)
        todo = list(dict.fromkeys(t for t in texts if t not in cached))
        if todo:
            vecs = np.asarray(self.embedder.embed(todo), dtype=np.float32)
            cached.update(zip(todo, vecs))
            with self._lock:
                self._vectors.update(zip(todo, vecs))
                while len(self._vectors) > self._max_vectors:
                    self._vectors.popitem(last=False)
        return np.stack([cached[t] for t in texts])

    def evidence(self, sources: Sequence[str]) -> Evidence:
        key = tuple(sources)
        with self._lock:
            ev = self._evidence.get(key)
            if ev is not None:
                self._evidence.move_to_end(key)
                return ev
        sents, clauses = split_evidence(key)
        vectors = self._embed_sources([s.text for s in sents]) if sents else np.zeros((0, 1), np.float32)
        source_words = {tx.stem(w) for src in key for w in tx.words(tx.clean(src))}
        ev = build_evidence(sents, clauses, vectors, source_words)
        with self._lock:
            self._evidence[key] = ev
            while len(self._evidence) > self._max_sources:
                self._evidence.popitem(last=False)
        return ev

    def features(self, sources: Sequence[str], sentences: Sequence[str]) -> np.ndarray:
        """(n, len(FEATURES)) float32 for ``sentences`` against the same ``sources``."""
        ev = self.evidence(sources)
        if not len(sentences):
            return np.zeros((0, len(FEATURES)), np.float32)
        vecs = np.asarray(self.embedder.embed([tx.clean(s) or s for s in sentences]), dtype=np.float32)
        return np.stack([sentence_features(s, v, ev) for s, v in zip(sentences, vecs)])


def _model_id(embedder: Embedder) -> str:
    model_id = getattr(embedder, "model_id", None)
    if not model_id:
        raise ConfigError("the support checker needs an embedder with a model_id to verify its weights")
    return str(model_id)


class CalibratedChecker:
    """Logistic regression over ``FEATURES`` (weights from ``bench/train_checker.py``).

    ``weights`` is the parsed JSON: ``format``, ``feature_version``, ``features`` (names, in
    order), ``embedder`` (the model_id the weights were fitted with), ``mean``/``scale``
    (standardisation), ``coef``, ``intercept``, ``threshold``. Any mismatch with this code or with
    ``embedder`` is a ``ConfigError``: the cosine features mean something else under another model.
    """

    def __init__(self, embedder: Embedder, weights: dict):
        if weights.get("format") != FORMAT:
            raise ConfigError(f"not a support-checker weights file (format {weights.get('format')!r})")
        if weights.get("feature_version") != FEATURE_VERSION or list(weights.get("features", [])) != list(FEATURES):
            raise ConfigError(
                f"support-checker weights are for feature version {weights.get('feature_version')}, "
                f"this code computes version {FEATURE_VERSION}: refit with bench/train_checker.py")
        trained_with, model_id = weights.get("embedder"), _model_id(embedder)
        if trained_with != model_id:
            raise ConfigError(
                f"support-checker weights were fitted with embedder {trained_with!r}, not {model_id!r}: "
                "use the retriever's default embedder or refit with bench/train_checker.py")
        n = len(FEATURES)
        try:
            self.mean = np.asarray(weights["mean"], dtype=np.float64).reshape(n)
            self.scale = np.asarray(weights["scale"], dtype=np.float64).reshape(n)
            self.coef = np.asarray(weights["coef"], dtype=np.float64).reshape(n)
            self.intercept = float(weights["intercept"])
            self.threshold = float(weights["threshold"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"support-checker weights are incomplete: {exc}") from exc
        self.meta = {k: v for k, v in weights.items() if k not in ("mean", "scale", "coef")}
        self.extractor = FeatureExtractor(embedder)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        logits = z @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -40, 40)))

    def supports(self, sources: Sequence[str], sentence: str) -> float:
        """Probability that ``sources`` support ``sentence``; 1.0 for whitespace (nothing claimed)."""
        return self.supports_many(sources, [sentence])[0]

    def supports_many(self, sources: Sequence[str], sentences: Sequence[str]) -> list[float]:
        """``supports`` for several sentences against the same sources (one embedding batch)."""
        out = [1.0] * len(sentences)
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        if todo:
            probs = self.probabilities(self.extractor.features(sources, [sentences[i] for i in todo]))
            for i, p in zip(todo, probs):
                out[i] = float(p)
        return out


def load_checker(name_or_path: str, embedder: Embedder | None = None) -> Checker:
    """A checker by name: ``"default"`` (the bundled calibrated weights, needs the embedder they
    were fitted with), ``"overlap"`` (``OverlapChecker``), or a path to a weights JSON."""
    if name_or_path == "overlap":
        return OverlapChecker()
    path = BUNDLED.get(name_or_path) or Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"support-checker weights not found: {path} (names: default, overlap)")
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read support-checker weights {path}: {exc}") from exc
    if embedder is None:
        raise ConfigError("the calibrated support checker needs the embedder (dependency injection)")
    if not isinstance(weights, dict):
        raise ConfigError(f"support-checker weights {path} are not a JSON object")
    return CalibratedChecker(embedder, weights)

