"""Knowledge bases for evaluations: ingested once per content hash, and ``supportbot
eval-retrieval``.

``prepare_kb`` ingests a knowledge-base JSONL through the real path (``KnowledgeBase``: parse,
chunk, embed, store, publish a snapshot) into a scratch data dir named by the content hash of the
file and the embedding/chunking settings, so a second run with the same inputs skips embedding.
``evaluate_retrieval`` scores the hybrid retriever and its baselines on it
(``retrieval.evaluate.score_retrieval``). App tier: it builds ``Components``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.components import Components
from bot.core.errors import SupportbotError
from bot.core.settings import Settings
from retrieval.evaluate import read_dialogues, read_queries, score_retrieval

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
    **parts: Any,
) -> PreparedKB:
    """Ingest ``kb_path`` once per content hash under ``cache_root`` (default
    ``settings.data_dir / "eval-cache"``) and return components serving it. ``parts`` go to
    ``Components`` (e.g. ``embedder=`` an already loaded one)."""
    kb_path = Path(kb_path)
    if not kb_path.is_file():
        raise SupportbotError(f"{kb_path}: no such knowledge-base file")
    root = Path(cache_root) if cache_root else settings.data_dir / "eval-cache"
    data_dir = root / kb_cache_key(kb_path, settings)
    scratch = settings.model_copy(update={"data_dir": data_dir, "database_url": ""})
    comps = Components(scratch, parts=parts)
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



def selector_top1(pipeline, items, progress: bool = True) -> dict[str, Any]:
    """How often the selector's most likely passage (its reranking of the retriever's pool) is
    gold, and how often it selects nothing; over all items and over those of the StackFAQ threads
    its ``selector.json`` lists as held out (never fitted on)."""
    from tqdm import tqdm

    held = set((getattr(pipeline.selector, "meta", {}).get("held_out") or {}).get("stackfaq_threads", []))
    rows = []
    for item in tqdm(items, desc="selector", unit="q", disable=not progress):
        hits = pipeline.retrieve(item.query, item.turns)
        sel = pipeline.select(item.query, hits, item.turns)
        best = (sel.passages[max(range(len(sel.passages)), key=lambda i: sel.scores[i])]
                if sel.passages and sel.scores else None)
        thread = next((int(g.split(":")[1]) for g in item.gold if g.startswith("stackfaq:")), None)
        rows.append((best is not None and best.doc_id in item.gold, best is None, thread in held))

    def share(part):
        return {"recall@1": round(sum(r[0] for r in part) / len(part), 4) if part else None,
                "none_selected": round(sum(r[1] for r in part) / len(part), 4) if part else None, "n": len(part)}

    out = {"all": share(rows)}
    if held:
        out["held_out_threads"] = share([r for r in rows if r[2]])
    return out


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
    if kb.components.retriever(kb.bot).view() is None:
        raise SupportbotError(f"{kb_path}: nothing was indexed")
    history = settings.retrieval.history_turns
    result = score_retrieval(kb.components.retriever(kb.bot), kb.components.embedder, items, k=k,
                             history=history, progress=progress)
    query_desc = "query" if queries_path else f"last {history} turns + query"
    for name in ("dense", "bm25"):
        result[name]["query"] = query_desc
    pipeline = kb.components.pipeline(kb.bot, with_generator=False)
    if pipeline.selector.judges:
        result["selector"] = selector_top1(pipeline, items, progress)
    chunks = result.pop("chunks")
    result.update(
        {
            "kb": str(kb_path),
            "queries" if queries_path else "dialogues": str(path),
            "chunks": chunks,
            "ingest_documents_per_s": kb.ingest.get("documents_per_s"),
            "ingest_seconds": kb.ingest.get("seconds"),
            "ingest_cached": kb.ingest.get("cached", False),
            "embedder": kb.ingest.get("embedder"),
        }
    )
    return result
