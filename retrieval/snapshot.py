"""Versioned, atomically published index snapshots of each bot, and hot swap in serving processes.

A snapshot is everything a retriever needs in memory: the dense index, the lexical index and the
catalog (chunk id -> ChunkInfo). On disk (``root`` is shared by every process, possibly on a
volume several hosts mount)::

    root/<bot>/CURRENT          "v00000012": the version readers load (replaced atomically)
    root/<bot>/v00000012/       manifest.json (written last), dense/, lexical/, catalog.jsonl
    root/<bot>/.tmp-...         a publish in progress, or one that crashed (removed by the next)

``publish`` writes a fresh temp dir, fsyncs every file and dir, renames it to its version dir and
only then replaces ``CURRENT`` (temp file, fsync, ``os.replace``): a crash at any point leaves the
previous version current and loadable. Readers open a version dir by name, so a publish never
changes files under them; old versions are deleted only when ``keep`` newer ones exist and they
were superseded more than ``grace_s`` ago. No pickle anywhere: NumPy arrays, FAISS files, JSON.

``LiveSnapshot`` holds one bot's current snapshot in a serving process and swaps in newer ones;
callers take a reference with ``get()`` and keep using it for the whole query.
"""
from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bot.core.errors import IndexCorrupt, SupportbotError
from bot.core.settings import IndexSettings
from retrieval.faiss_index import FaissIndex, NumpyIndex
from retrieval.types import ChunkInfo, VectorIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CATALOG = "catalog.jsonl"
_VERSION_DIR = re.compile(r"v(\d{8})")
_BOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DENSE = {"faiss": FaissIndex, "numpy": NumpyIndex}


@dataclass
class Snapshot:
    """One bot's searchable state. Treat as immutable once published or loaded."""

    dense: VectorIndex
    lexical: Any | None  # an object with save(dir) and classmethod load(dir), e.g. BM25Index
    catalog: dict[int, ChunkInfo]
    version: int = 0
    embedder_id: str = ""


# ---- durable file helpers ------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(top: Path) -> None:
    """fsync every file, then every directory bottom-up (so the entries themselves are durable)."""
    for dirpath, _, files in os.walk(top, topdown=False):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _version_name(version: int) -> str:
    return f"v{version:08d}"


def _check_bot(bot: str) -> str:
    if not isinstance(bot, str) or not _BOT_NAME.fullmatch(bot):
        raise SupportbotError(
            f"invalid bot name {bot!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return bot


def _lexical_kind(lexical: Any) -> str | None:
    if lexical is None:
        return None
    cls = type(lexical)
    return f"{cls.__module__}:{cls.__qualname__}"


def _lexical_class(kind: str, where: Path):
    module, _, name = kind.partition(":")
    # Only our own package: the manifest may sit on a shared volume, it must not pick code to run.
    if not module.startswith("retrieval.") or not name.isidentifier():
        raise IndexCorrupt(f"{where}: lexical index class {kind!r} is not a retrieval class")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise IndexCorrupt(f"{where}: lexical index class {kind!r} not available ({e})") from None


# ---- the store -----------------------------------------------------------------------------


class SnapshotStore:
    """Publishes and loads snapshots under ``root``; safe across threads, processes and hosts
    sharing the directory (publishers of one bot serialise on a lock file)."""

    def __init__(
        self, root: Path, settings: IndexSettings | None = None, keep: int = 3, grace_s: float = 60.0
    ):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.root = Path(root)
        self.settings = settings or IndexSettings()
        self.keep = keep
        self.grace_s = grace_s
        # Versions this object published, so a LiveSnapshot sharing it sees its own process's
        # writes at once instead of after its polling interval.
        self._published: dict[str, int] = {}

    # ---- writing ------------------------------------------------------------------------
    def publish(self, bot: str, snapshot: Snapshot) -> int:
        """Write ``snapshot`` as the bot's next version and make it current; returns the version.

        Sets ``snapshot.version``. Nothing is visible to readers until the final ``CURRENT``
        replace; an exception (or a crash) before it leaves the previous version current.
        """
        bot_dir = self.root / _check_bot(bot)
        bot_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(bot_dir):
            self._remove_temp_dirs(bot_dir)  # we hold the lock: any temp dir is a dead publisher's
            version = max([self._read_current(bot_dir), *self._versions(bot_dir)], default=0) + 1
            tmp = bot_dir / f".tmp-{_version_name(version)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                self._write(tmp, bot, version, snapshot)
                final = bot_dir / _version_name(version)
                os.rename(tmp, final)
                _fsync_path(bot_dir)
                self._write_current(bot_dir, version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            snapshot.version = version
            self._published[bot] = version
            self._collect_garbage(bot_dir, version)
        return version

    def _write(self, tmp: Path, bot: str, version: int, snap: Snapshot) -> None:
        dense_kind = next((name for name, cls in _DENSE.items() if type(snap.dense) is cls), None)
        if dense_kind is None:
            raise SupportbotError(f"cannot save a dense index of type {type(snap.dense).__name__}")
        snap.dense.save(tmp / "dense")
        if snap.lexical is not None:
            snap.lexical.save(tmp / "lexical")
        with open(tmp / CATALOG, "w", encoding="utf-8") as fh:
            for chunk_id, info in snap.catalog.items():
                if chunk_id != info.chunk_id:
                    raise SupportbotError(f"catalog key {chunk_id} holds chunk {info.chunk_id}")
                try:
                    fh.write(json.dumps(asdict(info), ensure_ascii=False) + "\n")
                except (TypeError, ValueError) as e:
                    raise SupportbotError(f"chunk {chunk_id}: metadata is not JSON ({e})") from None
        _fsync_tree(tmp)
        files = {
            str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {
            "format": FORMAT_VERSION, "bot": bot, "version": version, "created": time.time(),
            "embedder_id": snap.embedder_id, "dim": getattr(snap.dense, "dim", None), "dense": dense_kind,
            "lexical": _lexical_kind(snap.lexical), "chunks": len(snap.catalog), "vectors": len(snap.dense),
            "files": files,
        }
        _write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_path(tmp)

    def _write_current(self, bot_dir: Path, version: int) -> None:
        tmp = bot_dir / f".{CURRENT}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        _write_durably(tmp, (_version_name(version) + "\n").encode())
        os.replace(tmp, bot_dir / CURRENT)
        _fsync_path(bot_dir)

    # ---- reading ------------------------------------------------------------------------
    def latest_version(self, bot: str) -> int:
        """The bot's current version (0: none published). One small file read."""
        return self._read_current(self.root / _check_bot(bot))

    def published_version(self, bot: str) -> int | None:
        """The last version this object published for ``bot`` (no I/O); None if none."""
        return self._published.get(bot)

    def versions(self, bot: str) -> list[int]:
        """Version dirs present on disk, oldest first."""
        return self._versions(self.root / _check_bot(bot))

    def manifest(self, bot: str, version: int) -> dict | None:
        """The manifest of a finished version (its chunk count, embedder, files), or None when the
        version is missing, unfinished or unreadable. One small file read: a cheap check that a
        published snapshot is still there, without loading it."""
        path = self.root / _check_bot(bot) / _version_name(int(version)) / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("version") != int(version):
            return None
        return manifest

    def load(
        self, bot: str, version: int | None = None, *, embedder_id: str | None = None, strict: bool = False
    ) -> Snapshot | None:
        """Load a version (default: the current one).

        Returns None when nothing is published. A version that cannot be used (missing, torn,
        another format, or built with another embedder than ``embedder_id``) raises
        ``IndexCorrupt`` when ``strict``; otherwise it is logged and None is returned, meaning
        "no index: rebuild it from the database".
        """
        bot_dir = self.root / _check_bot(bot)
        try:
            version = self._read_current(bot_dir) if version is None else int(version)
            if version <= 0:
                return None
            return self._load(bot_dir, bot, version, embedder_id)
        except IndexCorrupt as e:
            if strict:
                raise
            log.warning("index snapshot unusable, rebuild needed: %s", e.message)
            return None

    def _load(self, bot_dir: Path, bot: str, version: int, embedder_id: str | None) -> Snapshot:
        vdir = bot_dir / _version_name(version)
        path = vdir / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise IndexCorrupt(f"{vdir}: no such snapshot (or an unfinished one)") from None
        except (OSError, ValueError) as e:
            raise IndexCorrupt(f"{path}: unreadable ({e})") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexCorrupt(
                f"{path}: snapshot format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}"
            )
        if manifest.get("bot") != bot or manifest.get("version") != version:
            raise IndexCorrupt(f"{path}: holds bot {manifest.get('bot')!r} v{manifest.get('version')}")
        if embedder_id is not None and manifest.get("embedder_id") != embedder_id:
            raise IndexCorrupt(
                f"{vdir}: built with embedder {manifest.get('embedder_id')!r}, serving with {embedder_id!r}"
            )
        for rel, size in manifest.get("files", {}).items():
            f = vdir / rel
            actual = f.stat().st_size if f.is_file() else None
            if actual != size:
                raise IndexCorrupt(f"{f}: {actual} bytes on disk, {size} written")
        dense_cls = _DENSE.get(manifest.get("dense"))
        if dense_cls is None:
            raise IndexCorrupt(f"{path}: unknown dense index kind {manifest.get('dense')!r}")
        try:
            dense = dense_cls.load(vdir / "dense", self.settings)
        except IndexCorrupt:
            raise
        except Exception as e:  # any reader failure of a damaged file is a corrupt snapshot
            raise IndexCorrupt(f"{vdir / 'dense'}: {type(e).__name__}: {e}") from None
        lexical = None
        if manifest.get("lexical"):
            cls = _lexical_class(manifest["lexical"], path)
            try:
                lexical = cls.load(vdir / "lexical")
            except Exception as e:
                raise IndexCorrupt(f"{vdir / 'lexical'}: {type(e).__name__}: {e}") from None
        catalog = self._read_catalog(vdir / CATALOG)
        if len(catalog) != manifest.get("chunks") or len(dense) != manifest.get("vectors"):
            raise IndexCorrupt(
                f"{vdir}: {len(catalog)} chunks and {len(dense)} vectors, manifest says "
                f"{manifest.get('chunks')} and {manifest.get('vectors')}"
            )
        return Snapshot(dense=dense, lexical=lexical, catalog=catalog, version=version,
                        embedder_id=manifest.get("embedder_id", ""))

    @staticmethod
    def _read_catalog(path: Path) -> dict[int, ChunkInfo]:
        catalog: dict[int, ChunkInfo] = {}
        try:
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    try:
                        info = ChunkInfo(**json.loads(line))
                    except (ValueError, TypeError) as e:
                        raise IndexCorrupt(f"{path}:{lineno}: bad catalog line ({e})") from None
                    catalog[info.chunk_id] = info
        except OSError as e:
            raise IndexCorrupt(f"{path}: unreadable ({e})") from None
        return catalog

    # ---- internals ----------------------------------------------------------------------
    @staticmethod
    def _read_current(bot_dir: Path) -> int:
        path = bot_dir / CURRENT
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return 0
        m = _VERSION_DIR.fullmatch(text)
        if not m:
            raise IndexCorrupt(f"{path}: expected a version like v00000001, found {text[:40]!r}")
        return int(m.group(1))

    @staticmethod
    def _versions(bot_dir: Path) -> list[int]:
        if not bot_dir.is_dir():
            return []
        found = (_VERSION_DIR.fullmatch(p.name) for p in bot_dir.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    @staticmethod
    @contextmanager
    def _lock(bot_dir: Path) -> Iterator[None]:
        with open(bot_dir / ".publish.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _remove_temp_dirs(bot_dir: Path) -> None:
        for p in bot_dir.iterdir():
            if p.name.startswith((".tmp-", ".trash-")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{CURRENT}.") and p.is_file():
                p.unlink(missing_ok=True)

    def _collect_garbage(self, bot_dir: Path, current: int) -> None:
        """Delete versions older than the ``keep`` newest once superseded for ``grace_s``."""
        versions = [v for v in self._versions(bot_dir) if v <= current]
        doomed = versions[: -self.keep]
        now = time.time()
        for i, v in enumerate(doomed):
            successor = bot_dir / _version_name(versions[i + 1]) / MANIFEST
            try:
                superseded_at = successor.stat().st_mtime
            except FileNotFoundError:
                continue
            if now - superseded_at < self.grace_s:
                continue
            # Rename first: the version disappears at once, never half-deleted under a reader.
            trash = bot_dir / f".trash-{_version_name(v)}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(bot_dir / _version_name(v), trash)
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)


# ---- serving side --------------------------------------------------------------------------


class LiveSnapshot:
    """One bot's current snapshot in a serving process, swapped when a newer version appears.

    ``get()`` returns the snapshot to use for one query (or None when the bot has no usable
    index). At most every ``interval_s`` it reads ``CURRENT``; a newer version is loaded in a
    background thread (or the calling thread with ``background=False``) while queries keep using
    the old one, then the reference is swapped. A version published through the same
    ``SnapshotStore`` object is loaded at once, so a process sees its own writes. A version that
    fails to load is logged and skipped until a newer one appears. Thread-safe.
    """

    def __init__(
        self,
        store: SnapshotStore,
        bot: str,
        interval_s: float = 1.0,
        *,
        embedder_id: str | None = None,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.bot = _check_bot(bot)
        self.interval_s = interval_s
        self.embedder_id = embedder_id
        self.background = background
        self._clock = clock
        self._snap: Snapshot | None = None
        self._failed: int | None = None
        self._next_check = float("-inf")
        self._load_lock = threading.Lock()  # one load at a time
        self._worker_lock = threading.Lock()  # one background reloader at a time
        self._worker: threading.Thread | None = None

    @property
    def version(self) -> int:
        snap = self._snap
        return snap.version if snap is not None else 0

    def get(self) -> Snapshot | None:
        snap = self._snap
        mine = self.store.published_version(self.bot)
        if snap is None or (mine is not None and mine > snap.version):
            self.refresh()  # nothing to serve yet, or our own write: wait for it
        elif self._clock() >= self._next_check:
            self._next_check = self._clock() + self.interval_s  # before the worker runs: one per interval
            if self.background:
                self._start_worker()
            else:
                self.refresh()
        return self._snap

    def refresh(self) -> bool:
        """Check ``CURRENT`` now and load it if it differs from the held version; True if swapped."""
        with self._load_lock:
            self._next_check = self._clock() + self.interval_s
            try:
                latest = self.store.latest_version(self.bot)
            except IndexCorrupt as e:
                log.warning("%s", e.message)
                return False
            if latest <= 0 or latest == self.version or latest == self._failed:
                return False
            try:
                snap = self.store.load(self.bot, latest, embedder_id=self.embedder_id, strict=True)
            except IndexCorrupt as e:
                self._failed = latest
                log.warning("not swapping in index v%d of bot %r: %s", latest, self.bot, e.message)
                return False
            self._snap = snap  # one reference assignment: readers see the old or the new, whole
            self._failed = None
            return True

    def _start_worker(self) -> None:
        with self._worker_lock:
            worker = self._worker
            if worker is not None and worker.is_alive():
                return
            self._worker = threading.Thread(
                target=self._refresh_logged, name=f"index-reload-{self.bot}", daemon=True
            )
            self._worker.start()

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except Exception:  # a reload must never kill serving; the next interval retries
            log.exception("index reload of bot %r failed", self.bot)


class StoredVectors:
    """Passage vectors of the current index snapshot by chunk id, so a selector does not embed
    passages again: ``stored(chunk_ids) -> (n, d)`` float32, or None when a chunk is not there.
    ``snapshot_provider`` is ``LiveSnapshot.get`` (the vectors follow the published snapshot)."""

    def __init__(self, snapshot_provider: Callable[[], "Snapshot | None"]):
        self.snapshot_provider = snapshot_provider
        self._snapshot = None
        self._rows: dict[int, int] = {}
        self._vecs = np.zeros((0, 0), np.float32)
        self._lock = threading.Lock()

    def __call__(self, chunk_ids: Sequence[int]) -> np.ndarray | None:
        snap = self.snapshot_provider()
        dense = getattr(snap, "dense", None)
        if dense is None:
            return None
        with self._lock:
            if snap is not self._snapshot:
                ids, vecs = dense.vectors()
                self._rows = {int(i): r for r, i in enumerate(ids)}
                self._vecs, self._snapshot = vecs.astype(np.float32), snap
            rows = [self._rows.get(int(i)) for i in chunk_ids]
            if any(r is None for r in rows):
                return None
            return self._vecs[rows]
