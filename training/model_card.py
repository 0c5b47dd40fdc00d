"""The model card of a fine-tuned model: ``training_card.json`` (machine-readable) and ``README.md``.

The card records what is needed to trust and reproduce a model: base model and method, the
dataset's hash and example counts, the PII replacements made while preparing it, the
hyper-parameters, the training metrics, and (after ``supportbot promote``) its evaluation. A
model made by a recipe (``supportbot train --recipe``) also records the recipe (path, hash, the
examples of each source), the machine (CPU model and features, GPU) and the untuned-vs-tuned
evaluation the recipe asks for.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_JSON = "training_card.json"


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v if v is not None else '-'} |")
    return "\n".join(lines)


def render_card(card: dict[str, Any]) -> str:
    """The README.md text of a card."""
    data, metrics, hp = card.get("data", {}), card.get("metrics", {}), card.get("hyperparameters", {})
    pii = data.get("pii", {}) or {}
    pii_text = ", ".join(f"{k}: {v}" for k, v in sorted(pii.items())) or "none found"
    parts = [
        "---",
        f"base_model: {card.get('base_model', '')}",
        "library_name: transformers",
        "tags: [supportbot, customer-support, sft]",
        "---",
        "",
        f"# {card.get('name', 'supportbot fine-tuned generator')}",
        "",
        f"Fine-tuned from `{card.get('base_model', '')}` ({card.get('method', '')}"
        f"{', adapter merged' if card.get('merged') else ''}) on support transcripts with supportbot.",
        "",
        "## Data",
        "",
        _table({
            "dataset": data.get("path"),
            "sha256": data.get("data_sha256"),
            "train examples (used)": f"{data.get('train_examples')} ({data.get('train_used')})",
            "dev examples (used for the dev loss)": f"{data.get('dev_examples')} ({data.get('dev_used')})",
            "train / dev conversations": f"{data.get('train_conversations')} / {data.get('dev_conversations')}",
            "prompts too long (skipped)": data.get("skipped_too_long"),
            "replies truncated": data.get("truncated"),
            "sources in prompts": data.get("sources"),
            "PII replaced": pii_text,
        }),
        "",
        "## Training",
        "",
        _table(hp),
        "",
        "## Metrics",
        "",
        _table(metrics),
    ]
    if card.get("recipe"):
        recipe = card["recipe"]
        parts += ["", "## Recipe", "", f"`{recipe.get('path')}` (sha256 {str(recipe.get('sha256', ''))[:12]})"
                  + (f", limit {recipe['limit']} conversations per source" if recipe.get("limit") else ""), "",
                  _table({k: json.dumps(v) for k, v in (recipe.get("by_source") or {}).items()})]
    if card.get("machine"):
        parts += ["", "## Machine", "", _table({k: ", ".join(v) if isinstance(v, list) else v
                                                for k, v in card["machine"].items()})]
    if card.get("wall_seconds") is not None:
        parts += ["", f"Wall time of the whole run (data, training, evaluation): {card['wall_seconds'] / 60:.1f} min."]
    if card.get("evaluation"):
        parts += ["", "## Evaluation (promotion gate)", "", "```json",
                  json.dumps(card["evaluation"], indent=2), "```"]
    return "\n".join(parts) + "\n"


def write_card(out_dir: Path, card: dict[str, Any]) -> Path:
    """Write ``training_card.json`` and ``README.md`` into ``out_dir``; return the JSON path."""
    out_dir = Path(out_dir)
    path = out_dir / CARD_JSON
    tmp = out_dir / (CARD_JSON + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, default=str))
    tmp.replace(path)
    (out_dir / "README.md").write_text(render_card(card))
    return path


def read_card(model_dir: Path) -> dict[str, Any]:
    """The card of a model folder ({} when it has none, e.g. the untuned default model)."""
    path = Path(model_dir) / CARD_JSON
    return json.loads(path.read_text()) if path.is_file() else {}
