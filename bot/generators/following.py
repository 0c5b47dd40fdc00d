"""The served model, followed live: the read side of the model registry.

``data_dir/models/CURRENT`` names the promoted model (``training/registry.py`` writes it, with
``os.replace``, so a reader sees the old or the new pointer, never half of one).
``current_model(data_dir)`` is a ``stat`` when nothing changed, cheap enough to call on every
request. ``FollowingGenerator`` is a ``Generator`` that serves the promoted model and swaps in a
newly promoted one without a restart.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.core.errors import SupportbotError
from bot.generators.base import GenerationStream, Generator

log = logging.getLogger(__name__)

POINTER = "CURRENT"

_cache: dict[Path, tuple[tuple[int, int, int], tuple[Path, int] | None]] = {}


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def read_pointer(pointer: Path) -> dict[str, Any] | None:
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
    rec = read_pointer(pointer)
    value = None if rec is None else ((pointer.parent / rec["path"]).resolve(), int(rec["version"]))
    _cache[pointer] = (key, value)
    return value


class FollowingGenerator:
    """A Generator that serves the promoted model and follows ``CURRENT`` without a restart.

    ``build(path)`` returns a loaded generator for a model folder, or for the configured model when
    ``path`` is None (nothing promoted yet). At most every ``poll_interval_s`` a call checks the
    pointer; a new version is built by the first caller that notices while others keep streaming
    from the old model, then swapped in. A stream already running finishes on the model it
    started with. A build that fails is logged and the old model stays; it is retried when the
    pointer changes again.
    """

    def __init__(self, build: Callable[[Path | None], Generator], data_dir: Path, poll_interval_s: float = 1.0):
        self._build = build
        self.data_dir = Path(data_dir)
        self.poll_interval_s = poll_interval_s
        self._inner: Generator | None = None
        self._version: int | None = None  # promoted version being served (None: configured model)
        self._failed: int | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    @property
    def version(self) -> int | None:
        return self._version

    def _maybe_swap(self) -> Generator:
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

    def load(self) -> "FollowingGenerator":
        self._maybe_swap()
        return self

    def stream(self, messages: Sequence[dict], **params: Any) -> GenerationStream:
        # The inner backend's own stream object (usage, finish_reason, ...), bound to its model.
        return self._maybe_swap().stream(messages, **params)

    @property
    def served(self) -> Generator:
        """The backend serving now (the promoted model, or the configured one)."""
        return self._maybe_swap()

    @property
    def model_id(self) -> str:
        return str(self._maybe_swap().model_id)

    @property
    def tokenizer(self) -> Any:
        return self._maybe_swap().tokenizer

    @property
    def last_usage(self) -> dict | None:
        return self._maybe_swap().last_usage

    def count_tokens(self, text: str) -> int:
        return self._maybe_swap().count_tokens(text)


def following_generator(generator_settings, data_dir: Path, poll_interval_s: float = 1.0) -> FollowingGenerator:
    """The product's generator: ``settings.generator`` until a model is promoted, then that model
    on the ``hf`` backend (``Components.generator`` builds it with this)."""
    from bot.generators import build_generator

    def build(path: Path | None):
        # A promoted model is served as it was evaluated: its own weights, no adapter on top.
        gs = generator_settings if path is None else generator_settings.model_copy(
            update={"backend": "hf", "model": str(path), "adapter": ""}
        )
        gen = build_generator(gs, Path(data_dir))
        gen.load()
        return gen

    if not isinstance(poll_interval_s, (int, float)) or poll_interval_s < 0:
        raise SupportbotError("poll_interval_s must be a non-negative number")
    return FollowingGenerator(build, data_dir, poll_interval_s)
