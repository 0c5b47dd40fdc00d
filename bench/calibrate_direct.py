"""Calibrate ``dialogue.direct_answer_threshold``: when the selector is confident that an FAQ entry
answers the question, reply with that entry's own answer verbatim instead of generating.

For every question the bot would answer, the serving rule (``bot.policy.direct_source`` with the
threshold at 0) names the FAQ entry it would reply with and the selector's P(grounds the answer)
of it; the reply is *right* when that entry is the question's expected one. The threshold is the
lowest grid point whose direct replies are right at least ``--precision`` of the time on the FIT
part only:

* the fit companies of ``bench/faq_corpus`` (``split.json``): visitors' in-scope and trap questions
  with their expected entry;
* StackFAQ's user paraphrases of help-desk questions (``stackfaq/queries_dev.jsonl``) of the threads
  the selector was fitted on (the others are listed as held out in its ``selector.json``).

Reported at that threshold on what nothing was fitted on: the held-out companies, the sample FAQ's
questions, the held-out StackFAQ threads; and the DSTC11 dev conversations (hotel and restaurant
questions that mostly need reviews, where a direct reply should rarely fire).

    nice python bench/calibrate_direct.py [--data ../shared/data] [--precision 0.99] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from bot.components import Components  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.eval_kb import prepare_kb  # noqa: E402
from bot.evaluate import load_dialogues  # noqa: E402
from bot.policy import ANSWER, decide, direct_source, with_selection  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "bench" / "faq_corpus"
GRID = [round(0.3 + 0.025 * i, 3) for i in range(28)]  # 0.3 ... 0.975


def points(pipeline, rows, desc: str) -> tuple[list[tuple[float, bool]], int]:
    """(P of the entry a direct reply would quote, right) per question the bot answers, and how
    many it answers. ``rows``: (message, earlier turns, is_right(hit) or None)."""
    anything = pipeline.settings.model_copy(update={"direct_answer_threshold": 0.0})
    out, answered = [], 0
    for message, turns, is_right in tqdm(rows, desc=desc, unit="q"):
        hits = pipeline.retrieve(message, turns)
        selection = pipeline.select(message, hits, turns)
        decision = with_selection(decide(message, hits, pipeline.settings), selection)
        answered += decision.action == ANSWER
        entry = direct_source(decision, hits, anything, selection)
        if entry is not None and selection.scores is not None:
            p = selection.scores[[h.chunk_id for h in selection.passages].index(entry.chunk_id)]
            out.append((float(p), bool(is_right and is_right(entry))))
    return out, answered


def at(pts, answered: int, t: float) -> dict:
    chosen = [right for p, right in pts if p >= t]
    return {"threshold": t, "direct": len(chosen), "answered": answered,
            "coverage": round(len(chosen) / answered, 4) if answered else None,
            "precision": round(sum(chosen) / len(chosen), 4) if chosen else None}


def corpus_rows(questions: list[dict]):
    def right_entry(expected: str):
        return lambda hit: hit.question.strip().lower() == expected.strip().lower()

    return [(q["q"], [], right_entry(q["entry"])) for q in questions if q["kind"] in ("in_scope", "trap")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--data-dir", type=Path, default=Path("var"))
    ap.add_argument("--precision", type=float, default=0.99, help="wanted share of right direct replies")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    settings = Settings(data_dir=args.data_dir)
    scratch = Settings(data_dir=Path(tempfile.mkdtemp(prefix="calib-direct-", dir=args.data_dir)))
    comps = Components(scratch)
    split = json.loads((CORPUS / "split.json").read_text())
    built = Path(tempfile.mkdtemp(prefix="docx-", dir=args.data_dir))
    sys.path.insert(0, str(CORPUS))
    from build_docx import build_all

    docx = build_all(built)
    fit, held, sample = [], [], []
    for folder in sorted(p for p in CORPUS.iterdir() if (p / "questions.json").is_file()):
        bot = re.sub(r"[^a-z0-9-]", "-", folder.name)
        files = [p for p in folder.iterdir() if p.suffix not in (".json", ".py")] or [docx[folder.name]]
        comps.knowledge.ingest(bot, files, progress=False)
        pts = points(comps.pipeline(bot, with_generator=False),
                     corpus_rows(json.loads((folder / "questions.json").read_text())["questions"]), folder.name)
        (fit if split.get(folder.name) == "fit" else held).append(pts)
    comps.knowledge.ingest("sample-faq", [REPO / "samples" / "faq"], progress=False)
    sample.append(points(comps.pipeline("sample-faq", with_generator=False),
                         corpus_rows(json.loads((CORPUS / "sample_faq_questions.json").read_text())["questions"]),
                         "sample-faq"))

    stack = prepare_kb(args.data / "stackfaq" / "kb.jsonl", settings, progress=True)
    stack_pipe = stack.components.pipeline(stack.bot, with_generator=False)
    held_threads = set((getattr(stack_pipe.selector, "meta", {}).get("held_out") or {}).get("stackfaq_threads", []))
    queries = [json.loads(line) for line in (args.data / "stackfaq" / "queries_dev.jsonl").open(encoding="utf-8")
               if line.strip()]

    def gold_rows(qs):
        return [(q["query"], [], (lambda gold: (lambda hit: hit.doc_id in gold))(set(q["gold_doc_ids"]))) for q in qs]

    def thread(q) -> int:  # gold ids are "stackfaq:<thread>:<n>"
        return int(q["gold_doc_ids"][0].split(":")[1])

    sq_fit = points(stack_pipe, gold_rows([q for q in queries if thread(q) not in held_threads]), "stackfaq fit")
    sq_held = points(stack_pipe, gold_rows([q for q in queries if thread(q) in held_threads]), "stackfaq held out")

    def merged(parts):
        return [p for pts, _ in parts for p in pts], sum(n for _, n in parts)

    fit_pts, fit_n = merged(fit + [sq_fit])
    ok = [t for t in GRID if (at(fit_pts, fit_n, t)["precision"] or 0) >= args.precision]
    threshold = min(ok) if ok else 1.01
    dstc = prepare_kb(args.data / "dstc11" / "kb.jsonl", settings, progress=True)
    ctx = settings.dialogue.context_turns
    dev_rows = []
    for r in load_dialogues(args.data / "dstc11" / "dialogues_dev.jsonl"):
        turns = [{"role": t["role"], "text": t["text"]} for t in r["turns"]]
        gold = set(r["gold_doc_ids"]) if r["target"] else set()
        dev_rows.append((turns[-1]["text"], turns[:-1][-ctx:] if ctx else [],
                         (lambda g: (lambda hit: hit.doc_id in g))(gold)))
    dev = points(dstc.components.pipeline(dstc.bot, with_generator=False), dev_rows, "dstc11 dev")
    report = {
        "direct_answer_threshold": threshold, "wanted_precision": args.precision,
        "fit (corpus fit companies + stackfaq fit threads)": at(fit_pts, fit_n, threshold),
        "held_out_companies": at(*merged(held), threshold),
        "sample_faq": at(*merged(sample), threshold),
        "stackfaq_held_out_threads": at(*sq_held, threshold),
        "dstc11_dev": at(*dev, threshold),
        "curve_fit": [at(fit_pts, fit_n, t) for t in GRID],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
