"""Fit the FAQ matcher (``bot/faq_match.py``): P(the top FAQ entry answers the visitor's question)
from four features of the retriever's FAQ hits, and the two thresholds the policy uses.

Input: the rows ``bench/faq_decision_data.py`` writes (every question of ``bench/faq_corpus`` and
the sample FAQ, and StackFAQ dev's paraphrases, with their FAQ hits). Features of a question's top
FAQ entry (``bot.faq_match.features``, shared with serving): its fused retrieval score's margin
over the next entry with another question, its embedding cosine with the question, the support
cross-encoder's logit on the pair, and that logit's margin over the next entry's.

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
are right at least ``--precision`` of the time on the fit examples, gold-removed ones included;
``clarify`` the lowest P where asking back is still right (the expected entry is among the two
offered topics) at least half of the time.

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

from bot.cross_selector import BUNDLED_CROSS  # noqa: E402
from bot.faq_match import FEATURES, MATCH_FILE, features_from  # noqa: E402

FIT_PARTS = ("fit",)
CROSS = "support"  # the cross-encoder whose logits bench/faq_decision_data.py recorded (x_support)


def groups(rows: list[dict], removed: bool = True) -> list[dict]:
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
            items = [(f["score"], f["question"], f["cos_q"], f["x_support"]) for f in hits]
            answerable = row["kind"] in ("in_scope", "trap")
            out.append({"x": [features_from(items, j) for j in range(len(items))],
                        "right": [bool(answerable and f["right"]) for f in hits], "row": row})
    return out


def best(model, group) -> tuple[float, bool]:
    """(P, right) of the entry the matcher would pick in ``group``."""
    p = model.predict_proba(np.array(group["x"]))[:, 1]
    j = int(np.argmax(p))
    return float(p[j]), group["right"][j]


def report(model, gs, direct: float, clarify: float) -> dict:
    """Per kind of question: answered (directly), answered with a right entry, asked back."""
    out = {}
    picks = [best(model, g) for g in gs]
    for kind in ("in_scope", "trap", "out_of_scope", "gold_removed"):
        idx = [i for i, g in enumerate(gs) if g["row"]["kind"] == kind]
        if not idx:
            continue
        answered = [i for i in idx if picks[i][0] >= direct]
        out[kind] = {"n": len(idx), "answered": round(len(answered) / len(idx), 4),
                     "answered_right": round(sum(picks[i][1] for i in answered) / len(idx), 4),
                     "asked_back": round(sum(clarify <= picks[i][0] < direct for i in idx) / len(idx), 4)}
        if kind in ("in_scope", "trap"):
            out[kind]["top1"] = round(sum(picks[i][1] for i in idx) / len(idx), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, default=REPO / "var" / "bench" / "faq_decision.jsonl")
    # Precision of direct replies on the fit examples, gold-removed ones included (harder than real
    # out-of-scope questions: the FAQ's nearest other entry often half answers them).
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--write", action="store_true", help=f"write the weights into {MATCH_FILE}")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.rows.open()]
    fit = groups([r for r in rows if r["part"] in FIT_PARTS])
    # One example per (question, FAQ hit): positive when the hit is an expected entry.
    x = np.array([f for g in fit for f in g["x"]])
    y = np.array([r for g in fit for r in g["right"]])
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    picks = [best(model, g) for g in fit]
    p = np.array([pk[0] for pk in picks])
    right = np.array([pk[1] for pk in picks])
    grid = [round(0.05 * i, 2) for i in range(2, 20)]
    direct = next((t for t in grid if (p >= t).any() and right[p >= t].mean() >= args.precision), grid[-1])
    # Asking back is worth it when an expected entry is among the topics offered (the two likeliest).
    useful = np.array([pk[1] or any(g["right"][:2]) for pk, g in zip(picks, fit)])
    band = lambda t: (p >= t) & (p < direct)  # noqa: E731
    clarify = next((t for t in grid if t < direct and band(t).any() and useful[band(t)].mean() >= 0.5), direct)
    cross_meta = json.loads((BUNDLED_CROSS[CROSS] / "selector.json").read_text())
    result = {"features": FEATURES, "cross": CROSS, "embedder": cross_meta["embedder"], "weights": [round(float(w), 4) for w in model.coef_[0]],
              "bias": round(float(model.intercept_[0]), 4), "direct": direct, "clarify": clarify,
              "precision_target": args.precision, "fitted_on": list(FIT_PARTS),
              "fit_questions": len(fit), "fit_pairs": int(len(y)), "fit_positives": int(y.sum())}
    figures = {part: report(model, groups([r for r in rows if r["part"] == part]), direct, clarify)
               for part in ("fit", "stackfaq_held", "held_out", "stackfaq_fit")}
    print(json.dumps(result))
    for part, fig in figures.items():
        print(part, json.dumps(fig))
    if args.write:
        current = json.loads(MATCH_FILE.read_text()) if MATCH_FILE.is_file() else {}
        current.update(result)
        current["figures"] = figures
        MATCH_FILE.write_text(json.dumps(current, indent=1) + "\n")
        print(f"wrote {MATCH_FILE}")


if __name__ == "__main__":
    main()
