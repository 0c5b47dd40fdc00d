"""Calibrate ``bot.fixes.DUPLICATE_COSINE``: when a question drafted from a resolved conversation
is already covered by an FAQ entry (or a fix), so that no draft is offered for it.

The visitors' questions of ``bench/faq_corpus`` (casual paraphrases, typed the way visitors type)
each name the FAQ entry that answers them. With the bundled MiniLM embedder (the retriever's), a
question is a duplicate at threshold t when its best cosine (question against entry question) over
the company's entries is >= t. Two cases per in-scope / trap question:

* its entry is in the FAQ: it should be found a duplicate (recall: the share found);
* its entry is removed (the FAQ does not cover it yet; out-of-scope questions too): it must not be
  (false drops: the share wrongly dropped, each a fix lost).

The threshold is the lowest grid point with false drops <= ``--max-drop`` on the FIT companies of
``split.json``; both rates are reported on the held-out ones too.

    nice python bench/calibrate_fix_dedup.py [--max-drop 0.05]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bot.core.settings import EmbedderSettings  # noqa: E402
from retrieval.embedder import build_embedder  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "faq_corpus"
GRID = [round(0.4 + 0.025 * i, 3) for i in range(21)]  # 0.4 ... 0.9


def company_points(embedder, folder: Path) -> tuple[list[float], list[float]]:
    """(best cosine with the entry present, best cosine with it removed) per question."""
    entries = [e["question"] for e in json.loads((folder / "expected.json").read_text())]
    questions = json.loads((folder / "questions.json").read_text())["questions"]
    ev = embedder.embed(entries)
    present, absent = [], []
    for q in questions:
        sims = ev @ embedder.embed([q["q"]])[0]
        if q["kind"] == "out_of_scope":
            absent.append(float(sims.max()))
            continue
        idx = [i for i, e in enumerate(entries) if e.strip().lower() == q["entry"].strip().lower()]
        if not idx:
            continue
        present.append(float(sims.max()))
        others = np.delete(sims, idx)
        absent.append(float(others.max()) if len(others) else -1.0)
    return present, absent


def rates(present, absent, t):
    return {"threshold": t, "recall": round(float(np.mean([p >= t for p in present])), 3),
            "false_drops": round(float(np.mean([a >= t for a in absent])), 3),
            "n_present": len(present), "n_absent": len(absent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-drop", type=float, default=0.05)
    args = ap.parse_args()
    embedder = build_embedder(EmbedderSettings()).load()
    split = json.loads((CORPUS / "split.json").read_text())
    parts = {"fit": ([], []), "held_out": ([], [])}
    for folder in sorted(p for p in CORPUS.iterdir() if (p / "expected.json").is_file()):
        present, absent = company_points(embedder, folder)
        part = parts[split.get(folder.name, "held_out")]
        part[0].extend(present)
        part[1].extend(absent)
    fit_p, fit_a = parts["fit"]
    chosen = next((t for t in GRID if rates(fit_p, fit_a, t)["false_drops"] <= args.max_drop), GRID[-1])
    print(f"{'t':>6} {'fit recall':>11} {'fit drops':>10} {'held recall':>12} {'held drops':>11}")
    for t in GRID:
        f, h = rates(fit_p, fit_a, t), rates(*parts["held_out"], t)
        mark = "  <- chosen" if t == chosen else ""
        print(f"{t:>6.3f} {f['recall']:>11.3f} {f['false_drops']:>10.3f} {h['recall']:>12.3f} {h['false_drops']:>11.3f}{mark}")
    print(json.dumps({"chosen": chosen, "fit": rates(fit_p, fit_a, chosen),
                      "held_out": rates(*parts["held_out"], chosen)}))


if __name__ == "__main__":
    main()
