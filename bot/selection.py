"""Knowledge selection: which retrieved passages an answer is grounded in, and whether the turn
needs knowledge at all.

Every selector has one verb, ``select(message, hits, k) -> Selection``, and says how many
retrieval candidates it reads (``pool``). Three implementations:

* ``RuleSelector``: passages near the top fused score, from the top passage's entity (below).
* ``LearnedSelector`` (``bot/mlp_selector.py``): an MLP over question and passage embeddings.
* ``CrossSelector`` (``bot/cross_selector.py``): a cross-encoder that reads question and passage
  together and also judges whether the turn needs knowledge (``Selection.needs_knowledge``).

``build_selector`` picks one by the name in ``dialogue.selector``; the app tier calls it and
passes the result into the turn pipeline (``bot/pipeline.py``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from bot.core.settings import DialogueSettings
from retrieval.types import Hit


@dataclass(frozen=True)
class Selection:
    """``passages``: what an answer is grounded in, in the retriever's order. ``needs_knowledge``:
    the selector's verdict on whether the turn needs knowledge (True / False), or None when it does
    not judge that (then the retrieval confidence alone decides, ``bot/policy.py``). ``scores``:
    the selector's P(grounds the answer) of each passage (same order), when it has one."""

    passages: list[Hit] = field(default_factory=list)
    needs_knowledge: bool | None = None
    scores: list[float] | None = None


@runtime_checkable
class Selector(Protocol):
    pool: int  # retrieval candidates it reads (0: what the policy gets, ``dialogue.candidates``)
    judges: bool  # it judges whether a turn needs knowledge (then it decides, ``bot/policy.py``)

    def select(self, message: str, hits: Sequence[Hit], k: int, turns: Sequence[dict] = ()) -> Selection:
        """At most ``k`` of ``hits`` (best first) that ground the answer to ``message``; ``turns``
        are the conversation's earlier turns (oldest first), for a selector that reads them."""


class RuleSelector:
    """The passages whose fused score is within ``select_margin`` of the top one, measured as a
    fraction of the spread between the top and the last candidate's score (scale-free, whatever
    the retriever's score range), and, with ``select_same_entity``, about the top passage's entity.
    Always the top hit when there is one; duplicates of one chunk dropped. The margins are chosen by
    ``bench/calibrate_policy.py``."""

    pool = 0
    judges = False

    def __init__(self, settings: DialogueSettings):
        self.settings = settings

    def select(self, message: str, hits: Sequence[Hit], k: int, turns: Sequence[dict] = ()) -> Selection:
        if not hits:
            return Selection([])
        s = self.settings
        top = hits[0]
        spread = float(top.score) - min(float(h.score) for h in hits)
        floor = float(top.score) - s.select_margin * spread
        chosen: list[Hit] = []
        seen: set[int] = set()
        for h in hits:
            if len(chosen) >= k:
                break
            if h.chunk_id in seen or float(h.score) < floor:
                continue
            if s.select_same_entity and h.entity_key != top.entity_key:
                continue
            if float(h.confidence) < s.select_min_confidence and h is not top:
                continue
            seen.add(h.chunk_id)
            chosen.append(h)
        return Selection(chosen)


class PoolKindSelector:
    """One selector per kind of knowledge base (``bot.cross_selector.pool_kind``: ``"entity"``,
    passages about named hotels or products, or ``"flat"``, FAQ pages and help articles): each turn
    is selected by the one for its retrieved pool's kind. ``auto`` uses it to give entity bases the
    mixture-trained support cross-encoder and flat ones the DSTC11 one (``build_selector``)."""

    judges = True

    def __init__(self, by_kind: dict[str, Selector]):
        if set(by_kind) != {"entity", "flat"}:
            raise ValueError(f"PoolKindSelector needs an 'entity' and a 'flat' selector, got {sorted(by_kind)}")
        self.by_kind = dict(by_kind)
        self.pool = max(sel.pool for sel in self.by_kind.values())
        self.judges = all(sel.judges for sel in self.by_kind.values())
        from bot.cross_selector import pool_kind  # it imports Selection from this module

        self._kind = pool_kind

    def select(self, message: str, hits: Sequence[Hit], k: int, turns: Sequence[dict] = ()) -> Selection:
        return self.by_kind[self._kind(hits)].select(message, hits, k, turns)


StoredVectors = Callable[[Sequence[int]], "np.ndarray | None"]


def build_selector(settings: DialogueSettings, embedder, stored_vectors: StoredVectors | None = None) -> Selector:
    """The selector named by ``settings.selector``:

    * ``""``: the rule;
    * ``"auto"``: the cross-encoders below for this embedder, else the bundled MLP when it was
      trained for it, else the rule;
    * a bundled name (``dstc11`` the MLP, ``dstc11-cross`` the DSTC11 cross-encoder, ``support`` the
      mixture-trained one) or a path: a folder is a cross selector, a file an MLP ``.npz`` (strict:
      a wrong embedder or a broken file is a ``ConfigError``).

    ``stored_vectors`` (chunk ids -> their index vectors, or None) spares the MLP embedding the
    passages again. ``auto``, when the retriever's embedder is the one they were trained behind, is
    a ``PoolKindSelector``: entity knowledge bases (hotels, products) get ``support``, trained on
    the DSTC11 train mixture with more FAQ-style material (on held-out DSTC11 train dialogues it
    selected at F1 0.821 and detected knowledge turns at F1 0.997, against 0.802 and an accuracy of
    0.982 for ``dstc11-cross``); flat ones (FAQ pages, help articles) get ``dstc11-cross``, which
    grounded none of the fit companies' out-of-scope questions in intro and help text, where
    ``support`` grounded 2 of 30 (``bench/answer_quality.py --configs current,support-selector``).
    On flat bases the FAQ matcher (``bot/faq_match.py``) decides wherever the top hit is an FAQ
    entry, so the selector decides only on the rest."""
    from bot.cross_selector import BUNDLED_CROSS, CrossSelector
    from bot.mlp_selector import BUNDLED, LearnedSelector

    name = settings.selector
    if not name:
        return RuleSelector(settings)
    if name == "auto":
        def fits(cross_dir: Path) -> bool:
            try:
                cross_for = json.loads((cross_dir / "selector.json").read_text(encoding="utf-8")).get("embedder")
            except (OSError, ValueError):
                return False
            return embedder is not None and cross_for == getattr(embedder, "model_id", None)

        if fits(BUNDLED_CROSS["dstc11-cross"]):
            flat = CrossSelector.shared(BUNDLED_CROSS["dstc11-cross"], settings.selector_threads, embedder)
            if not fits(BUNDLED_CROSS["support"]):
                return flat
            entity = CrossSelector.shared(BUNDLED_CROSS["support"], settings.selector_threads, embedder)
            return PoolKindSelector({"entity": entity, "flat": flat})
        path = BUNDLED["dstc11"]
        if embedder is None or not path.is_file():
            return RuleSelector(settings)
        try:
            with np.load(path, allow_pickle=False) as data:
                trained_for = json.loads(str(data["meta"])).get("embedder")
        except (OSError, KeyError, ValueError):
            return RuleSelector(settings)
        if trained_for != getattr(embedder, "model_id", None):
            return RuleSelector(settings)
        name = "dstc11"
    cross = BUNDLED_CROSS.get(name)
    if cross is not None or (name not in BUNDLED and Path(name).expanduser().is_dir()):
        return CrossSelector.shared(cross or name, settings.selector_threads, embedder)
    return LearnedSelector.load(name, embedder, stored_vectors=stored_vectors)
