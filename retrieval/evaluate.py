"""Retrieval evaluation: reading query files and scoring a retriever (``supportbot
eval-retrieval`` runs it on a knowledge base ingested by ``bot/eval_kb.py``).

``score_retrieval`` runs every query (``queries_*.jsonl``) or every knowledge-seeking turn
with its conversation (``dialogues_*.jsonl``, ``target: true``) through the hybrid retriever and,
in the same run on the same snapshot, two baselines: dense only (MiniLM cosine of the query, for
dialogues of the last ``history_turns`` turns plus the query, entity-unaware) and BM25 only (same
query text). A query counts as a hit at k when any of its gold documents is in the top k.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from bot.core.errors import SupportbotError

# ---- queries ---------------------------------------------------------------------------------


@dataclass
class EvalQuery:
    query: str
    turns: list[dict]  # earlier turns, oldest first
    gold: set[str]


def read_queries(path: Path) -> Iterator[EvalQuery]:
    for n, line in enumerate(_lines(path), 1):
        q = line.get("query")
        if not isinstance(q, str) or not isinstance(line.get("gold_doc_ids"), list):
            raise SupportbotError(f"{path}:{n}: expected {{\"query\": str, \"gold_doc_ids\": [...]}}")
        yield EvalQuery(q, [], set(line["gold_doc_ids"]))


def read_dialogues(path: Path) -> Iterator[EvalQuery]:
    """Knowledge-seeking turns (``target: true``) with their conversations."""
    for n, line in enumerate(_lines(path), 1):
        turns = line.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[-1], dict):
            raise SupportbotError(f"{path}:{n}: expected a non-empty \"turns\" list")
        if not line.get("target"):
            continue
        gold = line.get("gold_doc_ids")
        if not isinstance(gold, list):
            raise SupportbotError(f"{path}:{n}: a target turn needs \"gold_doc_ids\"")
        yield EvalQuery(str(turns[-1].get("text", "")), turns[:-1], set(gold))


def _lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SupportbotError(f"{path}:{n}: not JSON ({exc.msg})") from exc


# ---- metrics ---------------------------------------------------------------------------------


def rank_metrics(ranks: list[int | None], ks=(1, 5, 10)) -> dict[str, float]:
    """``ranks``: 0-based rank of the first gold document per query (None: not retrieved)."""
    n = len(ranks)
    out: dict[str, Any] = {f"recall@{k}": sum(r is not None and r < k for r in ranks) / n if n else 0.0 for k in ks}
    out["mrr"] = sum(1.0 / (r + 1) for r in ranks if r is not None) / n if n else 0.0
    out["n"] = n
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _first_gold(doc_ids: list[str], gold: set[str]) -> int | None:
    return next((i for i, d in enumerate(doc_ids) if d in gold), None)


def _ms(times: list[float]) -> dict[str, float]:
    if not times:
        return {"latency_ms_p50": 0.0, "latency_ms_p95": 0.0}
    a = np.asarray(times) * 1000
    return {"latency_ms_p50": round(float(np.percentile(a, 50)), 2), "latency_ms_p95": round(float(np.percentile(a, 95)), 2)}


def score_retrieval(
    retriever,
    embedder,
    items: list[EvalQuery],
    k: int = 10,
    history: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Recall@1/5/10/k, MRR and latency of ``retriever`` (a ``HybridRetriever``) on ``items``,
    and, on the same snapshot, of the dense-only and BM25-only baselines over the query with the
    last ``history`` turns (no entities, no fusion)."""
    if not items:
        raise SupportbotError("no queries to evaluate")
    view = retriever.view()
    if view is None:
        raise SupportbotError("nothing was indexed")
    snap = view.snapshot
    catalog = snap.catalog
    depth = max(k, 10)
    ks = tuple(sorted({1, 5, 10, k}))

    retriever.search(items[0].query, depth, turns=items[0].turns)  # warm-up, not timed
    ranks = {"hybrid": [], "dense": [], "bm25": []}
    times = {"hybrid": [], "dense": [], "bm25": []}
    for item in tqdm(items, desc="queries", unit="q", disable=not progress):
        t0 = time.perf_counter()
        hits = retriever.search(item.query, depth, turns=item.turns)
        times["hybrid"].append(time.perf_counter() - t0)
        ranks["hybrid"].append(_first_gold([h.doc_id for h in hits], item.gold))

        text = " ".join([t.get("text", "") for t in item.turns[-history:] if history > 0] + [item.query])
        t0 = time.perf_counter()
        _, ids = snap.dense.search(embedder.embed([text]), depth)
        times["dense"].append(time.perf_counter() - t0)
        ranks["dense"].append(_first_gold([catalog[int(i)].doc_id for i in ids[0] if i >= 0], item.gold))
        t0 = time.perf_counter()
        _, ids = snap.lexical.search(text, depth)
        times["bm25"].append(time.perf_counter() - t0)
        ranks["bm25"].append(_first_gold([catalog[int(i)].doc_id for i in ids], item.gold))

    result: dict[str, Any] = {**rank_metrics(ranks["hybrid"], ks), **_ms(times["hybrid"])}
    for name in ("dense", "bm25"):
        result[name] = {**rank_metrics(ranks[name], ks), **_ms(times[name])}
    result.update({"k": k, "chunks": len(catalog)})
    return result
