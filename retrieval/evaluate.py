"""Retrieval evaluation: ``supportbot eval-retrieval`` and the knowledge-base cache other
evaluations share.

``prepare_kb`` ingests a knowledge-base JSONL through the real path (``KnowledgeBase``: parse,
chunk, embed, store, publish a snapshot) into a scratch data dir named by the content hash of the
file and the embedding/chunking settings, so a second run with the same inputs skips embedding.

``evaluate_retrieval`` runs every query (``queries_*.jsonl``) or every knowledge-seeking turn
with its conversation (``dialogues_*.jsonl``, ``target: true``) through the hybrid retriever and,
in the same run on the same snapshot, two baselines: dense only (MiniLM cosine of the query, for
dialogues of the last ``history_turns`` turns plus the query, entity-unaware) and BM25 only (same
query text). A query counts as a hit at k when any of its gold documents is in the top k.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from bot.core.errors import SupportbotError
from bot.core.settings import Settings

EVAL_BOT = "eval"
MARKER = "ingest.json"


@dataclass
class PreparedKB:
    """A knowledge base ingested into its scratch data dir. ``components`` serves it as bot
    ``bot``; ``ingest`` holds the figures of the run that embedded it (``cached`` when this run
    found it done)."""

    components: Any
    bot: str
    data_dir: Path
    ingest: dict[str, Any]


def kb_cache_key(kb_path: Path, settings: Settings) -> str:
    h = hashlib.sha256()
    with open(kb_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    # Only what changes the stored chunks or their vectors.
    h.update(json.dumps([settings.embedder.model_dump(include={"model", "max_seq_length"}),
                         settings.ingest.model_dump()], sort_keys=True).encode())
    return h.hexdigest()[:20]


def prepare_kb(
    kb_path: Path,
    settings: Settings,
    progress: bool = True,
    cache_root: Path | None = None,
    **overrides: Any,
) -> PreparedKB:
    """Ingest ``kb_path`` once per content hash under ``cache_root`` (default
    ``settings.data_dir / "eval-cache"``) and return components serving it. ``overrides`` go to
    ``Components`` (e.g. ``embedder=`` an already loaded one)."""
    from bot.components import Components

    kb_path = Path(kb_path)
    if not kb_path.is_file():
        raise SupportbotError(f"{kb_path}: no such knowledge-base file")
    root = Path(cache_root) if cache_root else settings.data_dir / "eval-cache"
    data_dir = root / kb_cache_key(kb_path, settings)
    scratch = settings.model_copy(update={"data_dir": data_dir, "database_url": ""})
    comps = Components(scratch, **overrides)
    marker = data_dir / MARKER
    if marker.is_file() and comps.snapshots.latest_version(EVAL_BOT):
        info = json.loads(marker.read_text())
        if comps.snapshots.load(EVAL_BOT) is None:
            # Index files from an older index format: rebuild them from the stored embeddings.
            comps.knowledge.publish(EVAL_BOT, progress=progress)
        return PreparedKB(comps, EVAL_BOT, data_dir, {**info, "cached": True})
    t0 = time.perf_counter()
    report = comps.knowledge.ingest(EVAL_BOT, [kb_path], progress=progress)
    seconds = time.perf_counter() - t0
    if report.errors:
        raise SupportbotError(f"{kb_path}: " + "; ".join(report.errors[:5]))
    documents = len(report.added) + len(report.replaced) + len(report.unchanged)
    info = {
        "documents": documents,
        "chunks": report.chunks,
        "seconds": round(seconds, 2),
        # None when nothing needed embedding (the documents were stored by an interrupted run).
        "documents_per_s": round(documents / seconds, 1) if seconds > 0 and report.chunks else None,
        "embedder": getattr(comps.embedder, "model_id", type(comps.embedder).__name__),
    }
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, marker)
    return PreparedKB(comps, EVAL_BOT, data_dir, {**info, "cached": False})


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


def evaluate_retrieval(
    kb_path: Path,
    queries_path: Path | None = None,
    dialogues_path: Path | None = None,
    k: int = 10,
    settings: Settings | None = None,
    limit: int | None = None,
    progress: bool = True,
    prepared: PreparedKB | None = None,
) -> dict[str, Any]:
    """Recall@1/5/10, MRR and latency of the hybrid retriever and the dense/BM25 baselines."""
    if (queries_path is None) == (dialogues_path is None):
        raise SupportbotError("give exactly one of queries_path or dialogues_path")
    settings = settings or Settings()
    kb = prepared or prepare_kb(Path(kb_path), settings, progress=progress)
    path = Path(queries_path or dialogues_path)
    items = list((read_queries if queries_path else read_dialogues)(path))[:limit]
    if not items:
        raise SupportbotError(f"{path}: no queries to evaluate")
    retriever = kb.components.retriever(kb.bot)
    view = retriever.view()
    if view is None:
        raise SupportbotError(f"{kb_path}: nothing was indexed")
    snap, embedder = view.snapshot, kb.components.embedder
    catalog = snap.catalog
    history = settings.retrieval.history_turns
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

        # Baselines: the query with the last ``history`` turns, no entities, no fusion.
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
    query_desc = "query" if queries_path else f"last {history} turns + query"
    for name in ("dense", "bm25"):
        result[name] = {**rank_metrics(ranks[name], ks), **_ms(times[name]), "query": query_desc}
    result.update(
        {
            "k": k,
            "kb": str(kb_path),
            "queries" if queries_path else "dialogues": str(path),
            "chunks": len(catalog),
            "ingest_documents_per_s": kb.ingest.get("documents_per_s"),
            "ingest_seconds": kb.ingest.get("seconds"),
            "ingest_cached": kb.ingest.get("cached", False),
            "embedder": kb.ingest.get("embedder"),
        }
    )
    return result
