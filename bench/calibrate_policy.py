"""Calibrate the dialogue policy on dev data: source selection and the answer/clarify thresholds.

Tuned on one split, reported on another (default: tune on dstc11 dialogues_train, report on
dialogues_dev), with the real retriever (hybrid, default embedder) over each knowledge base:

* selection (``select_margin``, ``select_same_entity``, ``select_min_confidence``, ``max_sources``):
  the grid point with the best micro selection F1 on the tuning split's knowledge-seeking turns,
  counting a turn's selection whatever the decision (the thresholds are chosen next);
* thresholds (``answer_threshold``, ``clarify_threshold``): the pair with the best mean utility
  over five groups, each weighted equally (dstc11 in scope / off-task / out of scope, sample FAQ
  in scope / out of scope):
    in scope    dstc11 knowledge-seeking turns, and paraphrased sample-FAQ questions (below)
                answer 1, clarify 0.5, hand off 0
    off-task    dstc11 turns that need no knowledge ("a 4-star hotel in the north, please")
                answer 0, clarify 1, hand off 1   (nothing to ground an answer in)
    out of scope  bot/out_of_scope.json (weather, jokes, other companies, coding, ...) asked of
                both bots                 answer 0, clarify 0.5, hand off 1
  Clarify is half-right for an in-scope or out-of-scope question: it invents nothing but does
  not help yet.

Prints one JSON object: the chosen values, the tuning and report figures (selection P/R/F1,
decision accuracy per group), and the defaults to store in ``DialogueSettings``.

    nice python bench/calibrate_policy.py [--tune train] [--report dev] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bot.evaluate import load_dialogues, out_of_scope_questions, selection_counts  # noqa: E402
from bot.policy import ANSWER, CLARIFY, HANDOFF, decide  # noqa: E402
from bot.selection import RuleSelector  # noqa: E402
from bot.core.settings import DialogueSettings, Settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Sample-FAQ questions in the visitor's words (not the FAQ's own wording).
FAQ_IN_SCOPE = [
    "I forgot my password, how can I get back into my account?",
    "my account got locked after too many tries",
    "can I set up 2FA on my login?",
    "I need to update the email on my account",
    "how can I close my account for good?",
    "do you take PayPal?",
    "at what point do you charge my credit card?",
    "I see two charges for one order on my statement",
    "will I pay sales tax on my order?",
    "the jacket I bought went on sale last week, can I get the difference back?",
    "where do I enter a discount code?",
    "I need a receipt for my company",
    "can I still cancel the order I placed an hour ago?",
    "what does 'processing' mean on my order?",
    "one item in my box is missing",
    "how many days do I have to send something back?",
    "how do I send back an item?",
    "do I have to pay for the return label?",
    "are there things I cannot return?",
    "how soon will I see my refund?",
    "can I swap these boots for a bigger size?",
    "what are your delivery charges?",
    "how many days until my parcel arrives?",
    "do you deliver to Canada?",
    "can you send my order to a post office box?",
    "where is my package right now?",
    "it says delivered but nothing is at my door",
    "my tent arrived broken",
    "what does your lifetime guarantee include?",
    "my zipper broke, is that covered?",
    "do gift cards have an expiry date?",
    "can I rent a tent instead of buying one?",
    "will you match a lower price from another shop?",
    "how do I stop getting your newsletters?",
]

SELECTION_GRID = {
    "select_margin": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
    "select_same_entity": [True, False],
    "select_min_confidence": [0.0, 0.1, 0.3],
    "max_sources": [1, 2, 3, 4, 5, 6, 8],
}
THRESHOLDS = [round(x, 3) for x in np.arange(0.0, 1.0001, 0.025)]
UTILITY = {
    "in_scope": {ANSWER: 1.0, CLARIFY: 0.5, HANDOFF: 0.0},
    "off_task": {ANSWER: 0.0, CLARIFY: 1.0, HANDOFF: 1.0},
    "out_of_scope": {ANSWER: 0.0, CLARIFY: 0.5, HANDOFF: 1.0},
}


def kb_components(kb: Path, settings: Settings):
    """Components serving ``kb`` (a JSONL file or a folder) as bot ``eval``, ingested once."""
    from bot.eval_kb import EVAL_BOT, prepare_kb

    if kb.is_file():
        return prepare_kb(kb, settings, progress=True).components, EVAL_BOT
    from bot.components import Components

    comps = Components(settings.model_copy(update={"data_dir": settings.data_dir / "calib-faq", "database_url": ""}))
    report = comps.knowledge.ingest(EVAL_BOT, [kb], progress=False)
    assert not report.errors, report.errors
    return comps, EVAL_BOT


def collect(retriever, cases, k: int) -> list[dict]:
    """Run the retriever once per case; keep the hits for the grid searches."""
    from tqdm import tqdm

    out = []
    for case in tqdm(cases, desc=f"retrieving ({cases[0]['group'] if cases else ''})", unit="q"):
        turns = case["turns"]
        hits = retriever.search(turns[-1]["text"], k=k, turns=turns[:-1][-6:])
        out.append({**case, "hits": hits})
    return out


def dialogue_cases(path: Path) -> list[dict]:
    return [
        {"group": "in_scope:dstc11" if r["target"] else "off_task:dstc11", "turns": r["turns"], "gold": r["gold_doc_ids"],
         "target": r["target"]}
        for r in load_dialogues(path)
    ]


def single_cases(questions, group: str) -> list[dict]:
    return [{"group": group, "turns": [{"role": "user", "text": q}], "gold": [], "target": False} for q in questions]


def selection_prf(cases, settings: DialogueSettings, selector=None) -> tuple[float, float, float]:
    tp = fp = fn = 0
    for c in cases:
        if not c["target"]:
            continue
        chosen = (selector or RuleSelector(settings)).select(
            c["turns"][-1]["text"], c["hits"], settings.max_sources).passages
        pred = [h.doc_id for h in chosen]
        a, b, d = selection_counts(c["gold"], pred)
        tp, fp, fn = tp + a, fp + b, fn + d
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def tune_selection(cases) -> tuple[dict, tuple]:
    best, best_f = None, (-1.0, 0.0, 0.0)
    keys = list(SELECTION_GRID)
    for values in itertools.product(*(SELECTION_GRID[k] for k in keys)):
        params = dict(zip(keys, values))
        prf = selection_prf(cases, DialogueSettings(**params))
        if prf[2] > best_f[2]:
            best, best_f = params, prf
    return best, best_f


def decisions(cases, settings: DialogueSettings) -> dict[str, dict[str, float]]:
    """Per group: mean utility, strict accuracy (answer iff in scope) and the decision mix."""
    groups: dict[str, list[str]] = {}
    for c in cases:
        message = c["turns"][-1]["text"]
        groups.setdefault(c["group"], []).append(decide(message, c["hits"], settings).action)
    out = {}
    for g, acts in groups.items():
        n = len(acts)
        kind = g.split(":")[0]
        right = sum((a == ANSWER) == (kind == "in_scope") for a in acts)
        out[g] = {
            "n": n,
            "utility": sum(UTILITY[kind][a] for a in acts) / n,
            "accuracy": right / n,
            **{f"{a}_rate": sum(x == a for x in acts) / n for a in (ANSWER, CLARIFY, HANDOFF)},
        }
    return out


def tune_thresholds(cases, base: DialogueSettings) -> tuple[float, float, float]:
    best = (-1.0, 0.0, 0.0)
    for a in THRESHOLDS:
        for c in THRESHOLDS:
            if c > a:
                continue
            s = base.model_copy(update={"answer_threshold": a, "clarify_threshold": c})
            d = decisions(cases, s)
            u = float(np.mean([v["utility"] for v in d.values()]))
            # ties: prefer the higher answer threshold (refuse rather than invent)
            if u > best[0] + 1e-9 or (abs(u - best[0]) <= 1e-9 and a > best[1]):
                best = (u, a, c)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--tune", default="train", help="dstc11 split to tune on")
    ap.add_argument("--report", default="dev", help="dstc11 split to report on")
    ap.add_argument("--data-dir", type=Path, default=Path("var"), help="scratch data dir (KB caches)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(1)  # two threads thrash on a shared 2-core machine
    settings = Settings(data_dir=args.data_dir)
    k = settings.dialogue.candidates
    oos = out_of_scope_questions()

    dstc, bot = kb_components(args.data / "dstc11" / "kb.jsonl", settings)
    dstc_retriever = dstc.retriever(bot)
    faq, fbot = kb_components(REPO / "samples" / "faq", settings)
    faq_retriever = faq.retriever(fbot)

    tune = collect(dstc_retriever, dialogue_cases(args.data / "dstc11" / f"dialogues_{args.tune}.jsonl"), k)
    report = collect(dstc_retriever, dialogue_cases(args.data / "dstc11" / f"dialogues_{args.report}.jsonl"), k)
    shared = (
        collect(dstc_retriever, single_cases(oos, "out_of_scope:dstc11"), k)
        + collect(faq_retriever, single_cases(oos, "out_of_scope:faq"), k)
        + collect(faq_retriever, single_cases(FAQ_IN_SCOPE, "in_scope:faq"), k)
    )

    sel_params, sel_tune = tune_selection(tune)
    sel_params["selector"] = ""
    # The learned selector (bench/train_selector.py), when one is bundled for this embedder.
    from bot.selection import build_selector
    from retrieval.snapshot import StoredVectors

    learned = build_selector(settings.dialogue.model_copy(update={"selector": "auto"}), dstc.embedder,
                             stored_vectors=StoredVectors(dstc.live(bot).get))
    if isinstance(learned, RuleSelector):
        learned = None
    learned_figs = {}
    if learned is not None:
        for m in SELECTION_GRID["max_sources"]:
            prf = selection_prf(tune, DialogueSettings(max_sources=m), learned)
            learned_figs[m] = prf
        m_best = max(learned_figs, key=lambda m: learned_figs[m][2])
        if learned_figs[m_best][2] > sel_tune[2]:
            sel_params = {**sel_params, "selector": "auto", "max_sources": m_best}
            sel_tune = learned_figs[m_best]
    base = DialogueSettings(**sel_params)
    chosen_selector = learned if base.selector else None
    utility, answer_t, clarify_t = tune_thresholds(tune + shared, base)
    chosen = base.model_copy(update={"answer_threshold": answer_t, "clarify_threshold": clarify_t})
    sel_report = selection_prf(report, chosen, chosen_selector)
    # the uncalibrated rule, for comparison in the same run
    sel_default = selection_prf(report, DialogueSettings(select_margin=0.3, select_same_entity=True,
                                                         select_min_confidence=0.0, max_sources=4))

    def fig(prf):
        return {"precision": round(prf[0], 4), "recall": round(prf[1], 4), "f1": round(prf[2], 4)}

    def dec(cases):
        return {g: {k2: round(v, 4) for k2, v in d.items()} for g, d in decisions(cases, chosen).items()}

    print(json.dumps({
        "tuned_on": f"dstc11 {args.tune} ({len(tune)} turns) + sample FAQ paraphrases ({len(FAQ_IN_SCOPE)}) "
                    f"+ out-of-scope ({len(oos)} x 2 bots)",
        "reported_on": f"dstc11 {args.report} ({len(report)} turns)",
        "selection": {**sel_params, "tune": fig(sel_tune), "report": fig(sel_report),
                      "report_rule_margin0.3_max4": fig(sel_default),
                      "learned_tune_by_max_sources": {m: fig(v) for m, v in learned_figs.items()}},
        "thresholds": {"answer_threshold": answer_t, "clarify_threshold": clarify_t,
                       "tune_mean_utility": round(utility, 4)},
        "decisions_report_dstc11": dec(report),
        "decisions_shared_sets": dec(shared),
        "store_as_defaults": {**sel_params, "answer_threshold": answer_t, "clarify_threshold": clarify_t},
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "2-core CPU, shared with other jobs; figures are retrieval/selection only (no generator)",
    }, indent=1))


if __name__ == "__main__":
    main()
