"""The model registry's write side: install a model folder and switch the served one atomically.

Layout under ``data_dir/models``::

    CURRENT          {"version": 3, "path": "ft-2024-05-01", "promoted_at": ..., "evaluation": {...}}
    history.jsonl    one line per promotion (the same records), oldest first
    <name>/          model folders (the converted default model, promoted fine-tunes)

``CURRENT`` is replaced with ``os.replace`` (atomic on POSIX), so a reader sees the old or the new
pointer, never half of one; promotions serialise on a lock file. The read side (``current_model``,
``FollowingGenerator``, which serving processes use to follow the pointer) is
``bot/generators/following.py``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bot.core.errors import NotFound, SupportbotError
from bot.core.locks import exclusive
from bot.generators.following import POINTER, current_model, models_dir, read_pointer

HISTORY = "history.jsonl"
# Training leftovers not copied when a model folder is installed into the registry.
_SKIP = shutil.ignore_patterns("checkpoints", "best.pt", "best.pt.tmp", "logs")

_locked = exclusive  # one lock helper for every writer of the data dir


class ModelRegistry:
    def __init__(self, data_dir: Path):
        self.root = models_dir(data_dir)
        self.data_dir = Path(data_dir)

    def current(self) -> tuple[Path, int] | None:
        return current_model(self.data_dir)

    def record(self) -> dict[str, Any] | None:
        """The full ``CURRENT`` record (path, version, promoted_at, evaluation)."""
        return read_pointer(self.root / POINTER)

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
