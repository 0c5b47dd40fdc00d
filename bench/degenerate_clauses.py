"""How often does the repeated-clause check (``bot/checking/degenerate.py``) flag written text?

It must flag a model's loop within a sentence ("The rooms are clean and the rooms are very
clean.") and nothing a person wrote. Counts the sentences it flags in: the sample FAQ and the
answer benchmark's corpus (every file's sentences), the checker set's supported sentences, and
the agents' replies of DSTC11 (dev dialogues, when ``../shared/data/dstc11`` is there); and,
with ``--predictions`` (``supportbot eval --predictions`` output), in the bot's replies.

    python bench/degenerate_clauses.py [--predictions var/bench/dev120.jsonl]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot.checking.degenerate import repeated_clause  # noqa: E402
from bot.checking.splitter import split_sentences  # noqa: E402

DSTC11 = REPO.parent / "shared" / "data" / "dstc11" / "dialogues_dev.jsonl"


def written() -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {"faq files": [], "checker set (supported)": [], "dstc11 agent turns": []}
    for folder in (REPO / "samples" / "faq", REPO / "bench" / "faq_corpus"):
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".md", ".txt", ".html", ".csv", ".jsonl") and path.is_file():
                sets["faq files"] += split_sentences(path.read_text(encoding="utf-8", errors="replace"))
    for line in open(REPO / "bench" / "checker_set" / "checker_set.jsonl", encoding="utf-8"):
        row = json.loads(line)
        if row["label"] == "supported":
            sets["checker set (supported)"].append(row["sentence"])
    if DSTC11.is_file():
        for line in open(DSTC11, encoding="utf-8"):
            for turn in json.loads(line)["turns"]:
                if turn["role"] == "agent":
                    sets["dstc11 agent turns"] += split_sentences(turn["text"])
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictions", type=Path, help="supportbot eval --predictions output")
    args = ap.parse_args()
    sets = written()
    if args.predictions:
        sets["bot replies"] = [s for line in open(args.predictions, encoding="utf-8")
                               for s in split_sentences(json.loads(line).get("reply") or "")]
    for name, sentences in sets.items():
        sentences = [s for s in sentences if s.strip()]
        flagged = [s for s in sentences if repeated_clause(s)]
        print(f"{name:26s} {len(flagged):4d} of {len(sentences):6d} sentences flagged")
        for s in flagged[:8]:
            print(f"    {s.strip()[:150]!r}")


if __name__ == "__main__":
    main()
