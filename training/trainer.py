"""A short, model-agnostic training loop on ``accelerate`` (nanoGPT-sized, with callbacks).

``Trainer(model, train_data, dev_data, collate, config, out_dir).fit()`` trains any module whose
``forward(**batch)`` returns an object with ``.loss``: AdamW on the trainable parameters, linear
warmup then cosine decay, gradient accumulation and clipping, bf16 autocast on a GPU, dev loss
every ``eval_every`` optimizer steps with early stopping, TensorBoard logs and a progress bar,
checkpoints (model, optimizer, scheduler, RNG states, loop position) every ``checkpoint_every``
steps that ``fit(resume=True)`` continues from after an interruption. The same script runs on
one CPU, one GPU or many under ``accelerate launch`` / ``torchrun``: Accelerator handles devices,
DDP and mixed precision.

Out dir layout: ``checkpoints/step-N/`` (newest ``keep_checkpoints`` kept), ``best.pt`` (trainable
weights at the lowest dev loss), ``logs/`` (TensorBoard).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from accelerate import Accelerator
from accelerate import skip_first_batches
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int = 0  # optimizer steps; 0 means from ``epochs``
    lr: float = 2e-4
    weight_decay: float = 0.0
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    eval_every: int = 50
    patience: int = 3  # evaluations without improvement before stopping; 0 never stops early
    checkpoint_every: int = 0  # 0 means ``eval_every``
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it, else no) | no | bf16 | fp16


class Callback(Protocol):
    """Hooks (all optional). A callback may set ``trainer.should_stop = True``."""

    def on_step(self, trainer: "Trainer", step: int, loss: float) -> None: ...

    def on_eval(self, trainer: "Trainer", step: int, dev_loss: float) -> None: ...


class EpochShuffle(Sampler[int]):
    """A permutation fixed by (seed, epoch): resuming mid-epoch replays the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        train_data: Dataset,
        dev_data: Dataset | None,
        collate,
        config: TrainConfig,
        out_dir: Path,
        callbacks: Sequence[Callback] = (),
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.should_stop = False
        self.accelerator = Accelerator(
            # Several processes and no GPU (torchrun on CPUs): accelerate needs cpu=True for gloo DDP.
            cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
            gradient_accumulation_steps=config.grad_accum,
            mixed_precision=_mixed_precision(config.mixed_precision),
            log_with="tensorboard",
            project_dir=str(self.out_dir / "logs"),
        )
        set_seed(config.seed)
        acc = self.accelerator
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        # The loader's own generator: creating an iterator (also when resuming mid-epoch) then
        # draws nothing from the global RNG, so dropout masks replay exactly after a resume.
        train_loader = DataLoader(train_data, batch_size=config.batch_size, collate_fn=collate,
                                  sampler=EpochShuffle(len(train_data), config.seed),
                                  generator=torch.Generator().manual_seed(config.seed))
        dev_loader = (DataLoader(dev_data, batch_size=config.batch_size, collate_fn=collate)
                      if dev_data is not None and len(dev_data) else None)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(train_loader) / acc.num_processes / config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        # The prepared scheduler steps once per process on every optimizer step.
        scheduler = get_cosine_schedule_with_warmup(
            optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total_steps) * acc.num_processes,
            num_training_steps=self.total_steps * acc.num_processes,
        )
        self.model, self.optimizer, self.train_loader, self.scheduler = acc.prepare(
            model, optimizer, train_loader, scheduler
        )
        self.dev_loader = acc.prepare(dev_loader) if dev_loader is not None else None
        # Loop position, saved with every checkpoint.
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_dev_loss": None,
                                      "bad_evals": 0, "first_dev_loss": None, "last_dev_loss": None,
                                      "train_tokens": 0, "train_seconds": 0.0}

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean per-token loss on the dev set (token-weighted across batches and processes)."""
        if self.dev_loader is None:
            return None
        self.model.eval()
        total = torch.zeros(2, device=self.accelerator.device)  # (loss sum, label tokens)
        for batch in self.dev_loader:
            out = self.model(**batch)
            n = (batch["labels"][:, 1:] != -100).sum()  # causal shift: first label never predicted
            total += torch.stack([out.loss.float() * n, n.float()])
        self.model.train()
        total = self.accelerator.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp(min=1))

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        root = self.out_dir / "checkpoints"
        done = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = self.out_dir / "checkpoints" / f"step-{self.state['step']}"
        acc.save_state(str(path))
        acc.wait_for_everyone()
        if acc.is_main_process:
            # Written last: a checkpoint without it was interrupted mid-write and is ignored.
            (path / "trainer_state.json").write_text(json.dumps(self.state))
            for old in self._checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any; True when one was loaded."""
        found = self._checkpoints()
        if not found:
            return False
        self.accelerator.load_state(str(found[-1]))
        self.state.update(json.loads((found[-1] / "trainer_state.json").read_text()))
        return True

    def _save_best(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            best = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
            torch.save(best, self.out_dir / "best.pt.tmp")
            (self.out_dir / "best.pt.tmp").replace(self.out_dir / "best.pt")
        acc.wait_for_everyone()

    def load_best(self) -> bool:
        """Put the lowest-dev-loss weights back into the model (True if there were any)."""
        path = self.out_dir / "best.pt"
        if not path.is_file():
            return False
        best = torch.load(path, map_location="cpu")
        model = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best:
                    p.copy_(best[n].to(p.device, p.dtype))
        return True

    def _after_eval(self, dev_loss: float | None) -> None:
        if dev_loss is None:
            return
        s = self.state
        s["last_dev_loss"] = dev_loss
        if s["first_dev_loss"] is None:
            s["first_dev_loss"] = dev_loss
        self.accelerator.log({"dev/loss": dev_loss}, step=s["step"])
        if s["best_dev_loss"] is None or dev_loss < s["best_dev_loss"] - 1e-6:
            s["best_dev_loss"], s["bad_evals"] = dev_loss, 0
            self._save_best()
        else:
            s["bad_evals"] += 1
            if self.config.patience and s["bad_evals"] >= self.config.patience:
                self.should_stop = True
        for cb in self.callbacks:
            if hasattr(cb, "on_eval"):
                cb.on_eval(self, s["step"], dev_loss)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train until ``total_steps``, early stop, or a callback says stop; return the metrics."""
        acc, cfg, s = self.accelerator, self.config, self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.resume()
        acc.init_trackers("sft", config={k: v for k, v in asdict(cfg).items() if v is not None})
        if not resumed:
            self._after_eval(self.evaluate())  # the dev loss before any training
        checkpoint_every = cfg.checkpoint_every or cfg.eval_every
        bar = tqdm(total=self.total_steps, initial=s["step"], desc="train",
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        self.model.train()
        window_loss, window_n, window_tokens, t_window = 0.0, 0, 0, time.perf_counter()
        while s["step"] < self.total_steps and not self.should_stop:
            self.train_loader.set_epoch(s["epoch"])
            batches = (skip_first_batches(self.train_loader, s["batch_in_epoch"])
                       if s["batch_in_epoch"] else self.train_loader)
            for batch in batches:
                with acc.accumulate(self.model):
                    loss = self.model(**batch).loss  # mean over this micro-batch's label tokens
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                s["batch_in_epoch"] += 1
                window_loss += loss.detach().float().item()
                window_n += 1
                window_tokens += int(batch["attention_mask"].sum())
                if not acc.sync_gradients:
                    continue
                s["step"] += 1
                bar.update(1)
                step_loss = window_loss / window_n
                elapsed = time.perf_counter() - t_window
                tokens = int(acc.reduce(torch.tensor(window_tokens, device=acc.device), "sum"))
                s["train_tokens"] += tokens
                s["train_seconds"] += elapsed
                if s["step"] % cfg.log_every == 0 or s["step"] == 1:
                    acc.log({"train/loss": step_loss, "train/lr": self.scheduler.get_last_lr()[0],
                             "train/tokens_per_s": tokens / max(elapsed, 1e-9)}, step=s["step"])
                bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
                for cb in self.callbacks:
                    if hasattr(cb, "on_step"):
                        cb.on_step(self, s["step"], step_loss)
                if s["step"] % cfg.eval_every == 0:
                    self._after_eval(self.evaluate())
                if s["step"] % checkpoint_every == 0:
                    self.save_checkpoint()
                # Evaluation and checkpoint time stay out of the throughput figures.
                window_loss, window_n, window_tokens, t_window = 0.0, 0, 0, time.perf_counter()
                if s["step"] >= self.total_steps or self.should_stop:
                    break
            else:
                s["epoch"] += 1
                s["batch_in_epoch"] = 0
        bar.close()
        if s["step"] % cfg.eval_every:  # the final weights were not evaluated yet
            self._after_eval(self.evaluate())
        if s["step"] % checkpoint_every:
            self.save_checkpoint()
        for tracker in acc.trackers:  # flush TensorBoard; the process group stays up for export
            tracker.finish()
        return self.metrics()

    def close(self) -> None:
        """End the run: trackers and, when distributed, the process group (call after exporting)."""
        self.accelerator.end_training()

    def metrics(self) -> dict[str, Any]:
        s = self.state
        return {
            "steps": s["step"],
            "total_steps": self.total_steps,
            "epochs_done": s["epoch"] + s["batch_in_epoch"] / max(1, len(self.train_loader)),
            "early_stopped": bool(self.should_stop and s["step"] < self.total_steps),
            "dev_loss_before": s["first_dev_loss"],
            "dev_loss_best": s["best_dev_loss"],
            "dev_loss_last": s["last_dev_loss"],
            "train_tokens": s["train_tokens"],
            "train_seconds": round(s["train_seconds"], 2),
            "train_tokens_per_s": round(s["train_tokens"] / s["train_seconds"], 1) if s["train_seconds"] else None,
        }
