"""Features of (sources, sentence) for the calibrated support checker.

The sources are cut into evidence sentences and those into clauses once per source set
(``Evidence``, cached by the checker: every sentence of one reply is checked against the same
sources). A reply sentence is compared with all the evidence (word and number coverage, embedding
cosines) and clause by clause with its best-matching evidence clauses (negation, conditions,
antonyms, the context of each number).

An FAQ answer that opens with "Yes." or "No." also turns its question into evidence: "Can I rent
an e-bike? Yes. ..." states that you can rent an e-bike, and supports "Yes, you can rent one".
Other questions are never evidence: their words must not support a reply claiming what they ask.

``FEATURES`` names the columns of ``sentence_features``; the bundled weights record
``FEATURE_VERSION`` and the names, so changing either means refitting (bench/train_checker.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bot.checking import text as tx
from bot.checking.quantities import Quantity, quantities, quantity_supported
from bot.checking.splitter import split_sentences

FEATURE_VERSION = 1
FEATURES = (
    "cov_all",  # share of the sentence's content words found anywhere in the sources
    "cov_best",  # ... found in the single best-covering evidence sentence
    "missing_words",  # log1p(content words not in the sources)
    "clause_cov_min",  # the least-covered clause: share of its content words in the sources
    "clause_best_min",  # ... in its best-covering evidence sentence (an invented add-on clause)
    "length",  # log1p(content words)
    "cos_max",  # max cosine to an evidence sentence
    "cos_top2",  # mean of the two best cosines
    "has_number",
    "number_missing",  # some quantity of the sentence is stated nowhere in the sources
    "number_missing_share",
    "number_context",  # 1 - (how well the clauses stating its numbers cover the sentence), worst number
    "neg_mismatch",  # some clause negated vs not, against its best-matching evidence clause
    "neg_mismatch_all",  # ... and against every evidence clause covering it nearly as well
    "condition_dropped",  # a matched evidence clause is conditional (only/unless/if), the sentence is not
    "condition_added",  # the sentence is conditional, no matched evidence sentence is
    "universal_vs_condition",  # "any"/"every"/"whenever" where the matched evidence has a condition
    "yesno_conflict",  # "Yes, ..." where the FAQ answer says "No." (or the reverse)
    "antonym",  # "free" where the matched evidence says "fee", "before" vs "after", ...
    "names_missing",  # log1p(capitalised words (names, brands, places) not in the sources)
    "filler",
)
_ANSWER_OPENER = re.compile(r"^(yes|no)\b\s*[.,!:;\u2014-]", re.IGNORECASE)


@dataclass
class Clause:
    tokens: set[str]
    words: set[str]  # stemmed, every word (antonym check)
    negative: bool
    conditional: bool  # has a condition, or a neighbouring clause is one ("X, unless Y")
    quantities: list[Quantity]
    sentence: int  # index of its evidence sentence


@dataclass
class EvidenceSentence:
    text: str
    tokens: set[str]
    quantities: list[Quantity]
    answer_polarity: int  # +1 / -1 when its passage's answer opens with "Yes." / "No.", else 0


@dataclass
class Evidence:
    """The checkable content of one source set."""

    sentences: list[EvidenceSentence]
    clauses: list[Clause]
    vectors: np.ndarray  # (n, d) L2-normalised, one row per evidence sentence
    tokens: set[str]
    names: set[str]  # stemmed words of the sources, to tell a new name from a known one
    quantities: list[Quantity]


def _clauses(text: str, sentence: int, negate: bool = False) -> list[Clause]:
    parts = tx.clauses(text) or [text]
    conds = [tx.restricted(p) for p in parts]
    openers = [tx.opens_condition(p) for p in parts]
    out = []
    for i, part in enumerate(parts):
        neighbour = (i + 1 < len(parts) and openers[i + 1]) or (i > 0 and openers[i - 1])
        out.append(Clause(
            tokens=set(tx.content_tokens(part)),
            words={tx.stem(w) for w in tx.words(part)},
            negative=tx.polarity_negative(part) != negate,
            conditional=conds[i] or bool(neighbour),
            quantities=quantities(part, generous=sentence >= 0),
            sentence=sentence,
        ))
    return out


def split_evidence(sources: Sequence[str]) -> tuple[list[EvidenceSentence], list[Clause]]:
    """(evidence sentences, their clauses) of ``sources``."""
    sents: list[EvidenceSentence] = []
    clauses: list[Clause] = []
    for passage in sources:
        start, polarity, pending_q = len(sents), None, ""
        for raw in split_sentences(passage):
            sent = tx.clean(raw)
            if not sent:
                continue
            if sent.endswith("?"):
                pending_q = sent
                continue
            if polarity is None:
                m = _ANSWER_OPENER.match(sent)
                polarity = 0 if not m else 1 if m.group(1).lower() == "yes" else -1
                if polarity and pending_q:  # "Can I X? Yes." states X; "... No." states not X
                    stated = EvidenceSentence(pending_q, set(tx.content_tokens(pending_q)),
                                              quantities(pending_q, generous=True), 0)
                    idx = len(sents)
                    sents.append(stated)
                    clause = _clauses(pending_q.rstrip("?"), idx, negate=polarity < 0)
                    rest = tx.clean(sent[len(m.group()):])
                    for c in clause:  # "Yes, in Bend only: ..." keeps its condition
                        c.conditional = c.conditional or tx.restricted(rest.split(":")[0])
                    clauses += clause
            idx = len(sents)
            sents.append(EvidenceSentence(sent, set(tx.content_tokens(sent)),
                                          quantities(sent, generous=True), 0))
            clauses += _clauses(sent, idx)
        for ev in sents[start:]:
            ev.answer_polarity = polarity or 0
    return sents, clauses


def build_evidence(sents: list[EvidenceSentence], clauses: list[Clause], vectors: np.ndarray,
                   source_words: set[str]) -> Evidence:
    tokens: set[str] = set()
    quantities: list[Quantity] = []
    for ev in sents:
        tokens |= ev.tokens
        quantities += ev.quantities
    return Evidence(sents, clauses, vectors, tokens, source_words, quantities)


def _share(tokens, pool: set[str]) -> float:
    tokens = list(tokens)
    return sum(t in pool for t in tokens) / len(tokens) if tokens else 1.0


def _overlap(a: set[str], b: set[str]) -> float:
    """|a & b| / min(|a|, |b|), 0 unless two words are shared (one when a clause has one)."""
    if not a or not b:
        return 0.0
    shared = len(a & b)
    if shared < min(2, len(a), len(b)):
        return 0.0
    return shared / min(len(a), len(b))


def sentence_features(sentence: str, vector: np.ndarray, ev: Evidence) -> np.ndarray:
    """``FEATURES`` of ``sentence`` (its L2-normalised ``vector``) against the evidence."""
    body = tx.clean(sentence)
    toks = tx.content_tokens(body)
    qs = quantities(body)
    f = dict.fromkeys(FEATURES, 0.0)
    f["length"] = math.log1p(len(toks))
    f["filler"] = float(tx.is_filler(body))
    f["has_number"] = float(bool(qs))
    f["names_missing"] = math.log1p(len(tx.capitalised(body) - ev.names))
    f["cov_all"] = _share(toks, ev.tokens)
    f["missing_words"] = math.log1p(sum(t not in ev.tokens for t in toks))
    if qs:
        missing = [not quantity_supported(q, ev.quantities) for q in qs]
        f["number_missing"] = float(any(missing))
        f["number_missing_share"] = sum(missing) / len(qs)
    if not ev.sentences:
        f["cov_all"] = f["clause_cov_min"] = f["clause_best_min"] = 0.0 if toks else 1.0
        f["number_context"] = float(bool(qs))
        return np.array([f[k] for k in FEATURES], dtype=np.float32)

    cos = ev.vectors @ vector
    order = np.argsort(-cos)
    f["cos_max"] = float(cos[order[0]])
    f["cos_top2"] = float(cos[order[:2]].mean())
    f["cov_best"] = max(_share(toks, s.tokens) for s in ev.sentences)

    # Each clause of the sentence against its best evidence clause, then polarity, conditions and
    # antonyms clause to clause. Clauses are aligned by the overlap coefficient of their content
    # words (a long reply clause may restate a short evidence clause, or the reverse), the evidence
    # sentence's cosine breaking ties; an overlap under half is no counterpart to compare with.
    matched: list[Clause] = []
    mismatch = mismatch_all = False
    mine = [c for c in _clauses(body, -1) if c.tokens]
    for c in mine:
        overlaps = [_overlap(c.tokens, e.tokens) for e in ev.clauses]
        best_i = max(range(len(overlaps)), key=lambda i: overlaps[i] + 0.5 * cos[ev.clauses[i].sentence])
        if overlaps[best_i] < 0.5:
            continue
        best = ev.clauses[best_i]
        matched.append(best)
        mismatch |= c.negative != best.negative
        floor = max(0.5, overlaps[best_i] - 0.25)
        mismatch_all |= all(e.negative != c.negative for e, o in zip(ev.clauses, overlaps) if o >= floor)
    if mine:
        f["clause_cov_min"] = min(_share(c.tokens, ev.tokens) for c in mine)
        f["clause_best_min"] = min(max(_share(c.tokens, s.tokens) for s in ev.sentences) for c in mine)
    else:
        f["clause_cov_min"] = f["clause_best_min"] = 1.0
    f["neg_mismatch"] = float(mismatch)
    f["neg_mismatch_all"] = float(mismatch_all)
    conditional = tx.restricted(body)
    matched_sents = {m.sentence for m in matched} | {int(order[0])}
    f["condition_dropped"] = float(not conditional and any(m.conditional for m in matched))
    f["condition_added"] = float(conditional and not any(
        c.conditional for c in ev.clauses if c.sentence in matched_sents))
    f["universal_vs_condition"] = float(tx.universal(body) and any(
        c.conditional for c in ev.clauses if c.sentence in matched_sents))
    answer = ev.sentences[int(order[0])].answer_polarity
    f["yesno_conflict"] = float((tx.opens_yes(body) and answer < 0) or (tx.opens_no(body) and answer > 0))
    near_words = set().union(*(m.words for m in matched)) if matched else set()
    for w in {tx.stem(w) for w in tx.words(body)}:
        opposite = tx.ANTONYMS.get(w)
        if opposite and w not in near_words and opposite & near_words:
            f["antonym"] = 1.0
            break
    # A number stated in the sources, but about something else: for each clause of the sentence,
    # how much worse the evidence sentences stating its numbers cover it than its best one does.
    worst = 0.0
    for c in mine:
        best_cov = max(_share(c.tokens, s.tokens) for s in ev.sentences)
        for q in c.quantities:
            if q.implicit:
                continue  # "a night": a unit, not a figure that could be about something else
            stating = {e.sentence for e in ev.clauses if quantity_supported(q, e.quantities)}
            fit = max((_share(c.tokens, ev.sentences[i].tokens) for i in stating), default=0.0)
            worst = max(worst, best_cov - fit)
    f["number_context"] = worst
    return np.array([f[k] for k in FEATURES], dtype=np.float32)
