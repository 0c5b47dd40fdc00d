"""A short, model-agnostic training loop on ``accelerate`` (nanoGPT-sized, with callbacks).

``Trainer(model, train_data, dev_data, collate, config, out_dir).fit()`` trains any module whose
``forward(**batch)`` returns an object with ``.loss`` (the mean over the batch's label tokens):
AdamW on the trainable parameters, linear warmup then cosine decay, gradient accumulation
(token-weighted: an optimizer step's gradient is the mean over all label tokens of its
micro-batches, whatever their lengths) and clipping, dev loss every ``eval_every`` optimizer steps
on at most ``max_dev_examples`` examples, with early stopping, TensorBoard logs and a progress
bar, checkpoints (model, optimizer, scheduler, RNG states, loop position) every
``checkpoint_every`` steps that ``fit(resume=True)`` continues from after an interruption. The
same script runs on one CPU, one GPU or many under ``accelerate launch`` / ``torchrun``:
Accelerator handles devices, DDP and fp16 loss scaling; bf16 is autocast around the forward passes.

Speed: batches come from ``LengthBucketSampler`` (examples of similar length together, so little
padding; batch order shuffled, reproducible by seed); ``mixed_precision="auto"`` means bfloat16
autocast on a GPU with bf16 and on a CPU with native bf16 instructions (AVX-512-BF16 or AMX, as
torch detects them), float32 elsewhere; on a CPU, torch uses one thread per physical core (split
between the local processes) unless ``threads`` says otherwise. The loop does no per-step work a
plain loop does not: the loss and token counts stay on the device and are read (and reduced
across processes) only when logging, evaluating or checkpointing; TensorBoard is written without
a flush per log line. An ``on_step`` callback receives each step's loss as a float, which costs one
device sync per step on a GPU: only register one when it is needed.

Stopping a run: the first Ctrl-C (SIGINT) or SIGTERM of a one-process run ends it after the
step in progress, as if ``max_steps`` had been reached there: the final dev loss, checkpoint and
the caller's export still happen, and ``metrics()["stopped_by"]`` names the signal; a second
Ctrl-C interrupts at once (``KeyboardInterrupt``; ``fit(resume=True)`` continues from the last
checkpoint). Why: a run's length is fixed when it starts, and a run found too slow to finish in
time had to be killed, losing its steps. Runs of several processes keep the default handlers (a
signal reaching them one step apart would leave DDP waiting), and so does a run outside the main
thread (signal handlers can only be set there).

Out dir layout: ``checkpoints/step-N/`` (newest ``keep_checkpoints`` kept), ``best.pt`` (trainable
weights at the lowest dev loss), ``logs/`` (TensorBoard).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import torch
from accelerate import Accelerator
from accelerate import skip_first_batches
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

IGNORE = -100


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
    # auto: bf16 on a GPU that has it or a CPU with native bf16 (AVX-512-BF16 / AMX), else no
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    max_dev_examples: int = 256  # dev loss on a fixed, seeded sample of this many; 0 means all
    threads: int = 0  # torch threads on a CPU; 0 means the physical cores / local processes


class Callback(Protocol):
    """Hooks (all optional). A callback may set ``trainer.should_stop = True``."""

    def on_step(self, trainer: "Trainer", step: int, loss: float) -> None: ...

    def on_eval(self, trainer: "Trainer", step: int, dev_loss: float) -> None: ...


# -- batching ----------------------------------------------------------------------------------------
class LengthBucketSampler(Sampler[list[int]]):
    """Batches of examples of similar length, in an order fixed by (seed, epoch).

    Each epoch: a seeded permutation of all examples is cut into pools of ``pool_batches``
    batches, each pool is sorted by length and cut into batches, and the batches of all pools are
    shuffled. Every example appears exactly once per epoch; only the last batch of the epoch can
    be short. ``shuffle=False`` gives the batches of the examples sorted by length (evaluation).
    Resuming mid-epoch replays the same order (``set_epoch`` then skip the batches done).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0,
                 pool_batches: int = 64, shuffle: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.lengths = [int(n) for n in lengths]
        self.batch_size, self.seed, self.pool_batches, self.shuffle = batch_size, seed, pool_batches, shuffle
        self.drop_last = False  # read by accelerate when it shards the batches across processes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: (self.lengths[i], i))
            return [order[i:i + bs] for i in range(0, n, bs)]
        rng = random.Random(self.seed * 100_003 + self.epoch)
        perm = list(range(n))
        rng.shuffle(perm)
        pool = bs * max(1, self.pool_batches)
        out: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = sorted(perm[start:start + pool], key=lambda i: self.lengths[i])  # stable
            out.extend(chunk[i:i + bs] for i in range(0, len(chunk), bs))
        short = [b for b in out if len(b) < bs]  # at most one: only the last pool can be short
        full = [b for b in out if len(b) == bs]
        rng.shuffle(full)
        return full + short

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def example_lengths(data: Dataset) -> list[int]:
    """Token count of every example: ``data.lengths()`` when it has one, else ``len(input_ids)``."""
    if hasattr(data, "lengths"):
        return list(data.lengths())
    return [len(data[i]["input_ids"]) for i in range(len(data))]


def dev_subset(data: Dataset, cap: int, seed: int) -> Dataset:
    """At most ``cap`` examples of ``data`` (a fixed sample by ``seed``, in dataset order); 0 = all."""
    n = len(data)
    if not cap or n <= cap:
        return data
    keep = sorted(random.Random(seed).sample(range(n), cap))
    return Subset(data, keep)


# -- the machine ----------------------------------------------------------------------------------------
def cpu_features() -> list[str]:
    """The CPU instruction sets torch detects and can use (avx2, avx512, avx512_bf16, amx_tile, ...)."""
    found = []
    for name in ("avx2", "avx512", "avx512_bf16", "vnni", "amx_tile", "amx_fp16"):
        probe = getattr(torch.cpu, f"_is_{name}_supported", None)
        try:
            if probe is not None and probe():
                found.append(name)
        except Exception:  # an old torch, or a probe that cannot run here
            pass
    return found


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX-512-BF16 or AMX tiles), as torch detects it."""
    return bool({"avx512_bf16", "amx_tile"} & set(cpu_features()))


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def training_threads(configured: int = 0) -> int:
    """Torch threads for training on a CPU: ``configured``, or the physical cores shared by the local processes."""
    if configured > 0:
        return configured
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, physical_cores() // max(1, local))


def resolve_mixed_precision(choice: str, device_type: str | None = None) -> str:
    """``auto`` -> bf16 on a GPU with bf16 or on a CPU with native bf16, else no; others unchanged."""
    if choice != "auto":
        return choice
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where torch has one for these parameters (CPU and CUDA)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _windows(batches: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Micro-batches grouped by optimizer step (the last group of an epoch may be short)."""
    window: list[dict] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


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
        self._step_callbacks = [cb for cb in self.callbacks if hasattr(cb, "on_step")]
        self.should_stop = False
        self.stop_reason: str | None = None  # the signal that stopped the run (SIGINT, SIGTERM)
        self.accelerator = Accelerator(
            # Several processes and no GPU (torchrun on CPUs): accelerate needs cpu=True for gloo DDP.
            cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
            # Accumulation is done here (token-weighted, see _train_step), not by accelerate.
            gradient_accumulation_steps=1,
            # bf16 is plain autocast around the forward passes (self._autocast): no loss scaling
            # needed, no fp32 copy of the logits, and no clash with accelerate's process-wide state
            # when runs of one process use different precisions. fp16 needs accelerate's scaler.
            mixed_precision="fp16" if config.mixed_precision == "fp16" else "no",
            log_with="tensorboard",
            project_dir=str(self.out_dir / "logs"),
        )
        acc = self.accelerator
        self._precision = resolve_mixed_precision(config.mixed_precision, acc.device.type)
        self.threads = None
        if acc.device.type == "cpu":
            self._threads_before = torch.get_num_threads()
            self.threads = training_threads(config.threads)
            torch.set_num_threads(self.threads)
        set_seed(config.seed)
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        self.sampler = LengthBucketSampler(example_lengths(train_data), config.batch_size, config.seed)
        # The loader's own generator: creating an iterator (also when resuming mid-epoch) then
        # draws nothing from the global RNG, so dropout masks replay exactly after a resume.
        train_loader = DataLoader(train_data, batch_sampler=self.sampler, collate_fn=collate,
                                  generator=torch.Generator().manual_seed(config.seed))
        self.dev_available = len(dev_data) if dev_data is not None else 0
        dev_loader = None
        if dev_data is not None and len(dev_data):
            dev_data = dev_subset(dev_data, config.max_dev_examples, config.seed)
            dev_loader = DataLoader(dev_data, collate_fn=collate, batch_sampler=LengthBucketSampler(
                example_lengths(dev_data), config.batch_size, shuffle=False))
        self.dev_size = len(dev_data) if dev_loader is not None else 0
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, config.lr, config.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.sampler) / acc.num_processes / config.grad_accum)
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
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.dev_loader = acc.prepare(dev_loader) if dev_loader is not None else None
        # Loop position, saved with every checkpoint.
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_dev_loss": None,
                                      "bad_evals": 0, "first_dev_loss": None, "last_dev_loss": None,
                                      "train_tokens": 0, "train_seconds": 0.0}
        self._zero_counters()

    @property
    def mixed_precision(self) -> str:
        """What the forward passes run in: bf16 | fp16 | no (float32)."""
        return self._precision

    def _autocast(self):
        if self._precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()  # float32, or fp16 (accelerate's wrapped forward)

    # -- logging -----------------------------------------------------------------------------------
    def _zero_counters(self) -> None:
        dev = self.accelerator.device
        # Device-side sums, read only when logging: (loss x label tokens, label tokens), tokens.
        self._log_sums = torch.zeros(2, device=dev)
        self._pending_tokens = torch.zeros((), dtype=torch.long, device=dev)
        self._log_seconds = 0.0

    def _log(self, values: dict[str, float], step: int) -> None:
        """Scalars to the trackers; TensorBoard's writer flushes on its own timer and at the end."""
        if not self.accelerator.is_main_process:
            return
        for tracker in self.accelerator.trackers:
            writer = getattr(tracker, "writer", None)
            if tracker.name == "tensorboard" and writer is not None:
                for k, v in values.items():
                    writer.add_scalar(k, v, global_step=step)
            else:
                tracker.log(values, step=step)

    def _flush_writers(self) -> None:
        if self.accelerator.is_main_process:
            for tracker in self.accelerator.trackers:
                writer = getattr(tracker, "writer", None)
                if tracker.name == "tensorboard" and writer is not None:
                    writer.flush()

    def _count_tokens(self) -> int:
        """Move the training tokens counted on the device (all processes) into ``state``."""
        tokens = int(self.accelerator.reduce(self._pending_tokens.clone(), "sum"))
        self._pending_tokens.zero_()
        self.state["train_tokens"] += tokens
        return tokens

    def _log_train(self) -> None:
        s = self.state
        sums = self.accelerator.reduce(self._log_sums.clone(), "sum").tolist()
        tokens = self._count_tokens()
        loss = sums[0] / max(sums[1], 1.0)
        self._log({"train/loss": loss, "train/lr": self.scheduler.get_last_lr()[0],
                   "train/tokens_per_s": tokens / max(self._log_seconds, 1e-9)}, step=s["step"])
        self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self._log_sums.zero_()
        self._log_seconds = 0.0

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean per-token loss on the dev set (token-weighted across batches and processes)."""
        if self.dev_loader is None:
            return None
        self.model.eval()
        total = torch.zeros(2, device=self.accelerator.device)  # (loss sum, label tokens)
        for batch in self.dev_loader:
            with self._autocast():
                out = self.model(**batch)
            n = (batch["labels"][:, 1:] != IGNORE).sum()  # causal shift: first label never predicted
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
        self._count_tokens()
        path = self.out_dir / "checkpoints" / f"step-{self.state['step']}"
        acc.save_state(str(path))
        acc.wait_for_everyone()
        if acc.is_main_process:
            # Written last: a checkpoint without it was interrupted mid-write and is ignored.
            (path / "trainer_state.json").write_text(json.dumps(self.state))
            for old in self._checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._flush_writers()
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
        self._log({"dev/loss": dev_loss}, step=s["step"])
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
    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While training: the first SIGINT / SIGTERM asks the loop to stop after the current
        step; a second SIGINT interrupts (see the module docstring)."""
        if self.accelerator.num_processes > 1 or threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, _frame):
            if self.stop_reason is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.should_stop = True
            self.stop_reason = signal.Signals(signum).name
            tqdm.write(f"{self.stop_reason}: stopping after this step; the model is still evaluated, "
                       "saved and exported (Ctrl-C again to abort at once)")

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _train_step(self, window: list[dict]) -> torch.Tensor:
        """One optimizer step over ``window``'s micro-batches; returns (loss x labels, labels) sums.

        Each micro-batch's mean loss is weighted by its share of the step's label tokens (over all
        processes: DDP averages gradients, hence the factor ``num_processes``), so the gradient is
        the mean over every label token of the step, however the lengths vary between batches.
        Gradients are synchronised across processes on the last micro-batch only.
        """
        acc, cfg = self.accelerator, self.config
        weighted = len(window) > 1 or acc.num_processes > 1
        counts = [(b["labels"][:, 1:] != IGNORE).sum() for b in window]
        if weighted:
            total = torch.stack(counts).sum().float()
            if acc.num_processes > 1:
                total = acc.reduce(total, "sum") / acc.num_processes
            total = total.clamp(min=1.0)
        sums = torch.zeros(2, device=acc.device)
        for i, (batch, n) in enumerate(zip(window, counts)):
            sync = i == len(window) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                with self._autocast():
                    loss = self.model(**batch).loss  # mean over this micro-batch's label tokens
                acc.backward(loss * (n / total) if weighted else loss)
            n = n.float()
            sums += torch.stack([loss.detach().float() * n, n])
            self._pending_tokens += batch["attention_mask"].sum()
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train until ``total_steps``, early stop, or a callback says stop; return the metrics."""
        acc, cfg, s = self.accelerator, self.config, self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.resume()
        acc.init_trackers("sft", config={k: v for k, v in asdict(cfg).items() if v is not None})
        if not resumed:
            self._after_eval(self.evaluate())  # the dev loss before any training
        checkpoint_every = cfg.checkpoint_every or cfg.eval_every
        self._bar = bar = tqdm(total=self.total_steps, initial=s["step"], desc="train",
                               disable=not acc.is_local_main_process, dynamic_ncols=True)
        self.model.train()
        self._zero_counters()
        with self._stop_on_signals():
            self._loop(bar, checkpoint_every)
        bar.close()
        if s["step"] % cfg.eval_every:  # the final weights were not evaluated yet
            self._after_eval(self.evaluate())
        if s["step"] % checkpoint_every:
            self.save_checkpoint()
        self._count_tokens()
        for tracker in acc.trackers:  # flush TensorBoard; the process group stays up for export
            tracker.finish()
        return self.metrics()

    def _loop(self, bar, checkpoint_every: int) -> None:
        """The optimizer steps until ``total_steps`` or ``should_stop``."""
        cfg, s = self.config, self.state
        t_last = time.perf_counter()
        while s["step"] < self.total_steps and not self.should_stop:
            self.sampler.set_epoch(s["epoch"])
            self.train_loader.set_epoch(s["epoch"])
            batches = (skip_first_batches(self.train_loader, s["batch_in_epoch"])
                       if s["batch_in_epoch"] else self.train_loader)
            for window in _windows(batches, cfg.grad_accum):
                sums = self._train_step(window)
                self._log_sums += sums
                s["batch_in_epoch"] += len(window)
                s["step"] += 1
                now = time.perf_counter()
                s["train_seconds"] += now - t_last
                self._log_seconds += now - t_last
                bar.update(1)
                if self._step_callbacks:
                    step_loss = float(sums[0] / sums[1].clamp(min=1))
                    for cb in self._step_callbacks:
                        cb.on_step(self, s["step"], step_loss)
                if s["step"] % cfg.log_every == 0 or s["step"] == 1:
                    self._log_train()
                if s["step"] % cfg.eval_every == 0:
                    self._after_eval(self.evaluate())
                if s["step"] % checkpoint_every == 0:
                    self.save_checkpoint()
                # Evaluation and checkpoint time stay out of the throughput figures.
                t_last = time.perf_counter()
                if s["step"] >= self.total_steps or self.should_stop:
                    break
            else:
                s["epoch"] += 1
                s["batch_in_epoch"] = 0

    def close(self) -> None:
        """End the run: trackers and, when distributed, the process group (call after exporting)."""
        self.accelerator.end_training()
        if self.threads is not None:
            torch.set_num_threads(self._threads_before)

    def metrics(self) -> dict[str, Any]:
        s = self.state
        return {
            "steps": s["step"],
            "total_steps": self.total_steps,
            "epochs_done": s["epoch"] + s["batch_in_epoch"] / max(1, len(self.train_loader)),
            "early_stopped": bool(self.should_stop and s["step"] < self.total_steps),
            "stopped_by": self.stop_reason,
            "dev_loss_before": s["first_dev_loss"],
            "dev_loss_best": s["best_dev_loss"],
            "dev_loss_last": s["last_dev_loss"],
            "dev_examples": self.dev_size,
            "train_tokens": s["train_tokens"],
            "train_seconds": round(s["train_seconds"], 2),
            "train_tokens_per_s": round(s["train_tokens"] / s["train_seconds"], 1) if s["train_seconds"] else None,
        }
