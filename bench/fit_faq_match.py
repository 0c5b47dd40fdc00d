"""Fit the FAQ matcher (``bot/faq_match.py``): P(the top FAQ entry answers the visitor's question)
from nine features of the retriever's FAQ hits, and the two thresholds the policy uses.

Input: the rows ``bench/faq_decision_data.py`` writes (every question of ``bench/faq_corpus``'s
``questions.json`` and ``paraphrases.json`` files and the sample FAQ's, and StackFAQ dev's
paraphrases, with their FAQ hits). Features of each FAQ hit (``bot.faq_match.features_from``,
shared with serving): its fused retrieval score's margin over the best entry with another question,
its embedding cosines with the question, the whole entry and the closest answer sentence, the
support cross-encoder's logit on the pair, that logit's margin over the best rival's, and each
cosine's margin over the best rival's.

Examples: one per (question, FAQ hit), positive when the hit is the question's expected entry; the
questions are every question of the fit companies and each question whose expected entry is among
its hits once more with that entry removed ("gold removed": what a visitor asks when the FAQ lacks
the answer, with the hardest distractors a site has: all its hits negative); out-of-scope questions
have only negatives. The matcher replies with the entry of highest P.

Fitted on the ``fit`` companies of ``bench/faq_corpus/split.json`` only (nothing else is read
for the weights or the thresholds). Reported on the ``held_out`` companies and the sample FAQ
(never fitted on by the matcher or the cross-encoder) and on StackFAQ dev, split into the threads
the cross-encoder was trained on and those it was not (``stackfaq_held``). Adding StackFAQ to the
fit was tried: its web-app threads, several answers each, make the embedding cosine dominate and
the held-out companies' right share fell from 0.66 to 0.50 at the same precision. Thresholds: ``direct`` the lowest P whose direct replies (the entry's own answer)
are right at least ``--precision`` of the time on the fit companies' questions (benchmark and
paraphrases, out-of-scope ones included; gold-removed variants only with
``--removed-in-thresholds``); ``clarify`` the lowest P where asking back is still right (the
expected entry is among the topics a clarifying question offers, ``offered``) at least half of the time. The written
paraphrases are harder than the benchmark's questions: the matcher fitted before them (four
features, benchmark questions only) answered 0.44 of them right and 38% of their near-miss
out-of-scope questions; ``fit_leave_one_company_out`` in the output fits without each fit company
in turn and judges its questions at the thresholds fitted without it.

    python bench/faq_decision_data.py --top 8 && python bench/fit_faq_match.py --write
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from bot.core.settings import DialogueSettings  # noqa: E402
from bot.cross_selector import BUNDLED_CROSS  # noqa: E402
from bot.faq_match import FEATURES, MATCH_FILE, answers_yes_no, features_from  # noqa: E402
from retrieval.types import question_key  # noqa: E402

FIT_PARTS = ("fit",)
# What a clarifying question offers, as the default settings have it.
CLARIFY_RATIO, CLARIFY_TOPICS = DialogueSettings().clarify_ratio, DialogueSettings().clarify_topics
CROSS = "support"  # the cross-encoder whose logits bench/faq_decision_data.py recorded (x_support)


FAQ_EMBEDDER = "faq-minilm-lora"  # the FAQ embedder's adapter folder beside faq-match.json


def hit_features(hits: list[dict], cosines: str) -> list[list[float]]:
    """The matcher's features of each FAQ hit of one question (``features_from``, shared with
    serving), from the embedder's cosines ``cosines`` names: stock, tuned (ft_*) or both."""
    keys = ("ft_q", "ft_t", "ft_s") if cosines == "tuned" else ("cos_q", "cos_t", "cos_s")
    items = [(f["score"], f["question"], f[keys[0]], f[keys[1]], f[keys[2]], f["x_support"]) for f in hits]
    out = [features_from(items, j) for j in range(len(items))]
    if cosines == "both":
        out = [x + [f["ft_q"], f["ft_t"], f["ft_s"]] for x, f in zip(out, hits)]
    return out


def groups(rows: list[dict], cosines: str, removed: bool = True) -> list[dict]:
    """One group per question (and, with ``removed``, per gold-removed question): the features
    of each of its FAQ hits, which of them is an expected entry, and its row."""
    out = []
    for r in rows:
        faq = r["faq"]
        if not faq:
            continue
        variants = [(faq, r)]
        if removed and r["kind"] != "out_of_scope" and any(f["right"] for f in faq):
            rest = [f for f in faq if not f["right"]]
            if rest:
                variants.append((rest, {**r, "kind": "gold_removed"}))
        for hits, row in variants:
            answerable = row["kind"] in ("in_scope", "trap")
            out.append({"x": hit_features(hits, cosines), "questions": [question_key(f["question"]) for f in hits],
                        "right": [bool(answerable and f["right"]) for f in hits],
                        "yes_no": [answers_yes_no(f.get("answer")) for f in hits], "row": row})
    return out


def best(model, group) -> tuple[float, bool]:
    """(P, right) of the entry the matcher would pick in ``group``."""
    p = model.predict_proba(np.array(group["x"]))[:, 1]
    j = int(np.argmax(p))
    return float(p[j]), group["right"][j]


def picked_yes_no(model, group) -> bool:
    """Does the answer of the entry the matcher would pick open with a yes or a no?"""
    p = model.predict_proba(np.array(group["x"]))[:, 1]
    return bool(group.get("yes_no", [False] * len(p))[int(np.argmax(p))])


def direct_of(thresholds: dict, model, group) -> float:
    """The direct threshold for the entry the matcher would pick in ``group`` (serving's
    ``FAQMatch.direct``)."""
    return thresholds["direct_yes_no"] if picked_yes_no(model, group) else thresholds["direct"]


def offered(model, group, ratio: float = CLARIFY_RATIO, topics: int = CLARIFY_TOPICS) -> list[int]:
    """The hits a clarifying question offers, as serving picks them (``bot/pipeline.py``): the
    likeliest entry and the likeliest entries with other questions whose P is at least ``ratio``
    of its, ``topics`` in all."""
    p = model.predict_proba(np.array(group["x"]))[:, 1]
    order = sorted(range(len(p)), key=lambda j: (-p[j], j))
    out, seen = [order[0]], {group["questions"][order[0]]}
    for j in order[1:]:
        if len(out) >= topics:
            break
        if group["questions"][j] not in seen and p[j] >= ratio * p[order[0]]:
            seen.add(group["questions"][j])
            out.append(j)
    return out


def report(model, gs, thresholds: dict) -> dict:
    """Per kind of question: answered (directly), answered with a right entry, asked back."""
    out = {}
    picks = [best(model, g) for g in gs]
    direct = [direct_of(thresholds, model, g) for g in gs]
    clarify = thresholds["clarify"]
    for kind in ("in_scope", "trap", "out_of_scope", "gold_removed"):
        idx = [i for i, g in enumerate(gs) if g["row"]["kind"] == kind]
        if not idx:
            continue
        answered = [i for i in idx if picks[i][0] >= direct[i]]
        out[kind] = {"n": len(idx), "answered": round(len(answered) / len(idx), 4),
                     "answered_right": round(sum(picks[i][1] for i in answered) / len(idx), 4),
                     "asked_back": round(sum(clarify <= picks[i][0] < direct[i] for i in idx) / len(idx), 4)}
        if kind in ("in_scope", "trap"):
            out[kind]["top1"] = round(sum(picks[i][1] for i in idx) / len(idx), 4)
    return out


def fit_matcher(fit: list[dict], precision: float, removed_in_thresholds: bool = False, split_yes_no: bool = False):
    """(model, thresholds) fitted on the groups ``fit``: thresholds ``direct``, ``direct_yes_no``
    (for entries whose answer opens with yes/no; ``split_yes_no`` False: the same as ``direct``)
    and ``clarify``."""
    # One example per (question, FAQ hit): positive when the hit is an expected entry.
    x = np.array([f for g in fit for f in g["x"]])
    y = np.array([r for g in fit for r in g["right"]])
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    # Thresholds over the fit companies' real questions (benchmark and written paraphrases:
    # in-scope, traps, out-of-scope ones, most of those near misses); the gold-removed variants
    # are training negatives only (``--removed-in-thresholds`` counts them too, as before the
    # paraphrases: with only the benchmark's 3 out-of-scope questions per company they were the
    # only hard negatives, and they made the direct threshold strict).
    chosen = [g for g in fit if removed_in_thresholds or g["row"]["kind"] != "gold_removed"]
    picks = [best(model, g) for g in chosen]
    p = np.array([pk[0] for pk in picks])
    right = np.array([pk[1] for pk in picks])
    yes_no = np.array([picked_yes_no(model, g) for g in chosen]) if split_yes_no else np.zeros(len(chosen), bool)
    grid = [round(0.05 * i, 2) for i in range(2, 20)]

    def lowest(mask: np.ndarray) -> float:
        """The lowest P whose direct replies among ``mask`` are right ``precision`` of the time."""
        return next((t for t in grid if (mask & (p >= t)).any() and right[mask & (p >= t)].mean() >= precision),
                    grid[-1])

    # With ``split_yes_no`` (``--split-yes-no``; tried 2026-12-03, not adopted: README, Answer
    # quality) entries whose answer opens with yes/no get their own threshold, each group's fitted
    # by the same rule on its own picks.
    direct = lowest(~yes_no)
    direct_yes_no = lowest(yes_no) if yes_no.any() else direct
    at = np.where(yes_no, direct_yes_no, direct)
    # Asking back is worth it when an expected entry is among the topics offered (``offered``: as
    # serving offers them; before 2026-12-03 the first two hits in the retriever's order).
    useful = np.array([any(g["right"][j] for j in offered(model, g)) for g in chosen])
    band = lambda t: (p >= t) & (p < at)  # noqa: E731
    top = min(direct, direct_yes_no)
    clarify = next((t for t in grid if t < top and band(t).any() and useful[band(t)].mean() >= 0.5), top)
    return model, {"direct": direct, "direct_yes_no": direct_yes_no, "clarify": clarify}


def leave_one_site_out(fit: list[dict], precision: float, removed_in_thresholds: bool = False,
                       split_yes_no: bool = False) -> dict:
    """Each site of the groups ``fit`` (gold-removed variants included, as ``groups`` builds them)
    judged by a matcher fitted on the others: its questions (no gold-removed variants) at the
    thresholds fitted without it. Shared with ``bench/fit_passage_match.py``."""
    # Per kind; "benchmark_out_of_scope": the answer benchmark's own out-of-scope questions (its
    # target is answering at most 3% of them), apart from the written near misses.
    counts = {"in_scope": [0, 0], "trap": [0, 0], "out_of_scope": [0, 0], "benchmark_out_of_scope": [0, 0]}
    for site in sorted({g["row"]["site"] for g in fit}):
        model, thresholds = fit_matcher([g for g in fit if g["row"]["site"] != site], precision,
                                        removed_in_thresholds, split_yes_no)
        for g in fit:
            if g["row"]["site"] != site or g["row"]["kind"] == "gold_removed":
                continue
            p, right = best(model, g)
            direct = direct_of(thresholds, model, g)
            kind = g["row"]["kind"]
            kinds = [kind] + (["benchmark_out_of_scope"] if kind == "out_of_scope"
                              and g["row"].get("source", "benchmark") == "benchmark" else [])
            for k in kinds:
                counts[k][0] += bool(p >= direct and (right or kind == "out_of_scope"))
                counts[k][1] += 1
    return {f"{kind}_answered{'' if kind.endswith('out_of_scope') else '_right'}": round(a / n, 4) if n else None
            for kind, (a, n) in counts.items()} | {"n": {kind: n for kind, (_, n) in counts.items()}}


def by_company(rows: list[dict], cosines: str, precision: float, removed_in_thresholds: bool,
               split_yes_no: bool = False) -> dict:
    """Leave one fit company out (``leave_one_site_out``) over the fit companies' rows."""
    fit_rows = [r for r in rows if r["part"] in FIT_PARTS]
    return leave_one_site_out(groups(fit_rows, cosines), precision, removed_in_thresholds, split_yes_no)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, default=REPO / "var" / "bench" / "faq_decision.jsonl")
    # Precision of direct replies on the fit companies' questions (fit_matcher).
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--removed-in-thresholds", action="store_true",
                    help="count the gold-removed variants in the thresholds' precision too")
    ap.add_argument("--write", action="store_true", help=f"write the weights into {MATCH_FILE}")
    ap.add_argument("--split-yes-no", action="store_true",
                    help="a direct threshold of their own for entries whose answer opens with yes/no (not adopted)")
    ap.add_argument("--cosines", choices=("stock", "tuned", "both"), default="stock",
                    help="the stock embedder's cosines, the FAQ embedder's (ft_*: bench/train_faq_embedder.py writes them into --rows) or both")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.rows.open()]
    fit = groups([r for r in rows if r["part"] in FIT_PARTS], args.cosines)
    model, thresholds = fit_matcher(fit, args.precision, args.removed_in_thresholds, args.split_yes_no)
    cross_meta = json.loads((BUNDLED_CROSS[CROSS] / "selector.json").read_text())
    cosines = {"cosines": args.cosines} | ({"faq_embedder": FAQ_EMBEDDER} if args.cosines != "stock" else {})
    result = {"features": FEATURES, **cosines, "cross": CROSS, "embedder": cross_meta["embedder"], "weights": [round(float(w), 4) for w in model.coef_[0]],
              "bias": round(float(model.intercept_[0]), 4), "direct": thresholds["direct"],
              **({"direct_yes_no": thresholds["direct_yes_no"]} if args.split_yes_no else {}), "clarify": thresholds["clarify"],
              "precision_target": args.precision, "fitted_on": list(FIT_PARTS),
              "fit_questions": len(fit), "fit_sources": sorted({g["row"].get("source", "benchmark") for g in fit}), "fit_pairs": sum(len(g["right"]) for g in fit),
              "fit_positives": sum(sum(g["right"]) for g in fit)}
    figures = {part: report(model, groups([r for r in rows if r["part"] == part], args.cosines), thresholds)
               for part in ("fit", "stackfaq_held", "held_out", "stackfaq_fit") if any(r["part"] == part for r in rows)}
    figures["fit_leave_one_company_out"] = by_company(rows, args.cosines, args.precision, args.removed_in_thresholds,
                                                      args.split_yes_no)
    print(json.dumps(result))
    for part, fig in figures.items():
        print(part, json.dumps(fig))
    if args.write:
        current = json.loads(MATCH_FILE.read_text()) if MATCH_FILE.is_file() else {}
        current.update(result)
        if not args.split_yes_no:
            current.pop("direct_yes_no", None)
        if args.cosines == "stock":
            current.pop("faq_embedder", None)
        current["figures"] = figures
        MATCH_FILE.write_text(json.dumps(current, indent=1) + "\n")
        print(f"wrote {MATCH_FILE}")


if __name__ == "__main__":
    main()
