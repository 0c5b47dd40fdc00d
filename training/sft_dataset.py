"""The SFT dataset: one example per agent turn, prompted exactly as the bot is prompted when serving.

Preparation (``build_examples`` -> ``split_by_conversation`` -> ``write_dataset``) is model-agnostic
and writes ``train.jsonl``/``dev.jsonl``: ``{"conversation", "turn", "messages", "reply",
"sources"}``, where ``messages`` come from ``bot.prompting.build_messages`` with the serving system
prompt, the sources for that turn and the trimmed history, so serving and training never skew.

Tokenisation (``encode_example``) happens at train time with the base model's tokenizer and chat
template: ``input_ids = prompt + reply + eos`` and ``labels`` are -100 on every prompt token, so
only the agent's reply (and the end-of-turn token that teaches it to stop) carries loss.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from bot.pipeline import TurnPipeline
from bot.prompting import build_messages
from bot.core.settings import DialogueSettings
from training.importers import Transcript

IGNORE = -100
# (message, earlier turns, the agent turn) -> sources for the prompt (Hits or {"title","text"} dicts)
SourceFn = Callable[[str, Sequence[dict], dict], Sequence[Any]]


@dataclass
class SFTExample:
    conversation: str  # the split group: examples of one conversation never straddle splits
    turn: int
    messages: list[dict]  # system (+ numbered sources), history, the user's message
    reply: str
    sources: list[str] = field(default_factory=list)  # doc ids shown in the prompt


class GoldSources:
    """Sources from the doc ids recorded on the turn (gold knowledge, or the bot's own sources)."""

    def __init__(self, kb: Mapping[str, Mapping[str, Any]]):
        self.kb = kb

    @classmethod
    def from_jsonl(cls, path: Path) -> "GoldSources":
        kb = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    doc = json.loads(line)
                    kb[str(doc["id"])] = {"doc_id": str(doc["id"]), "title": doc.get("title", ""),
                                          "text": doc.get("text", "")}
        return cls(kb)

    def __call__(self, message: str, turns: Sequence[dict], turn: dict) -> list[dict]:
        return [self.kb[d] for d in turn.get("sources", []) if d in self.kb]


class RetrievedSources:
    """The sources the serving path would ground this turn in: the turn pipeline's own
    ``retrieve`` (same candidates, same earlier turns) and ``select`` (the configured selector).
    Selected whatever the decision: the agent answered this turn, so it is an answer to learn."""

    def __init__(self, pipeline: TurnPipeline):
        self.pipeline = pipeline

    def __call__(self, message: str, turns: Sequence[dict], turn: dict) -> list:
        hits = self.pipeline.retrieve(message, turns)
        return self.pipeline.select(message, hits, turns).passages


def build_examples(
    transcripts: Iterable[Transcript],
    settings: DialogueSettings,
    sources: SourceFn | None = None,
    count_tokens: Callable[[str], int] | None = None,
    stats: Counter | None = None,
) -> Iterator[SFTExample]:
    """One example per learnable agent turn that follows a user message.

    History is the ``settings.context_turns`` turns before the user's message (what the dialogue
    manager loads), trimmed to ``settings.history_tokens`` by ``build_messages``. Identical turns
    seen again in the same conversation group (prefix instances of one dialogue) are skipped.
    """
    stats = stats if stats is not None else Counter()
    seen: set[str] = set()
    for tr in transcripts:
        for i, turn in enumerate(tr.turns):
            if turn["role"] != "agent":
                continue
            if turn.get("train") is False:
                stats["context_only_turns"] += 1
                continue
            if i == 0 or tr.turns[i - 1]["role"] != "user":
                stats["no_user_message"] += 1
                continue
            key = hashlib.sha256(
                json.dumps([tr.group, [(t["role"], t["text"]) for t in tr.turns[: i + 1]]]).encode()
            ).hexdigest()
            if key in seen:
                stats["duplicate_turns"] += 1
                continue
            seen.add(key)
            message = tr.turns[i - 1]["text"]
            earlier = [{"role": t["role"], "text": t["text"]} for t in tr.turns[: i - 1]]
            earlier = earlier[-settings.context_turns:] if settings.context_turns > 0 else []
            found = list(sources(message, earlier, turn)) if sources else []
            found = found[: settings.max_sources]
            messages = build_messages(
                message, found, earlier, settings.system_prompt,
                count_tokens=count_tokens, history_tokens=settings.history_tokens,
            )
            stats["examples"] += 1
            yield SFTExample(
                conversation=tr.group, turn=i, messages=messages, reply=turn["text"],
                sources=[_doc_id(s) for s in found],
            )


def _doc_id(source: Any) -> str:
    return str(source.get("doc_id", "") if isinstance(source, Mapping) else getattr(source, "doc_id", ""))


def split_by_conversation(
    examples: Sequence[SFTExample], dev_fraction: float, seed: int = 0
) -> tuple[list[SFTExample], list[SFTExample]]:
    """Split by conversation group, never by turn; the same seed gives the same split."""
    groups = sorted({e.conversation for e in examples})
    random.Random(seed).shuffle(groups)
    n_dev = math.ceil(dev_fraction * len(groups)) if dev_fraction > 0 and len(groups) > 1 else 0
    n_dev = min(n_dev, len(groups) - 1)
    dev_groups = set(groups[:n_dev])
    train = [e for e in examples if e.conversation not in dev_groups]
    dev = [e for e in examples if e.conversation in dev_groups]
    return train, dev


def write_dataset(out_dir: Path, train: Sequence[SFTExample], dev: Sequence[SFTExample],
                  info: dict[str, Any]) -> dict[str, Any]:
    """Write train.jsonl, dev.jsonl and stats.json (counts, ``data_sha256`` of both files, ``info``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name, rows in (("train.jsonl", train), ("dev.jsonl", dev)):
        tmp = out_dir / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in rows:
                line = json.dumps(asdict(e), ensure_ascii=False) + "\n"
                digest.update(line.encode())
                f.write(line)
        tmp.replace(out_dir / name)
    stats = {
        **info,
        "train_examples": len(train),
        "dev_examples": len(dev),
        "train_conversations": len({e.conversation for e in train}),
        "dev_conversations": len({e.conversation for e in dev}),
        "data_sha256": digest.hexdigest(),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def read_examples(path: Path) -> list[SFTExample]:
    with open(path, encoding="utf-8") as f:
        return [SFTExample(**json.loads(line)) for line in f if line.strip()]


def encode_example(tokenizer, messages: Sequence[dict], reply: str, max_length: int) -> dict | None:
    """``{"input_ids", "labels"}`` for one example, or None when the prompt alone does not fit.

    The prompt is tokenised on its own, exactly as the generator tokenises it when serving
    (chat template with the generation prompt); the completion is the rest of the template's
    rendering of the full conversation, cut after the first end-of-sequence token. A reply that
    does not fit ``max_length`` is truncated (loss on its beginning only).
    """
    prompt = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        list(messages) + [{"role": "assistant", "content": reply}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside the full conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in completion:
        completion = completion[: completion.index(eos) + 1]  # drop what follows end-of-turn
    else:
        completion = completion + [eos]
    if len(prompt_ids) >= max_length - 8:  # leave room for a reply worth learning from
        return None
    completion = completion[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + completion,
        "labels": [IGNORE] * len(prompt_ids) + completion,
    }


class SFTData(torch.utils.data.Dataset):
    """Encoded examples; ``skipped`` counts those whose prompt did not fit ``max_length``."""

    def __init__(self, examples: Sequence[SFTExample], tokenizer, max_length: int):
        self.items: list[dict] = []
        self.skipped = 0
        self.truncated = 0
        for e in examples:
            enc = encode_example(tokenizer, e.messages, e.reply, max_length)
            if enc is None:
                self.skipped += 1
                continue
            if enc["labels"][-1] != tokenizer.eos_token_id:
                self.truncated += 1
            self.items.append(enc)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def tokens(self) -> int:
        return sum(len(x["input_ids"]) for x in self.items)

    def lengths(self) -> list[int]:
        """Tokens of every example (the trainer's length-bucketed batching reads them)."""
        return [len(x["input_ids"]) for x in self.items]


class Collator:
    """Right-pads a batch: ``input_ids`` with the pad id, ``labels`` with -100. Shapes (B, T).

    The trainer's batches hold examples of similar length (``training.trainer.LengthBucketSampler``),
    so the padding is small; ``attention_mask`` marks the real tokens (the throughput counts those).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[i, :n] = torch.as_tensor(x["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(x["labels"], dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
