"""``supportbot train``: a prepared SFT dataset + a base model -> a fine-tuned model folder with a card.

``finetune(dataset_dir, base, out_dir, settings)`` loads the base (a folder, a hub id, or
"default" for the converted SmolLM2-135M-Instruct), wraps it with LoRA (peft, all linear layers)
unless ``method == "full"``, trains with ``training.trainer.Trainer``, restores the weights with
the lowest dev loss, and exports a folder the ``hf`` backend loads as it is: the adapter merged into
the base by default, or the adapter alone with its base recorded (``merge_lora = False``).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from bot.core.errors import ConfigError, SupportbotError
from bot.core.settings import TrainingSettings
from training.model_card import write_card
from training.sft_dataset import Collator, SFTData, read_examples
from training.trainer import Callback, TrainConfig, Trainer, cpu_features, cpu_model_name


def resolve_base(base: str, data_dir: Path) -> str:
    """"default" -> the converted default model folder; anything else is passed to from_pretrained."""
    if base == "default":
        from bot.generators.default_model import default_generator_dir

        return str(default_generator_dir(data_dir))
    return base


def train_config(settings: TrainingSettings, **overrides: Any) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in settings.model_dump().items() if k in fields}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def load_model(base: str, settings: TrainingSettings, method: str):
    """The base model and tokenizer, with LoRA adapters attached when ``method == "lora"``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"base model {base!r} cannot be loaded: {e}") from e
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"base model {base!r} has no chat template; the bot prompts with one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=settings.lora_r, lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.lora_target_modules) or "all-linear",
        ))
    return model, tokenizer


def _dataset_files(dataset_dir: Path) -> tuple[Path, Path, dict]:
    train, dev = dataset_dir / "train.jsonl", dataset_dir / "dev.jsonl"
    if not train.is_file():
        raise SupportbotError(f"{train}: not found (make one with `supportbot build-dataset`)")
    stats_path = dataset_dir / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    return train, dev, stats


def export(model, tokenizer, out_dir: Path, method: str, merge: bool) -> None:
    """Save a folder the hf backend loads: merged weights (or adapter + base) and the tokenizer."""
    if method == "lora" and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def finetune(
    dataset_dir: Path,
    base: str,
    out_dir: Path,
    settings: TrainingSettings,
    *,
    data_dir: Path = Path("./var"),
    resume: bool = True,
    keep_checkpoints: bool = False,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> dict[str, Any]:
    """Fine-tune and export; return the card. ``overrides`` replace TrainConfig fields (max_steps=...)."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    method = overrides.pop("method", None) or settings.method
    if method not in ("lora", "full"):
        raise ConfigError(f"training method {method!r}: use lora or full")
    train_path, dev_path, stats = _dataset_files(dataset_dir)
    base_path = resolve_base(base, data_dir)
    model, tokenizer = load_model(base_path, settings, method)
    train_ex = read_examples(train_path)
    dev_ex = read_examples(dev_path) if dev_path.is_file() else []
    train_data = SFTData(train_ex, tokenizer, settings.max_length)
    dev_data = SFTData(dev_ex, tokenizer, settings.max_length)
    if not len(train_data):
        raise SupportbotError(f"{train_path}: no example fits max_length={settings.max_length}")
    config = train_config(settings, **overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, train_data, dev_data, Collator(tokenizer.pad_token_id), config, out_dir, callbacks)
    metrics = trainer.fit(resume=resume)
    trainer.load_best()

    acc = trainer.accelerator
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    card = {
        "name": out_dir.name,
        "base_model": base if base != "default" else f"default ({base_path})",
        "base_path": base_path,
        "method": method,
        "merged": method == "lora" and settings.merge_lora,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "path": str(dataset_dir.resolve()),
            **{k: stats.get(k) for k in ("data_sha256", "train_examples", "dev_examples",
                                         "train_conversations", "dev_conversations", "sources",
                                         "pii", "import")},
            # dev_used: the examples the dev loss is computed on (at most max_dev_examples of the
            # dev_fit ones, a fixed seeded sample).
            "train_used": len(train_data), "dev_used": trainer.dev_size, "dev_fit": len(dev_data),
            "skipped_too_long": train_data.skipped + dev_data.skipped,
            "truncated": train_data.truncated + dev_data.truncated,
            "train_tokens_per_epoch": train_data.tokens(),
        },
        "hyperparameters": {
            **asdict(config), "max_length": settings.max_length, "trainable_params": trainable,
            **({"lora_r": settings.lora_r, "lora_alpha": settings.lora_alpha,
                "lora_dropout": settings.lora_dropout,
                "lora_target_modules": list(settings.lora_target_modules) or "all-linear"}
               if method == "lora" else {}),
            "processes": acc.num_processes, "device": str(acc.device), "mixed_precision": trainer.mixed_precision,
            **({"torch_threads": trainer.threads, "cpu": cpu_model_name(), "cpu_features": cpu_features()}
               if acc.device.type == "cpu" else {}),
        },
        "metrics": metrics,
    }
    if acc.is_main_process:
        export(acc.unwrap_model(trainer.model), tokenizer, out_dir, method, settings.merge_lora)
        write_card(out_dir, card)
        if not keep_checkpoints:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
            (out_dir / "best.pt").unlink(missing_ok=True)
    acc.wait_for_everyone()
    trainer.close()
    return card
