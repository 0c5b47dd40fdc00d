"""Query latency of the hybrid retriever at 10k chunks, and BM25 build time, against baselines
run in the same process (the machine is shared, so ratios are the figures to compare).

* query: ``HybridRetriever.search`` with the real default embedder (every query embedded, as in
  serving; earlier turns come from the retriever's turn cache, as in a conversation), over the
  DSTC11 knowledge base (10,882 chunks) and its dev dialogues; baseline: embed the query + one
  dense search (the least any dense retriever does). Also the parts: query embedding on one
  torch thread vs the default thread count, dense search, BM25 scoring, entity matching.
* BM25 build over the same 10,882 chunks: ``BM25Index.build`` (stemmed, stopwords) against
  bm25s's own tokenizer + index (no stemming), the library's quick-start path.

The knowledge base is ingested once by ``bot.eval_kb.prepare_kb`` (cached by content hash
under ``--cache``; ingestion embeddings come from ``bench/tune_fusion.py``'s text cache when present).

    nice python bench/retrieval_latency.py [--data ../shared/data] [--n 200]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bm25s  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bot.core.settings import Settings  # noqa: E402
from retrieval.bm25_index import BM25Index  # noqa: E402
from retrieval.embedder import build_embedder  # noqa: E402
from bot.eval_kb import prepare_kb  # noqa: E402
from retrieval.evaluate import read_dialogues  # noqa: E402
from retrieval.hybrid import HybridRetriever  # noqa: E402
from tune_fusion import CachingEmbedder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def timed(fn, items) -> np.ndarray:
    out = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        out.append(time.perf_counter() - t0)
    return np.asarray(out) * 1000


def stats(ms: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "tune")
    ap.add_argument("--n", type=int, default=200, help="dev dialogue turns to time")
    args = ap.parse_args()

    settings = Settings(data_dir=args.cache / "var")
    real = build_embedder(settings.embedder).load()
    kb = prepare_kb(args.data / "dstc11/kb.jsonl", settings, progress=True, embedder=CachingEmbedder(real, args.cache))
    live = kb.components.live(kb.bot)
    snap = live.get()
    retriever = HybridRetriever(real, live.get, settings.retrieval)
    items = list(read_dialogues(args.data / "dstc11/dialogues_dev.jsonl"))[: args.n]
    for it in items[:5]:  # warm-up: first calls build the snapshot view and allocate
        retriever.search(it.query, 5, turns=it.turns)
        real.embed([it.query])

    # Interleave the two so load changes on the shared machine hit both alike.
    hybrid, baseline = [], []
    for it in items:
        t0 = time.perf_counter()
        retriever.search(it.query, 5, turns=it.turns)
        t1 = time.perf_counter()
        snap.dense.search(real.embed([it.query]), 5)
        t2 = time.perf_counter()
        hybrid.append((t1 - t0) * 1000)
        baseline.append((t2 - t1) * 1000)
    hybrid, baseline = np.asarray(hybrid), np.asarray(baseline)

    queries = [it.query for it in items]
    vecs = real.embed(queries)
    view = retriever.view()
    texts_of = [[t.get("text", "") for t in it.turns] + [it.query] for it in items]
    one_thread = timed(lambda q: real.embed([q]), queries)
    real.settings.query_threads = 0
    default_threads = timed(lambda q: real.embed([q]), queries[:20])
    real.settings.query_threads = 1
    parts = {
        "embed query, 1 torch thread (query_threads=1)": stats(one_thread),
        f"embed query, torch default ({torch.get_num_threads()} threads), 20 queries": stats(default_threads),
        "dense search (exact, 10k)": stats(timed(lambda v: snap.dense.search(v[None, :], 50), vecs)),
        "BM25 scores, all chunks": stats(timed(lambda q: snap.lexical.scores_all(q), queries)),
        "entity matching, whole conversation": stats(timed(lambda t: view.matcher.current(t), texts_of)),
    }

    # BM25 build: ours against bm25s's quick-start path, same texts, same process.
    texts = [f"{c.title}\n{c.text}" for c in snap.catalog.values()]
    ids = list(snap.catalog)
    t0 = time.perf_counter()
    BM25Index().build(ids, texts)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    lib = bm25s.BM25()
    lib.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    theirs = time.perf_counter() - t0

    print(json.dumps({
        "machine": f"{os.cpu_count()} cores, shared with other jobs (load average {os.getloadavg()[0]:.1f})",
        "chunks": len(snap.catalog),
        "queries": len(items),
        "hybrid search, incl. query embedding": stats(hybrid),
        "baseline: embed query + dense search": stats(baseline),
        "ratio hybrid / baseline (p50)": round(float(np.percentile(hybrid, 50) / np.percentile(baseline, 50)), 2),
        "parts": parts,
        "ratio embed default threads / 1 thread (p50)": round(
            float(np.percentile(default_threads, 50) / np.percentile(one_thread, 50)), 2),
        "bm25 build s (ours: stemmed + stopwords)": round(ours, 2),
        "bm25 build s (bm25s tokenize + index)": round(theirs, 2),
        "ratio bm25 build ours / bm25s": round(ours / theirs, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
