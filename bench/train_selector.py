"""Train the learned knowledge selector (bot/mlp_selector.py) on dialogues with gold knowledge.

Candidates are exactly what the bot sees when serving: the hybrid retriever's top
``dialogue.candidates`` hits for each knowledge-seeking turn with its conversation; a candidate is
positive when its document is one of the turn's gold documents. Features come from
``bot.mlp_selector.features`` (the serving code), so training and serving cannot drift apart.

Split by dialogue: 85 % to fit, 15 % to stop early and pick the probability threshold (best
micro selection F1, with the serving rule "at least the best one, at most max_sources").
Reports micro selection F1 on the report split (default dstc11 dev) for the rule-based selection
and the learned one, both on the same hits in the same run, then writes the ``.npz``.

    nice python bench/train_selector.py [--out bot/selectors/dstc11-minilm.npz]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bot.evaluate import load_dialogues, selection_counts  # noqa: E402
from bot.selection import RuleSelector  # noqa: E402
from bot.mlp_selector import FEATURE_VERSION, features  # noqa: E402
from bot.core.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def chunk_vectors(db) -> dict[int, np.ndarray]:
    """The stored (normalised) embedding of every chunk: no re-embedding of passages."""
    from sqlalchemy import select

    from bot.core.store.models import Chunk

    with db.session() as s:
        return {cid: np.frombuffer(blob, dtype=np.float32) for cid, blob in
                s.execute(select(Chunk.id, Chunk.embedding).where(Chunk.embedding.is_not(None)))}


def candidate_sets(retriever, embedder, vectors, rows, settings) -> list[dict]:
    """Per knowledge-seeking turn: hits, features and labels."""
    from tqdm import tqdm

    k, context = settings.dialogue.candidates, settings.dialogue.context_turns
    rows = [r for r in rows if r["target"]]
    queries = embedder.embed([r["turns"][-1]["text"] for r in rows])  # one batch
    out = []
    for r, qvec in tqdm(list(zip(rows, queries)), desc="candidates", unit="turn"):
        turns = r["turns"]
        hits = retriever.search(turns[-1]["text"], k=k, turns=turns[:-1][-context:] if context else [])
        if not hits:
            continue
        hvecs = np.vstack([vectors.get(h.chunk_id) if h.chunk_id in vectors else embedder.embed([h.text])[0]
                           for h in hits])
        X = features(qvec, hvecs, hits, k)
        gold = set(r["gold_doc_ids"])
        y = np.array([h.doc_id in gold for h in hits], dtype=np.float32)
        out.append({"dialogue": r.get("dialogue", r["id"]), "hits": hits, "X": X, "y": y,
                    "gold": r["gold_doc_ids"]})
    return out


def micro_f1(sets, probs, threshold: float, max_sources: int) -> tuple[float, float, float]:
    tp = fp = fn = 0
    for s, p in zip(sets, probs):
        order = [i for i in np.argsort(-p, kind="stable") if p[i] >= threshold] or [int(np.argmax(p))]
        pred = [s["hits"][i].doc_id for i in order[:max_sources]]
        a, b, c = selection_counts(s["gold"], pred)
        tp, fp, fn = tp + a, fp + b, fn + c
    P = tp / (tp + fp) if tp + fp else 0.0
    R = tp / (tp + fn) if tp + fn else 0.0
    return P, R, (2 * P * R / (P + R) if P + R else 0.0)


def rule_f1(sets, dialogue_settings) -> tuple[float, float, float]:
    tp = fp = fn = 0
    for s in sets:
        a, b, c = selection_counts(s["gold"], [h.doc_id for h in RuleSelector(dialogue_settings).select("", s["hits"], dialogue_settings.max_sources).passages])
        tp, fp, fn = tp + a, fp + b, fn + c
    P = tp / (tp + fp) if tp + fp else 0.0
    R = tp / (tp + fn) if tp + fn else 0.0
    return P, R, (2 * P * R / (P + R) if P + R else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dstc11")
    ap.add_argument("--train", default="dialogues_train.jsonl")
    ap.add_argument("--report", default="dialogues_dev.jsonl")
    ap.add_argument("--out", type=Path, default=REPO / "bot" / "selectors" / "dstc11-minilm.npz")
    ap.add_argument("--data-dir", type=Path, default=Path("var"))
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-sources", type=int, default=8,
                    help="cap used while picking the threshold (calibrate_policy.py then picks the cap)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    # One thread: on a shared 2-core machine two torch threads thrash (measured 16x slower encodes).
    torch.set_num_threads(1)

    from bot.eval_kb import prepare_kb

    settings = Settings(data_dir=args.data_dir)
    kb = prepare_kb(args.data / "kb.jsonl", settings, progress=True)
    retriever, embedder = kb.components.retriever(kb.bot), kb.components.embedder
    vectors = chunk_vectors(kb.components.db)
    train_all = candidate_sets(retriever, embedder, vectors, load_dialogues(args.data / args.train), settings)
    report = candidate_sets(retriever, embedder, vectors, load_dialogues(args.data / args.report), settings)

    dialogues = sorted({s["dialogue"] for s in train_all})
    random.Random(args.seed).shuffle(dialogues)
    held = set(dialogues[: max(1, int(0.15 * len(dialogues)))])
    fit = [s for s in train_all if s["dialogue"] not in held]
    hold = [s for s in train_all if s["dialogue"] in held]

    X = torch.tensor(np.vstack([s["X"] for s in fit]))
    y = torch.tensor(np.concatenate([s["y"] for s in fit]))
    net = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], args.hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(args.hidden, 1),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    max_sources = args.max_sources
    grid = [round(t, 2) for t in np.arange(0.1, 0.91, 0.05)]

    def probs(sets):
        net.eval()
        with torch.no_grad():
            out = [torch.sigmoid(net(torch.tensor(s["X"])).squeeze(1)).numpy() for s in sets]
        net.train()
        return out

    best = (-1.0, 0.5, None, -1)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(y))
        for b in range(0, len(y), 256):
            idx = perm[b:b + 256]
            loss = loss_fn(net(X[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        p_hold = probs(hold)
        f, t = max((micro_f1(hold, p_hold, t, max_sources)[2], t) for t in grid)
        if f > best[0]:
            best = (f, t, {k: v.detach().clone() for k, v in net.state_dict().items()}, epoch)
    net.load_state_dict(best[2])
    threshold = best[1]

    p_report = probs(report)
    learned = micro_f1(report, p_report, threshold, max_sources)
    rule = rule_f1(report, settings.dialogue.model_copy(update={"selector": ""}))

    sd = net.state_dict()
    meta = {
        "feature_version": FEATURE_VERSION,
        "embedder": getattr(embedder, "model_id", ""),
        "k": settings.dialogue.candidates,
        "threshold": threshold,
        "hidden": args.hidden,
        "trained_on": f"{args.data.name}/{args.train} ({len(fit)} turns; {len(hold)} held out)",
        "holdout_f1": round(best[0], 4),
        "best_epoch": best[3],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        w1=sd["0.weight"].numpy().T.astype(np.float32), b1=sd["0.bias"].numpy().astype(np.float32),
        w2=sd["3.weight"].numpy()[0].astype(np.float32), b2=np.float32(sd["3.bias"].numpy()[0]),
        meta=np.array(json.dumps(meta)),
    )

    def fig(prf):
        return {"precision": round(prf[0], 4), "recall": round(prf[1], 4), "f1": round(prf[2], 4)}

    print(json.dumps({
        "selector": str(args.out), **meta,
        f"report ({args.report}, {len(report)} knowledge turns, selection whatever the decision)": {
            "rule (DialogueSettings defaults)": fig(rule), f"learned (max {max_sources})": fig(learned)},
        "gold_in_candidates_recall": round(
            sum(min(1, int(s["y"].sum())) for s in report) / max(1, len(report)), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "2-core CPU, shared with other jobs",
    }, indent=1))


if __name__ == "__main__":
    main()
