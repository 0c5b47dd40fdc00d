"""Calibrate ``dialogue.direct_answer_threshold``: when the top hit is an FAQ entry that answers
the question, reply with its answer verbatim instead of generating.

For every question the policy answers (``decide`` with the shipped thresholds), the retriever's
top hit, when it is an FAQ entry (``faq_answer``), would be replied verbatim at a confidence at or
above the threshold. A direct reply is *right* when that entry is one of the question's gold
documents. Tuned on the case direct replies are for, an FAQ site: StackFAQ's user paraphrases of
help-desk questions (``stackfaq/queries_dev.jsonl``, 631 questions; the threshold is the lowest
grid point whose direct replies are right at least ``--precision`` of the time). Reported on
DSTC11 (``dialogues_train`` and ``dialogues_dev``, conversation context as the bot retrieves it):
hotel and restaurant conversations whose questions mostly need reviews or several snippets, where
a direct reply should rarely fire. Prints precision and coverage (share of answered questions
replied directly) at the chosen threshold and along the grid.

    nice python bench/calibrate_direct.py [--data ../shared/data] [--precision 0.99]

Measured (2 CPU cores, default embedder): threshold 0.825; StackFAQ precision 0.993 at coverage
0.736 of answered questions; DSTC11 train 36 direct replies of 1,456 answered turns (2.5 %,
right 0.61), dev: `supportbot eval` reports `direct_answer_rate`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from bot.evaluate import load_dialogues  # noqa: E402
from bot.policy import ANSWER, decide, direct_source  # noqa: E402
from bot.core.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GRID = [round(0.5 + 0.025 * i, 3) for i in range(20)]  # 0.5 ... 0.975


def points(kb, rows, settings, desc: str) -> tuple[list[tuple[float, bool]], int]:
    """(confidence, right) of the answered turns whose top hit is an FAQ entry, and how many
    turns the policy answers. ``rows``: (message, earlier turns, gold ids or None)."""
    retriever = kb.components.retriever(kb.bot)
    # The serving rule at threshold 0 says which answered turns could be replied directly.
    anything = settings.dialogue.model_copy(update={"direct_answer_threshold": 0.0})
    out, answered = [], 0
    for message, turns, gold in tqdm(rows, desc=desc, unit="turn"):
        hits = retriever.search(message, k=settings.dialogue.candidates, turns=turns)
        decision = decide(message, hits, settings.dialogue)
        answered += decision.action == ANSWER
        top = direct_source(decision, hits, anything)
        if top is not None:
            out.append((float(top.confidence), gold is not None and top.doc_id in set(gold)))
    return out, answered


def dialogue_rows(path: Path, context: int) -> list[tuple[str, list[dict], list[str] | None]]:
    rows = []
    for r in load_dialogues(path):
        turns = [{"role": t["role"], "text": t["text"]} for t in r["turns"]]
        rows.append((turns[-1]["text"], turns[:-1][-context:] if context else [],
                     r["gold_doc_ids"] if r["target"] else None))
    return rows


def at(points, answered: int, t: float) -> dict:
    chosen = [right for c, right in points if c >= t]
    return {"threshold": t, "direct": len(chosen), "answered": answered,
            "coverage": round(len(chosen) / answered, 4) if answered else None,
            "precision": round(sum(chosen) / len(chosen), 4) if chosen else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--data-dir", type=Path, default=Path("var"))
    ap.add_argument("--precision", type=float, default=0.99, help="wanted share of right direct replies")
    args = ap.parse_args()
    t0 = time.perf_counter()
    from bot.eval_kb import prepare_kb

    settings = Settings(data_dir=args.data_dir)
    dstc = prepare_kb(args.data / "dstc11" / "kb.jsonl", settings, progress=True)
    ctx = settings.dialogue.context_turns
    train, n_train = points(dstc, dialogue_rows(args.data / "dstc11" / "dialogues_train.jsonl", ctx), settings, "train")
    dev, n_dev = points(dstc, dialogue_rows(args.data / "dstc11" / "dialogues_dev.jsonl", ctx), settings, "dev")
    stack = prepare_kb(args.data / "stackfaq" / "kb.jsonl", settings, progress=True)
    queries = [json.loads(line) for line in (args.data / "stackfaq" / "queries_dev.jsonl").open(encoding="utf-8")
               if line.strip()]
    sq, n_sq = points(stack, [(q["query"], [], q["gold_doc_ids"]) for q in queries], settings, "stackfaq")
    ok = [t for t in GRID if (at(sq, n_sq, t)["precision"] or 0) >= args.precision]
    threshold = min(ok) if ok else 1.01
    print(json.dumps({
        "direct_answer_threshold": threshold, "wanted_precision": args.precision,
        "tune_stackfaq_queries_dev": at(sq, n_sq, threshold),
        "report_dstc11_train": at(train, n_train, threshold),
        "report_dstc11_dev": at(dev, n_dev, threshold),
        "curve_stackfaq": [at(sq, n_sq, t) for t in GRID],
        "curve_dstc11_train": [at(train, n_train, t) for t in GRID],
        "seconds": round(time.perf_counter() - t0, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
