"""Build the labelled support-checking set (bench/checker_set/checker_set.jsonl) from hand/*.txt.

Each hand file is one fictional company (or, for Northwind, the project's sample FAQ), written for
this set:

    @group <company>
    @passage <id>            the passage text follows, up to the next @ line
    @sample <id> <question>  (Northwind) the FAQ entry of samples/faq with that question
    @rows
    <S|U|C> <passage ids, comma-separated> [kind] | <sentence>

S = supported by the listed passages, C = contradicted by them, U = not stated in them (the
listed passages are the sources shown). Every row gets one more passage of the same company as a
distractor, and the source order is shuffled (seeded), so position tells nothing.

Generated rows, all from the hand-written supported sentences (``origin`` says which):

* ``number``: one number changed to a value the sources never state -> contradicted;
* ``negation``: the first negatable verb flipped ("can" <-> "cannot", "is" -> "is not",
  "have to" -> "don't have to") -> contradicted; sentences opening with Yes/No are left alone;
* ``wrong-passage``: the sentence against two other passages of its company -> unsupported
  (what a wrong retrieval looks like; not for hand rows of kind ``filler``, which need no source);
* ``filler``: generic conversational sentences against any sources -> supported.

    python bench/checker_set/build_set.py      # rewrites checker_set.jsonl, prints counts
"""
from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from bot.checking.quantities import quantities, quantity_supported  # noqa: E402

OUT = HERE / "checker_set.jsonl"
LABELS = {"S": "supported", "U": "unsupported", "C": "contradicted"}
KINDS = {"number", "yesno", "condition", "policy", "paraphrase", "filler", "offtopic"}

FILLER = [
    "I hope this helps!", "Let me know if you have any other questions.", "Thanks for reaching out!",
    "Happy to help.", "Is there anything else I can help you with?", "Have a great day!",
    "Thank you for your patience.", "Feel free to ask if anything is unclear.", "You're welcome!",
    "I'm sorry for the trouble.", "Great question!", "Let me know if there's anything else.",
    "Thanks for your question.", "I hope that answers your question.", "Glad I could help!",
    "Sorry about the inconvenience.", "I understand how frustrating that can be.",
    "Please let me know if you need more help.", "Thanks for getting in touch.",
    "Enjoy your day!", "I'd be happy to help with that.", "Hope you have a wonderful trip!",
]
# Filler-like openers that still make a claim: not supported by any company's sources here.
FILLER_TRAPS = [
    "Thanks for asking: everything we sell ships free worldwide.",
    "Happy to help: all our services come with a lifetime money-back guarantee.",
    "Great question! We are open 24 hours a day, every day of the year.",
    "Glad to help: you can cancel anything at any time for a full refund.",
    "I hope this helps: there are never any fees.",
    "Let me know if you want the 50% loyalty discount applied.",
]

_NEGATION_RULES = [  # (pattern, replacement), the leftmost match in the sentence is flipped
    (r"\bcan't\b|\bcannot\b", "can"), (r"\bdon't\b", "do"), (r"\bdoesn't\b", "does"),
    (r"\baren't\b", "are"), (r"\bisn't\b", "is"), (r"\bwon't\b", "will"),
    (r"\bhave to\b", "don't have to"), (r"\bhas to\b", "doesn't have to"),
    (r"\bneeds to\b", "doesn't need to"), (r"\bneed to\b", "don't need to"),
    (r"\bmust\b", "don't have to"), (r"\bcan\b", "cannot"), (r"\bis\b", "is not"),
    (r"\bare\b", "are not"), (r"\bwill\b", "will not"),
]


def parse_hand(path: Path) -> dict:
    group, passages, samples, rows = "", {}, {}, []
    current, mode = None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and mode != "passage":
            continue
        if line.startswith("@group"):
            group = line.split(None, 1)[1].strip()
        elif line.startswith("@passage"):
            current, mode = line.split(None, 1)[1].strip(), "passage"
            passages[current] = []
        elif line.startswith("@sample"):
            _, pid, question = line.split(None, 2)
            samples[pid] = question.strip()
            mode = None
        elif line.startswith("@rows"):
            mode = "rows"
        elif mode == "passage":
            passages[current].append(line)
        elif mode == "rows" and line.strip() and not line.startswith("#"):
            head, sentence = line.split("|", 1)
            parts = head.split()
            kind = parts[2] if len(parts) > 2 else None
            if parts[0] not in LABELS or (kind and kind not in KINDS):
                raise ValueError(f"{path.name}: bad row {line!r}")
            rows.append({"label": LABELS[parts[0]], "pids": parts[1].split(","), "kind": kind,
                         "sentence": sentence.strip()})
    texts = {pid: "\n".join(lines).strip() for pid, lines in passages.items()}
    return {"group": group, "passages": texts, "samples": samples, "rows": rows}


def sample_faq() -> dict[str, str]:
    """FAQ question -> passage text ("question\\nanswer", as the chunker stores an FAQ entry)."""
    out = {}
    for md in sorted((REPO / "samples" / "faq").glob("*.md")):
        question, lines = None, []
        for line in md.read_text(encoding="utf-8").splitlines() + ["#"]:
            if line.startswith("#"):
                if question and lines:
                    out[question] = question + "\n" + "\n".join(lines).strip()
                question = line.lstrip("#").strip() if line.startswith("###") else None
                lines = []
            elif question is not None and line.strip():
                lines.append(line)
    with open(REPO / "samples" / "faq" / "faq.csv", newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            out[rec["question"].strip()] = rec["question"].strip() + "\n" + rec["answer"].strip()
    return out


def _pool(texts: list[str]):
    return [q for t in texts for q in quantities(t)]


def change_number(sentence: str, sources: list[str], rng: random.Random) -> str | None:
    """``sentence`` with its first plain number replaced by one the sources never state."""
    pool = _pool(sources)
    # citation markers ("[1]") are not numbers the sentence states
    for m in re.finditer(r"(?<![\w.,\[-])(\d{1,3}(?:,\d{3})*|\d+)(\.\d+)?(?![\w\]-]|\.\d|,\d)", sentence):
        value = float(m.group().replace(",", ""))
        decimals = len(m.group(2) or "") - 1 if m.group(2) else 0
        options = [value + 1, value * 2, value + 5, value * 3, value + 10, value - 1]
        rng.shuffle(options)
        for new in options:
            if new <= 0 or new == value:
                continue
            text = f"{new:,.{decimals}f}" if "," in m.group() else f"{new:.{decimals}f}"
            changed = sentence[:m.start()] + text + sentence[m.end():]
            new_qs = [q for q in quantities(changed) if not quantity_supported(q, pool)]
            if new_qs:  # the new value (with its unit) is stated nowhere in the sources
                return changed
    return None


def flip_negation(sentence: str) -> str | None:
    if re.match(r"^\W*(yes|no)\b", sentence, re.I):
        return None
    best = None
    for pattern, repl in _NEGATION_RULES:
        m = re.search(pattern, sentence)
        if m and (best is None or m.start() < best[0].start()):
            best = (m, repl)
    if best is None:
        return None
    m, repl = best
    others = sentence[:m.start()] + sentence[m.end():]
    if re.search(r"\b(not|no|never|none|nothing|cannot|without)\b|n't\b", others, re.I):
        return None  # a second negation: the flip would read as a double negative
    if re.match(r"\s+(only|also|still)\b", sentence[m.end():]):
        return None  # "cannot only ..." / "cannot also ...": garbled, not a clean contradiction
    if m.group()[0].isupper():
        repl = repl[0].upper() + repl[1:]
    return sentence[:m.start()] + repl + sentence[m.end():]


def build_company(comp: dict, faq: dict[str, str]) -> list[dict]:
    """The rows of one hand file: its own rows with sources, then the generated ones."""
    passages = dict(comp["passages"])
    for pid, question in comp["samples"].items():
        if question not in faq:
            raise ValueError(f"{comp['group']}: no FAQ entry {question!r} in samples/faq")
        passages[pid] = faq[question]
    rng = random.Random(comp["group"])
    ids = sorted(passages)
    out: list[dict] = []

    def sources_for(pids: list[str]) -> list[str]:
        others = [p for p in ids if p not in pids]
        chosen = list(pids) + ([rng.choice(others)] if others else [])
        rng.shuffle(chosen)
        return [passages[p] for p in chosen]

    def add(row, sentence, label, kind, origin, srcs):
        out.append({"group": comp["group"], "sources": srcs, "sentence": sentence,
                    "label": label, "kind": kind, "origin": origin,
                    "question": passages[row["pids"][0]].split("\n", 1)[0] if row else ""})

    for row in comp["rows"]:
        for pid in row["pids"]:
            if pid not in passages:
                raise ValueError(f"{comp['group']}: unknown passage {pid!r}")
        srcs = sources_for(row["pids"])
        add(row, row["sentence"], row["label"], row["kind"], "hand", srcs)
        if row["label"] != "supported":
            continue
        changed = change_number(row["sentence"], srcs, rng)
        if changed:
            add(row, changed, "contradicted", "number", "number", srcs)
        flipped = flip_negation(row["sentence"])
        if flipped:
            add(row, flipped, "contradicted", "policy", "negation", srcs)
        others = [p for p in ids if p not in row["pids"]]
        # a booking or closing line ("Would you like me to book it?") needs no source: never unsupported
        if row["kind"] != "filler" and len(others) >= 2 and rng.random() < 0.6:
            add(row, row["sentence"], "unsupported", "offtopic", "wrong-passage",
                [passages[p] for p in rng.sample(others, 2)])
    for sentence in rng.sample(FILLER, 6):
        add(None, sentence, "supported", "filler", "filler", sources_for(rng.sample(ids, 1)))
    for sentence in rng.sample(FILLER_TRAPS, 2):
        add(None, sentence, "unsupported", "policy", "filler", sources_for(rng.sample(ids, 1)))
    return out


def build() -> list[dict]:
    faq = sample_faq()
    out: list[dict] = []
    for path in sorted((HERE / "hand").glob("*.txt")):
        out += build_company(parse_hand(path), faq)
    return out


def main() -> None:
    rows = build()
    with open(OUT, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows -> {OUT.relative_to(REPO)}")
    print("by label:", dict(Counter(r["label"] for r in rows)))
    print("by origin:", dict(Counter(r["origin"] for r in rows)))
    print("by group:", dict(Counter(r["group"] for r in rows)))


if __name__ == "__main__":
    main()
