"""The model registry: which generator model is served, switched atomically, followed live.

Layout under ``data_dir/models``::

    CURRENT          {"version": 3, "path": "ft-2024-05-01", "promoted_at": ..., "evaluation": {...}}
    history.jsonl    one line per promotion (the same records), oldest first
    <name>/          model folders (the converted default model, promoted fine-tunes)

``CURRENT`` is replaced with ``os.replace`` (atomic on POSIX), so a reader sees the old or the new
pointer, never half of one; promotions serialise on a lock file. ``current_model(data_dir)`` is a
``stat`` when nothing changed, cheap enough to call on every request. ``FollowingGenerator`` wraps
any generator factory and swaps in the promoted model when the pointer changes, without a restart.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bot.core.locks import exclusive
from bot.core.errors import NotFound, SupportbotError

log = logging.getLogger(__name__)

POINTER = "CURRENT"
HISTORY = "history.jsonl"
# Training leftovers not copied when a model folder is installed into the registry.
_SKIP = shutil.ignore_patterns("checkpoints", "best.pt", "best.pt.tmp", "logs")

_cache: dict[Path, tuple[tuple[int, int, int], tuple[Path, int] | None]] = {}


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def _read_pointer(pointer: Path) -> dict[str, Any] | None:
    try:
        return json.loads(pointer.read_text())
    except FileNotFoundError:
        return None


def current_model(data_dir: Path) -> tuple[Path, int] | None:
    """``(model folder, version)`` of the promoted model, or None when nothing was promoted.

    Re-reads the pointer only when its ``stat`` changed (one syscall per call otherwise).
    """
    pointer = models_dir(data_dir) / POINTER
    try:
        st = pointer.stat()
    except FileNotFoundError:
        return None
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _cache.get(pointer)
    if cached and cached[0] == key:
        return cached[1]
    rec = _read_pointer(pointer)
    value = None if rec is None else ((pointer.parent / rec["path"]).resolve(), int(rec["version"]))
    _cache[pointer] = (key, value)
    return value


_locked = exclusive  # one lock helper for every writer of the data dir


class ModelRegistry:
    def __init__(self, data_dir: Path):
        self.root = models_dir(data_dir)
        self.data_dir = Path(data_dir)

    def current(self) -> tuple[Path, int] | None:
        return current_model(self.data_dir)

    def record(self) -> dict[str, Any] | None:
        """The full ``CURRENT`` record (path, version, promoted_at, evaluation)."""
        return _read_pointer(self.root / POINTER)

    def resolve(self, candidate: str | Path) -> Path:
        """A model folder given as a path or as a name under ``models/``; it must hold a config.json."""
        for path in (Path(candidate), self.root / str(candidate)):
            if (path / "config.json").is_file():
                return path.resolve()
            if (path / "adapter_config.json").is_file():
                raise SupportbotError(f"{path}: a LoRA adapter alone; the hf backend serves merged "
                                      "models (train without --no-merge)")
        raise NotFound(f"{candidate}: not a model folder (no config.json), nor a model under {self.root}")

    def install(self, folder: Path, name: str | None = None) -> Path:
        """The folder inside ``models/``: copied there (without checkpoints and logs) unless it already is."""
        folder = Path(folder).resolve()
        if folder.parent == self.root.resolve():
            return folder
        name = name or folder.name
        dest = self.root / name
        if dest.exists():
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            dest = self.root / f"{name}-{stamp}"
        tmp = self.root / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp, ignore=_SKIP)
        os.replace(tmp, dest)
        return dest.resolve()

    def set_current(self, folder: Path, evaluation: dict[str, Any] | None = None) -> int:
        """Point ``CURRENT`` at ``folder`` (installed first if outside ``models/``); return the new version."""
        with _locked(self.root / ".promote.lock"):
            folder = self.install(folder)
            old = self.record() or {}
            rec = {
                "version": int(old.get("version", 0)) + 1,
                "path": os.path.relpath(folder, self.root.resolve()),
                "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "previous": old.get("path"),
                "evaluation": evaluation or {},
            }
            tmp = self.root / f".{POINTER}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(json.dumps(rec, indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / POINTER)
            with open(self.root / HISTORY, "a") as f:
                f.write(json.dumps(rec) + "\n")
            return rec["version"]

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FollowingGenerator:
    """A Generator that serves the promoted model and follows ``CURRENT`` without a restart.

    ``build(path)`` returns a loaded generator for a model folder, or for the configured model when
    ``path`` is None (nothing promoted yet). At most every ``poll_interval_s`` a call checks the
    pointer; a new version is built by the first caller that notices while others keep streaming
    from the old model, then swapped in. A stream already running finishes on the model it
    started with. A build that fails is logged and the old model stays; it is retried when the
    pointer changes again.
    """

    def __init__(self, build: Callable[[Path | None], Any], data_dir: Path, poll_interval_s: float = 1.0):
        self._build = build
        self.data_dir = Path(data_dir)
        self.poll_interval_s = poll_interval_s
        self._inner: Any = None
        self._version: int | None = None  # promoted version being served (None: configured model)
        self._failed: int | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    @property
    def version(self) -> int | None:
        return self._version

    def _maybe_swap(self) -> Any:
        now = time.monotonic()
        if self._inner is not None and now < self._next_check:
            return self._inner
        self._next_check = now + self.poll_interval_s
        cur = current_model(self.data_dir)
        version = cur[1] if cur else None
        if self._inner is not None and (version == self._version or version == self._failed):
            return self._inner
        if not self._lock.acquire(blocking=self._inner is None):
            return self._inner  # another thread is building; keep serving the old model
        try:
            if self._inner is not None and version == self._version:
                return self._inner
            try:
                inner = self._build(cur[0] if cur else None)
            except Exception as e:
                if self._inner is None:
                    raise
                log.error("promoted model version %s failed to load, still serving %s: %s",
                          version, getattr(self._inner, "model_id", "?"), e)
                self._failed = version
                return self._inner
            self._inner, self._version, self._failed = inner, version, None
            log.info("serving model %s (registry version %s)", getattr(inner, "model_id", "?"), version)
            return inner
        finally:
            self._lock.release()

    def load(self) -> None:
        self._maybe_swap()

    def stream(self, messages, **params) -> Iterator[str]:
        # The inner backend's own stream object (usage, finish_reason, ...), bound to its model.
        return self._maybe_swap().stream(messages, **params)

    @property
    def model_id(self) -> str:
        return str(getattr(self._maybe_swap(), "model_id", ""))

    def count_tokens(self, text: str) -> int:
        return self._maybe_swap().count_tokens(text)

    def __getattr__(self, name: str) -> Any:
        # tokenizer, last_usage and anything else a backend offers: from the model being served.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._maybe_swap(), name)


def following_generator(generator_settings, data_dir: Path, poll_interval_s: float = 1.0) -> FollowingGenerator:
    """The product's generator: ``settings.generator`` until a model is promoted, then that model
    on the ``hf`` backend (``Components.generator`` builds it with this)."""
    from bot.generators import build_generator

    def build(path: Path | None):
        gs = generator_settings if path is None else generator_settings.model_copy(
            update={"backend": "hf", "model": str(path)}
        )
        gen = build_generator(gs, Path(data_dir))
        gen.load()
        return gen

    if not isinstance(poll_interval_s, (int, float)) or poll_interval_s < 0:
        raise SupportbotError("poll_interval_s must be a non-negative number")
    return FollowingGenerator(build, data_dir, poll_interval_s)
