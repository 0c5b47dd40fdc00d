"""How often the entity matcher finds the entity a DSTC11 knowledge-seeking turn is about.

For each ``target: true`` turn, the gold entity is the title of its gold snippets; the matcher
reads the whole conversation (user and agent turns) and returns the entity it is about now. The
baseline, run in the same process, is the most recently mentioned *exact* name (case-insensitive
substring over the turns, newest first), what ``../shared/DESIGN.md`` reports as right for 89% of
dev turns. ``decay`` (how fast older mentions fade) is chosen on ``dialogues_train`` and reported
on ``dialogues_dev``.

    nice python bench/tune_entities.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.entities import EntityMatcher, entity_of  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def exact_last(names: list[str], texts: list[str]) -> str | None:
    """Baseline: the exact name mentioned last (newest turn first, latest position in it)."""
    patterns = [(n, re.compile(r"\b" + re.escape(n.lower()) + r"\b")) for n in names]
    for text in reversed(texts):
        low = text.lower()
        best = max(((m.start(), n) for n, p in patterns for m in p.finditer(low)), default=None)
        if best:
            return best[1]
    return None


def score(turns: list[dict], gold_of, find) -> dict:
    right = none = 0
    t0 = time.perf_counter()
    for d in turns:
        found = find([t["text"] for t in d["turns"]])
        none += not found
        right += bool(found) and bool(set(found) & gold_of(d))
    return {"accuracy": round(right / len(turns), 4), "no entity found": none, "n": len(turns),
            "us_per_turn": round((time.perf_counter() - t0) / len(turns) * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    kb = read_jsonl(args.data / "dstc11/kb.jsonl")
    title = {d["id"]: d["title"] for d in kb}
    texts: dict[str, list[str]] = {}
    for d in kb:
        texts.setdefault(entity_of(d.get("metadata"), d["title"])[0], []).append(d["text"])
    names = sorted(texts)

    def gold_of(d):
        return {title[g] for g in d["gold_doc_ids"] if g in title}

    splits = {s: [d for d in read_jsonl(args.data / f"dstc11/dialogues_{s}.jsonl") if d["target"]]
              for s in ("train", "dev")}
    tuning = {}
    for decay in (0.3, 0.5, 0.7, 0.9):
        m = EntityMatcher(names, texts, decay=decay)
        tuning[decay] = score(splits["train"], gold_of, m.current)["accuracy"]
    best = max(tuning, key=lambda d: (tuning[d], d))
    m = EntityMatcher(names, texts, decay=best)
    report = {
        "train accuracy by decay": tuning,
        "chosen decay": best,
        "dev: matcher": score(splits["dev"], gold_of, m.current),
        "dev: exact name mentioned last (baseline)": score(
            splits["dev"], gold_of, lambda t: (lambda n: (n,) if n else ())(exact_last(names, t))),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
