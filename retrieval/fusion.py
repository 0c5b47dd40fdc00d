"""The fusion model of the hybrid retriever: two small logistic models stored as JSON.

* ranking: per candidate chunk, ``logit = FEATURES . w + b`` -> P(chunk answers the query);
* confidence: per query, ``QUERY_FEATURES . c + d`` -> P(the top hit answers the query), fitted
  on in-scope queries (label: top hit is gold) and on turns that need no knowledge or are out of
  scope (label 0), so the dialogue manager can threshold it.

Both are fitted by ``bench/tune_fusion.py`` on training/dev data; the fitted coefficients ship in
``retrieval/fusion.json`` together with what they were fitted on and the held-out figures.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bot.core.errors import ConfigError

# Per candidate. dense*: cosine of the query (or of the conversation context) with the chunk;
# dense_group: mean dense score of the answers to the same FAQ question (dense for other chunks);
# *_gap: minus the best candidate's value (a pointwise model sees the competition through it);
# lexical: BM25 divided by the query's best possible BM25 score (in [0, 1]); *_ctx: the same
# signals for the last turns before the query (the conversation context).
FEATURES = (
    "dense",
    "dense_group",
    "dense_gap",
    "lexical",
    "lexical_gap",
    "lexical_ctx",
    "entity",
    "entity_found",
    "faq",
    "has_context",
)
# Per query, from the top candidate: its absolute signals and their interactions with the
# entity, because what a dense cosine of 0.5 means depends on whether the conversation named one.
# Not the ranking logit (its *_gap features are 0 for every top, so it does not compare across
# queries) nor the margin to the second hit (answers to one FAQ question tie on purpose).
QUERY_FEATURES = (
    "dense",
    "lexical",
    "entity",
    "entity_found",
    "has_context",
    "dense_x_entity",
    "dense_x_no_entity",
    "lexical_x_entity",
)

DEFAULT_PATH = Path(__file__).with_name("fusion.json")


@dataclass
class FusionModel:
    weights: np.ndarray  # (len(FEATURES),)
    bias: float
    conf_weights: np.ndarray  # (len(QUERY_FEATURES),)
    conf_bias: float
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Ranking logits for candidate features ``X`` (n, len(FEATURES))."""
        return X @ self.weights + self.bias

    @staticmethod
    def query_features(x_top: np.ndarray) -> np.ndarray:
        """``QUERY_FEATURES`` of a query from its top candidate's features."""
        f = dict(zip(FEATURES, (float(v) for v in x_top)))
        dense, lexical, ent, found = f["dense"], f["lexical"], f["entity"], f["entity_found"]
        return np.array(
            [dense, lexical, ent, found, f["has_context"], dense * ent, dense * (1 - found), lexical * ent],
            dtype=np.float64,
        )

    def confidence(self, x_top: np.ndarray) -> float:
        """Calibrated P(top hit relevant), from the top candidate's features."""
        z = float(self.query_features(x_top) @ self.conf_weights + self.conf_bias)
        return float(1.0 / (1.0 + np.exp(-z)))

    # ---- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "weights": [float(x) for x in self.weights],
            "bias": float(self.bias),
            "query_features": list(QUERY_FEATURES),
            "conf_weights": [float(x) for x in self.conf_weights],
            "conf_bias": float(self.conf_bias),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "fusion model") -> "FusionModel":
        if d.get("features") != list(FEATURES) or d.get("query_features") != list(QUERY_FEATURES):
            raise ConfigError(
                f"{where}: fitted for features {d.get('features')} / {d.get('query_features')}, "
                f"this code computes {list(FEATURES)} / {list(QUERY_FEATURES)}; refit with bench/tune_fusion.py"
            )
        return cls(
            weights=np.asarray(d["weights"], dtype=np.float32),
            bias=float(d["bias"]),
            conf_weights=np.asarray(d["conf_weights"], dtype=np.float64),
            conf_bias=float(d["conf_bias"]),
            meta=d.get("meta", {}),
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> "FusionModel":
        path = Path(path) if path else DEFAULT_PATH
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the fusion model {path}: {exc}") from exc
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
