"""Transcript import: JSONL (transcript and dialogue formats), CSV, and the dialogue store.

Every reader yields ``Transcript``s with turns ``{"role": "user"|"agent", "text": str}`` plus,
optionally, ``"sources"`` (doc ids the reply was grounded in) and ``"train": False`` (an agent
turn kept as context but never learnt from: an unrated or down-rated bot reply). Consecutive
turns of one role are merged. ``import_transcripts`` validates, drops duplicate conversations and
scrubs PII; invalid lines are reported as ``file:line: reason``.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from bot.core.errors import SupportbotError
from training.pii import PIIScrubber

USER_ROLES = {"user", "customer", "visitor", "client"}
AGENT_ROLES = {"agent", "bot", "assistant", "human", "support", "operator"}


class TranscriptError(SupportbotError):
    """Invalid transcript input; ``errors`` lists every ``file:line: reason``."""

    def __init__(self, errors: Sequence[str]):
        shown = "\n".join(errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} invalid transcript record(s):\n{shown}{more}")
        self.errors = list(errors)


@dataclass
class Transcript:
    id: str
    turns: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    # Conversations sharing a group (a DSTC11 ``dialogue``) always land in the same split.
    group: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or self.id

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "turns": self.turns, "metadata": {**self.metadata, "group": self.group}}

    def fingerprint(self) -> str:
        """Same roles and texts (whitespace and case aside) give the same fingerprint."""
        norm = [(t["role"], " ".join(t["text"].split()).lower()) for t in self.turns]
        return hashlib.sha256(json.dumps(norm).encode()).hexdigest()


@dataclass
class ImportReport:
    read: int = 0
    kept: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    pii: Counter = field(default_factory=Counter)
    agent_turns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read, "kept": self.kept, "duplicates": self.duplicates,
            "invalid": len(self.errors), "agent_turns": self.agent_turns, "pii": dict(self.pii),
        }


def normalize_turns(raw: Any, where: str) -> list[dict[str, Any]]:
    """Validate raw turns and map roles; raise ValueError naming the offending turn."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("'turns' must be a non-empty list")
    turns: list[dict[str, Any]] = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise ValueError(f"turns[{i}] is not an object")
        role = str(t.get("role", "")).strip().lower()
        text = t.get("text")
        if role in USER_ROLES:
            role = "user"
        elif role in AGENT_ROLES:
            role = "agent"
        else:
            raise ValueError(f"turns[{i}].role {t.get('role')!r} is not user or agent")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"turns[{i}].text is missing or empty")
        turn: dict[str, Any] = {"role": role, "text": text.strip()}
        if t.get("sources"):
            turn["sources"] = [str(s) for s in t["sources"]]
        if t.get("train") is False:
            turn["train"] = False
        if turns and turns[-1]["role"] == role:
            prev = turns[-1]
            prev["text"] += "\n" + turn["text"]
            if "sources" in turn:
                prev["sources"] = prev.get("sources", []) + turn["sources"]
            if turn.get("train") is False:
                prev["train"] = False
        else:
            turns.append(turn)
    return turns


def _from_json_record(rec: Any) -> Transcript:
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    turns = list(rec.get("turns") or [])
    if "dialogue" in rec:
        # Evaluation-dialogue format: the conversation up to a user turn, plus the gold reply.
        if rec.get("target") and rec.get("gold_response"):
            turns = turns + [{"role": "agent", "text": rec["gold_response"],
                              "sources": rec.get("gold_doc_ids") or []}]
        ident = str(rec.get("id") or "")
        if not ident:
            raise ValueError("'id' is missing")
        return Transcript(ident, normalize_turns(turns, ident), {}, group=str(rec["dialogue"]))
    ident = str(rec.get("id") or "")
    if not ident:
        raise ValueError("'id' is missing")
    meta = rec.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("'metadata' must be an object")
    meta = dict(meta)
    group = str(meta.pop("group", "") or "")
    return Transcript(ident, normalize_turns(turns, ident), meta, group=group)


def read_jsonl(path: Path, errors: list[str]) -> Iterator[Transcript]:
    """Transcripts from a JSONL file in the transcript or the evaluation-dialogue format."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield _from_json_record(json.loads(line))
            except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
                errors.append(f"{path}:{n}: {e}")


@dataclass
class CsvColumns:
    conversation: str = "conversation_id"
    role: str = "role"
    text: str = "text"
    timestamp: str = "timestamp"  # optional column: rows are sorted by it within a conversation


def _parse_time(value: str) -> float:
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_csv(path: Path, errors: list[str], columns: CsvColumns | None = None) -> Iterator[Transcript]:
    """Transcripts from a CSV file with one row per turn (column names configurable)."""
    cols = columns or CsvColumns()
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in (cols.conversation, cols.role, cols.text) if c not in header]
        if missing:
            errors.append(f"{path}:1: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
            return
        has_time = cols.timestamp in header
        convs: dict[str, list[tuple[float, int, dict[str, str]]]] = {}
        for n, row in enumerate(reader, 2):
            cid = (row.get(cols.conversation) or "").strip()
            if not cid:
                errors.append(f"{path}:{n}: column {cols.conversation!r} is empty")
                continue
            when = 0.0
            if has_time and (row.get(cols.timestamp) or "").strip():
                try:
                    when = _parse_time(row[cols.timestamp])
                except ValueError:
                    errors.append(f"{path}:{n}: column {cols.timestamp!r}: cannot parse {row[cols.timestamp]!r}")
                    continue
            convs.setdefault(cid, []).append(
                (when, n, {"role": row.get(cols.role) or "", "text": row.get(cols.text) or ""})
            )
    for cid, rows in convs.items():
        rows.sort(key=lambda r: (r[0], r[1]))  # stable: file order breaks timestamp ties
        try:
            yield Transcript(cid, normalize_turns([r[2] for r in rows], cid))
        except ValueError as e:
            errors.append(f"{path}:{rows[0][1]}: conversation {cid!r}: {e}")


def read_store(db, bot: str) -> Iterator[Transcript]:
    """Resolved conversations of ``bot`` from the dialogue store.

    User messages and human agents' replies are learnt from; a bot reply only when it was rated
    up and never down (other bot replies stay as context with ``train: False``); unfinished
    (interrupted) replies are context only as well.
    """
    from sqlalchemy import select

    from bot.core.store.models import Bot, Conversation, Feedback

    with db.session() as s:
        bot_id = s.scalar(select(Bot.id).where(Bot.name == bot))
        if bot_id is None:
            raise SupportbotError(f"no bot called {bot!r} in the dialogue store")
        ratings: dict[int, set[int]] = {}
        conv_ids = select(Conversation.id).where(
            Conversation.bot_id == bot_id, Conversation.status == "resolved"
        )
        for mid, rating in s.execute(
            select(Feedback.message_id, Feedback.rating).where(Feedback.conversation_id.in_(conv_ids))
        ):
            ratings.setdefault(mid, set()).add(rating)
        convs = s.scalars(
            select(Conversation)
            .where(Conversation.bot_id == bot_id, Conversation.status == "resolved")
            .order_by(Conversation.created_at, Conversation.id)
        ).all()
        for conv in convs:
            turns = []
            for m in conv.messages:
                if not m.text.strip():
                    continue
                turn: dict[str, Any] = {"role": "user" if m.role == "user" else "agent", "text": m.text}
                if m.role == "bot":
                    r = ratings.get(m.id, set())
                    if not (1 in r and -1 not in r) or not m.complete:
                        turn["train"] = False
                    turn["sources"] = [src["doc_id"] for src in (m.sources or []) if src.get("doc_id")]
                elif m.role != "user" and not m.complete:
                    turn["train"] = False
                turns.append(turn)
            try:
                yield Transcript(conv.id, normalize_turns(turns, conv.id), {"source": "store", "bot": bot})
            except ValueError:
                continue  # a resolved conversation without messages teaches nothing


def _scrub_value(value: Any, scrubber: PIIScrubber, counts: Counter) -> Any:
    if isinstance(value, str):
        text, c = scrubber.scrub(value)
        counts.update(c)
        return text
    if isinstance(value, list):
        return [_scrub_value(v, scrubber, counts) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, scrubber, counts) for k, v in value.items()}
    return value


def import_transcripts(
    sources: Iterable[Path | str],
    scrubber: PIIScrubber,
    *,
    csv_columns: CsvColumns | None = None,
    db=None,
    store_bot: str | None = None,
    strict: bool = True,
) -> tuple[list[Transcript], ImportReport]:
    """Read, validate, de-duplicate and PII-scrub transcripts from files (and the store).

    ``strict``: any invalid record raises ``TranscriptError`` listing them all, before anything is
    returned; otherwise invalid records are skipped and listed in ``report.errors``.
    """
    report = ImportReport()
    readers: list[Iterator[Transcript]] = []
    for src in sources:
        path = Path(src)
        if not path.is_file():
            report.errors.append(f"{path}: no such file")
            continue
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            readers.append(read_jsonl(path, report.errors))
        elif suffix in (".csv", ".tsv"):
            readers.append(read_csv(path, report.errors, csv_columns))
        else:
            report.errors.append(f"{path}: unsupported transcript file type {suffix!r} (use .jsonl or .csv)")
    if store_bot is not None:
        if db is None:
            raise SupportbotError("reading from the dialogue store needs a database")
        readers.append(read_store(db, store_bot))

    seen: set[str] = set()
    ids: set[str] = set()
    kept: list[Transcript] = []
    for reader in readers:
        for tr in reader:
            report.read += 1
            fp = tr.fingerprint()
            if fp in seen:
                report.duplicates += 1
                continue
            seen.add(fp)
            # Repeated ids from different files would merge two conversations when splitting.
            base, k = tr.id, 1
            while tr.id in ids:
                k += 1
                tr.id = f"{base}#{k}"
            ids.add(tr.id)
            for turn in tr.turns:  # texts only: source doc ids are ours, not the visitor's
                turn["text"] = _scrub_value(turn["text"], scrubber, report.pii)
            tr.metadata = _scrub_value(tr.metadata, scrubber, report.pii)
            kept.append(tr)
    if strict and report.errors:
        raise TranscriptError(report.errors)
    report.kept = len(kept)
    report.agent_turns = sum(1 for tr in kept for t in tr.turns if t["role"] == "agent")
    return kept, report


def write_transcripts(transcripts: Iterable[Transcript], path: Path) -> int:
    """Write transcripts as JSONL (the shared transcript format); atomic replace. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for tr in transcripts:
            f.write(json.dumps(tr.to_json(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
