"""Does the site's FAQ answer this question? P(the top FAQ entry answers the visitor's question).

On a site whose knowledge is FAQ entries (a question with its answer), the best reply to a question
the FAQ answers is that entry's own answer (``bot/policy.py`` direct replies), and the best reply to
one it does not answer is a hand-off. The retriever's calibrated confidence cannot tell the two
apart on paraphrases: its median on the benchmark's answerable questions was 0.34, about the same
as on questions the FAQ does not answer (``bench/answer_quality.py``). ``FAQMatcher.match`` reads
nine features of each of the retriever's first FAQ hits:

* ``margin``: the entry's fused score minus the best of the entries with another question (its
  rivals: an answer that stands out; several answers to one question do not compete);
* ``cos_q``: the embedding cosine of the visitor's message and the entry's question;
* ``cos_t``: the cosine of the message and the whole entry (question and answer);
* ``cos_s``: the cosine of the message and the closest sentence of the entry's answer (a visitor
  often asks about one detail of an answer: "can I freeze it if I break my ankle" against
  "Can I pause my membership?" whose answer names injuries);
* ``cross``: the support cross-encoder's logit on the (message, entry) pair (it reads the two
  together: "gift cards" vs "gift wrapping");
* ``cross_margin``: that logit minus the best logit of its rivals;
* ``margin_q``, ``margin_t``, ``margin_s``: each cosine minus the best of its rivals' (an entry
  whose cosine stands out from the site's other entries is the answer more often than one that is
  merely close: the near misses of out-of-scope questions are close to several entries at once;
  with them the held-out companies' right share went from 0.702 to 0.746 at the same precision
  target, and on the fit companies' benchmark questions, each company judged by a matcher fitted
  without it, from 0.651 to 0.688 with fewer of their out-of-scope questions answered, 0.143
  against 0.157),

gives each entry ``sigmoid(w . f + b)`` and returns the likeliest (it reranks: on the held-out
companies the right entry came first for 0.922 of the in-scope questions, against 0.859 with the
first four features fitted on the benchmark's questions alone and 0.815 by the retriever). The
weights and the thresholds (``direct``: reply with the entry, ``clarify``: ask back offering it)
are fitted by ``bench/fit_faq_match.py`` on the fit companies of ``bench/faq_corpus``: their
benchmark questions and written paraphrases (three per entry, near-miss out-of-scope questions),
with "gold removed" negatives (each question asked once more with its answer taken out of the
FAQ), and stored in ``faq-match.json`` with the figures on the held-out companies and a
leave-one-company-out check on the fit ones.

A matcher may give entries whose answer opens with a yes or a no (``answers_yes_no``) a direct
threshold of their own, ``direct_yes_no`` (``FAQMatch.direct``; ``bench/fit_faq_match.py
--split-yes-no`` fits each by the same rule on those entries alone): such an answer matches any
yes/no question in shape, and its yes is a claim about the visitor's case ("does it pay for my
puppy's vaccinations?" -> "Can you pay my vet directly? Yes, if your vet agrees."). At P >= 0.40
on the fit companies' questions 0.87 of the yes/no entries picked were right and 10% were answers
to out-of-scope questions, against 0.93 and 3% for the other entries. The bundled matcher has one
threshold: with the split (0.60 for yes/no entries, 0.30 for the others) the answer benchmark's
held-out sites got 4 fewer wrong replies and 2 fewer right ones, and all sites 6 fewer right ones
and 1 fewer wrong one (README, Answer quality).

The cosines are read with the FAQ embedder when ``faq-match.json`` says so (``cosines``:
"tuned"): the retriever's MiniLM with a LoRA adapter (``faq_embedder``, 2.7 MB beside it) trained
to put a visitor's question close to the entry that answers it and away from the site's other
entries and from "none of them" (``bench/train_faq_embedder.py``; the matcher's weights and
thresholds are then fitted on out-of-fold cosines: each fit company's from an adapter that never
saw it). The retriever itself keeps the stock model (its index is unchanged).

It applies to flat knowledge bases only (FAQ pages, help articles: passages that name no entity,
``cross_selector.pool_kind``); in a base of entities (hotels, products with reviews) the selector
decides as before.

    python bench/faq_decision_data.py --top 8 && python bench/fit_faq_match.py --write
"""
from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bot.checking.text import opens_no, opens_yes
from bot.core.errors import ConfigError
from bot.cross_selector import BUNDLED_CROSS, CrossSelector, pair_text, pool_kind
from retrieval.types import Hit, question_key

MATCH_FILE = Path(__file__).with_name("selectors") / "faq-match.json"
FEATURES = ["margin", "cos_q", "cos_t", "cos_s", "cross", "cross_margin", "margin_q", "margin_t", "margin_s"]
TOP = 8  # FAQ hits read (the retriever's order); the features need the top one and its rivals
CACHE = 16384  # vectors of entry texts kept (questions, entries, answer sentences: ~5 per entry)
NO_RIVAL = 4.0  # a margin when no other entry was retrieved: clearly ahead
# A cosine margin when no other entry was retrieved (103 of the 2,259 questions of
# bench/faq_decision_data.py, most of them StackFAQ's, whose 8 hits can all answer one question):
# well ahead, as the 99th percentile of the top hit's margins there (0.41) is.
COS_NO_RIVAL = 0.3


def answer_sentences(answer: str) -> list[str]:
    """The sentences of an entry's answer that ``cos_s`` compares the message with (two words or
    more). Shared by serving and ``bench/faq_decision_data.py``."""
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", answer or "") if len(s.split()) >= 2]


def answers_yes_no(answer: str | None) -> bool:
    """Does the FAQ answer open with a yes or a no ("Yes, if your vet agrees.", "Unfortunately
    not.")? A matcher may give such entries a direct threshold of their own (module docstring).
    Shared by serving and ``bench/fit_faq_match.py``."""
    first = (answer or "").strip().split("\n", 1)[0]
    return opens_yes(first) or opens_no(first)


def passage_heading(hit: Hit) -> str:
    """What a help center's passage is about, as ``cos_q`` reads it: its document's title (the
    article's heading), else the passage's first line."""
    return str(hit.title or "").strip() or str(hit.text or "").strip().split("\n", 1)[0]


def rival_key(hit: Hit, kind: str) -> str:
    """What makes two candidates rivals: another FAQ question ("faq"), another document
    ("passage": two passages of one article do not compete)."""
    return str(hit.question or "") if kind == "faq" else str(hit.doc_id or "")


def entry_cosines(query: np.ndarray, questions: Sequence[str], texts: Sequence[str], sentences: Sequence[Sequence[str]],
                  embed: Callable[[Sequence[str]], np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(cos_q, cos_t, cos_s) of the message vector ``query`` with each entry (its question, its
    whole text, its closest answer sentence), the entry texts embedded by ``embed`` in one batch.
    Shared by serving and ``bench/faq_decision_data.py``."""
    n = len(questions)
    cos = np.asarray(embed(list(questions) + list(texts) + [x for ss in sentences for x in ss]), np.float32) @ query
    cos_s, at = [], 2 * n
    for ss in sentences:
        cos_s.append(float(cos[at:at + len(ss)].max()) if ss else 0.0)
        at += len(ss)
    return cos[:n], cos[n:2 * n], cos_s


def features_from(items: Sequence[tuple[float, str, float, float, float, float]], j: int = 0) -> list[float]:
    """The features of entry ``j`` of ``items`` (score, question, cos_q, cos_t, cos_s, cross logit),
    against its rivals: the entries with another question. Shared by serving and
    ``bench/fit_faq_match.py``."""
    _, question, cos_q, cos_t, cos_s, cross = items[j]
    rivals = [it for it in items if question_key(it[1]) != question_key(question)]

    def ahead(k: int, alone: float) -> float:
        """Entry ``j``'s value ``k`` minus the best rival's (``alone`` when it has none)."""
        return float(items[j][k] - max(it[k] for it in rivals)) if rivals else alone

    margin = float(np.clip(ahead(0, NO_RIVAL), -2 * NO_RIVAL, 2 * NO_RIVAL))
    cross_margin = float(np.clip(ahead(5, NO_RIVAL), -3 * NO_RIVAL, 3 * NO_RIVAL))
    cos_margins = [ahead(k, COS_NO_RIVAL) for k in (2, 3, 4)]
    return [margin, float(cos_q), float(cos_t), float(cos_s), float(cross), cross_margin] + cos_margins


@dataclass(frozen=True)
class FAQMatch:
    entry: Hit  # the FAQ entry most likely to answer the question
    probability: float  # P(it answers the question)
    # The entries with other questions than ``entry``'s and each other's, likeliest first, with
    # their P: the other topics a clarifying question may offer.
    rivals: tuple[tuple[Hit, float], ...] = ()
    # The P from which ``entry`` is the reply (the matcher's ``direct`` or ``direct_yes_no``);
    # None: the matcher's ``direct``.
    direct: float | None = None
    # "faq": ``entry`` is an FAQ entry, replied with as it is; "passage": a help center's passage
    # (no FAQ entry was retrieved), quoted or written from (``dialogue.passage_reply``).
    kind: str = "faq"


class FAQMatcher:
    """``match(message, hits) -> FAQMatch | None``: the FAQ entry of ``hits`` most likely to
    answer ``message`` and that P (None when the hits hold no FAQ entry or are about entities)."""

    def __init__(self, meta: dict, cross: CrossSelector, embedder, tuned=None):
        self.weights = np.asarray(meta["weights"], np.float64)
        self.bias = float(meta["bias"])
        self.direct = float(meta["direct"])
        # Absent in a matcher fitted before the split: one threshold for every entry.
        self.direct_yes_no = float(meta.get("direct_yes_no", meta["direct"]))
        self.clarify = float(meta["clarify"])
        # Weights and thresholds for a help center's passages (``bench/fit_passage_match.py``):
        # {"weights", "bias", "direct", "clarify"}; None: the matcher reads FAQ entries only.
        self.passages = meta.get("passages")
        self.cross = cross
        self.embedder = embedder
        # ``cosines``: whose cosines the features read: the retriever's embedder ("stock"), the FAQ
        # embedder ``tuned`` (the stock model with the ``faq_embedder`` LoRA adapter merged,
        # bench/train_faq_embedder.py: "tuned"), or both (three more features).
        self.cosines = meta.get("cosines", "stock")
        self.tuned = tuned
        self.meta = meta
        # An entry's question, text and answer sentences are the same on every turn: embedded once
        # (about 40 texts a turn otherwise, most of a direct reply's time on 2 cores).
        self._vectors: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()  # (embedder, text)
        self._lock = threading.Lock()

    def _embed(self, texts: Sequence[str], embedder) -> np.ndarray:
        """Vectors of entry ``texts`` by ``embedder``, from the cache where it has them."""
        keys = [(id(embedder), t) for t in texts]
        with self._lock:
            found = {k: self._vectors[k] for k in keys if k in self._vectors}
            for key in found:
                self._vectors.move_to_end(key)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            found.update(zip(missing, embedder.embed([t for _, t in missing])))
            with self._lock:
                for key in missing:
                    self._vectors[key] = found[key]
                while len(self._vectors) > CACHE:
                    self._vectors.popitem(last=False)
        return np.asarray([found[k] for k in keys], np.float32)

    def cosines_of(self, message: str, faq: Sequence[Hit], sentences: list[list[str]], embedder) -> tuple:
        """(cos_q, cos_t, cos_s) of ``message`` with each entry of ``faq`` by ``embedder``."""
        return entry_cosines(embedder.embed([message])[0], [h.question or h.text for h in faq],
                             [h.text for h in faq], sentences, lambda texts: self._embed(texts, embedder))

    @classmethod
    def load(cls, path: str | Path, embedder, threads: int = 1, adapted=None) -> "FAQMatcher":
        """The matcher fitted in ``path``; ``adapted(adapter_dir) -> Embedder`` builds the FAQ
        embedder (the retriever's model with that LoRA adapter merged) when its cosines need it."""
        path = Path(path).expanduser()
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"dialogue.faq_matcher={str(path)!r}: cannot read it: {exc}") from exc
        missing = [k for k in ("features", "weights", "bias", "direct", "clarify", "cross", "embedder") if k not in meta]
        if missing or meta["features"] != FEATURES:
            raise ConfigError(f"{path}: not an FAQ matcher for features {FEATURES} (missing {missing})")
        bad = [k for k in ("direct", "direct_yes_no", "clarify")
               if k in meta and not (isinstance(meta[k], (int, float)) and 0 < meta[k] <= 1)]
        if bad or meta["clarify"] > min(meta["direct"], meta.get("direct_yes_no", meta["direct"])):
            raise ConfigError(f"{path}: thresholds must lie in (0, 1] with clarify at most each direct one "
                              f"(direct {meta['direct']}, direct_yes_no {meta.get('direct_yes_no')}, clarify {meta['clarify']})")
        passages = meta.get("passages")
        if passages is not None:
            try:
                ok = (len(passages["weights"]) == len(FEATURES) and isinstance(passages["bias"], (int, float))
                      and 0 < passages["clarify"] <= passages["direct"] <= 1)
            except (KeyError, TypeError):
                ok = False
            if not ok:
                raise ConfigError(f"{path}: its passages need weights for {len(FEATURES)} features, a bias, and "
                                  "0 < clarify <= direct <= 1 (bench/fit_passage_match.py --write)")
        have = getattr(embedder, "model_id", None)
        if have != meta["embedder"]:
            raise ConfigError(f"{path}: fitted behind embedder {meta['embedder']!r}, the retriever uses {have!r}")
        cosines = meta.get("cosines", "stock")
        if cosines not in ("stock", "tuned", "both"):
            raise ConfigError(f"{path}: cosines must be stock, tuned or both, not {cosines!r}")
        tuned = None
        if cosines != "stock":
            if not meta.get("faq_embedder") or adapted is None:
                raise ConfigError(f"{path}: its cosines are the FAQ embedder's, and it names none (faq_embedder) "
                                  "or no way to build it was given")
            tuned = adapted(path.parent / meta["faq_embedder"])
        cross_dir = BUNDLED_CROSS.get(meta["cross"]) or (path.parent / meta["cross"])
        return cls(meta, CrossSelector.shared(cross_dir, threads, embedder), embedder, tuned)

    def probability(self, feats: Sequence[float], kind: str = "faq") -> float:
        """P(the candidate answers) from its features, by the weights of its ``kind``."""
        weights, bias = ((self.weights, self.bias) if kind == "faq"
                         else (np.asarray(self.passages["weights"], np.float64), float(self.passages["bias"])))
        z = float(weights @ np.asarray(feats, np.float64)) + bias
        return 1.0 / (1.0 + math.exp(-z))

    def candidates(self, hits: Sequence[Hit]) -> tuple[list[Hit], str]:
        """The hits the matcher weighs and their kind: the first ``TOP`` FAQ entries ("faq"), else,
        in a help center whose first ``TOP`` hits hold no FAQ entry and when the matcher has passage
        weights, the first ``TOP`` passages ("passage"); ([], "") when neither applies."""
        if pool_kind(hits) != "flat":
            return [], ""
        faq = [h for h in hits if h.faq_answer][:TOP]
        if faq:
            return faq, "faq"
        if self.passages is not None and hits:
            return list(hits[:TOP]), "passage"
        return [], ""

    def features(self, message: str, cands: Sequence[Hit], kind: str) -> list[list[float]]:
        """The features of each of ``cands`` (``features_from``). An FAQ entry is read as its
        question, whole text and answer sentences, its rivals being entries with another question;
        a passage as its document's title, its text and its sentences, its rivals being passages
        of other documents. Shared by serving and ``bench/fit_passage_match.py``."""
        heads = [h.question or h.text for h in cands] if kind == "faq" else [passage_heading(h) for h in cands]
        sentences = [answer_sentences(h.faq_answer if kind == "faq" else h.text) for h in cands]
        embedder = self.tuned if self.cosines == "tuned" else self.embedder
        cos_q, cos_t, cos_s = entry_cosines(embedder.embed([message])[0], heads, [h.text for h in cands], sentences,
                                            lambda texts: self._embed(texts, embedder))
        logits = self.cross.logits(message, [pair_text(h, 0) for h in cands])
        items = [(float(h.score), rival_key(h, kind), float(q), float(t), s_, float(x))
                 for h, q, t, s_, x in zip(cands, cos_q, cos_t, cos_s, logits)]
        feats = [features_from(items, j) for j in range(len(cands))]
        if self.cosines == "both":
            extra = self.cosines_of(message, cands, sentences, self.tuned)
            feats = [f + [float(extra[0][j]), float(extra[1][j]), float(extra[2][j])] for j, f in enumerate(feats)]
        return feats

    def match(self, message: str, hits: Sequence[Hit]) -> FAQMatch | None:
        cands, kind = self.candidates(hits)
        if not cands:
            return None
        p = [self.probability(f, kind) for f in self.features(message, cands, kind)]
        order = sorted(range(len(cands)), key=lambda j: (-p[j], j))  # ties: the retriever's order
        best = order[0]
        seen, rivals = {question_key(rival_key(cands[best], kind))}, []
        for j in order[1:]:
            if question_key(rival_key(cands[j], kind)) not in seen:
                seen.add(question_key(rival_key(cands[j], kind)))
                rivals.append((cands[j], p[j]))
        if kind == "passage":
            direct = float(self.passages["direct"])
        else:
            direct = self.direct_yes_no if answers_yes_no(cands[best].faq_answer) else self.direct
        return FAQMatch(cands[best], p[best], tuple(rivals), direct, kind)


def load_matcher(name: str, embedder, threads: int = 1, adapted=None) -> FAQMatcher | None:
    """The matcher ``dialogue.faq_matcher`` names: ``""`` none, ``"default"`` the bundled one
    (None when the retriever's embedder is not the one it was fitted behind), else a path (strict).
    ``adapted``: as for ``FAQMatcher.load``."""
    if not name:
        return None
    if name == "default":
        if embedder is None or not MATCH_FILE.is_file():
            return None
        try:
            fitted_for = json.loads(MATCH_FILE.read_text(encoding="utf-8")).get("embedder")
        except (OSError, ValueError):
            return None
        if fitted_for != getattr(embedder, "model_id", None):
            return None
        return FAQMatcher.load(MATCH_FILE, embedder, threads, adapted)
    return FAQMatcher.load(name, embedder, threads, adapted)
