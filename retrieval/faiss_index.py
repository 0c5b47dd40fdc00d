"""Dense vector indexes keyed by chunk id: FAISS (exact, then HNSW past a size) and a NumPy baseline.

Both implement ``retrieval.types.VectorIndex``: inner product on L2-normalised float32 vectors
(= cosine), ids are our chunk ids (int64 >= 0), adding an id that exists replaces its vector, and
``search`` pads missing slots with id -1 and score -inf. ``search(..., allowed_ids=...)`` restricts
the results to a subset of ids (entity- or filter-restricted search).

``FaissIndex`` stores vectors at internal slots 0..ntotal-1 and maps slots to chunk ids itself
(``_ids``: slot -> id, -1 once deleted; ``_slot``: id -> live slot). Representation (``kind``):

- ``"flat"`` up to ``IndexSettings.exact_max`` vectors: ``IndexFlatIP``, exact. Removing compacts
  at once (cheap at this size), so it never holds dead slots.
- ``"hnsw"`` above: ``IndexHNSWFlat``. Chosen over IVF-Flat by ``bench/index_scale.py
  --compare-ivf`` on vectors shaped like MiniLM embeddings: at 100k and at 1M HNSW reached
  higher recall@10 than IVF even at large nprobe (at 1M in less time per query too), and it also
  led on real MiniLM vectors of the DSTC11 snippets; the price is a much slower build (figures in
  the README). FAISS's HNSW cannot remove vectors, so a removal marks the slot dead: searches
  pass a bitmap of live slots (``IDSelectorBitmap``), the graph keeps routing through dead nodes,
  and once dead slots exceed ``rebuild_dead_fraction`` the index is rebuilt from the live vectors.

An ``add`` that crosses ``exact_max`` switches to HNSW; ``rebuild()`` picks the representation
afresh for the current size, which is where an index that shrank goes back to exact.

Filtered search: with at most ``exact_max`` allowed ids the allowed vectors are scored exactly
(gathered, one matrix product); above that, HNSW searches with the allowed slots as a selector
and ``efSearch`` divided by the allowed fraction, so about as many allowed candidates are
examined as in an unfiltered search.

Concurrency: any number of threads may ``search`` at once (FAISS searches are read-only and
release the GIL). ``add``/``remove``/``rebuild`` must not overlap other calls; serving processes
never mutate, they swap in a freshly published snapshot (``retrieval.snapshot``).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from bot.core.errors import IndexCorrupt
from bot.core.settings import IndexSettings

FORMAT_VERSION = 2  # 2: slot ids beside the FAISS file (HNSW with dead slots)
META_FILE = "dense.json"
FAISS_FILE = "dense.faiss"
IDS_FILE = "ids.npy"
VECS_FILE = "vecs.npy"


# Searches of fewer queries than this run on ``IndexSettings.search_threads`` OpenMP threads. With
# 2 OpenMP threads a batch-1 exact search on 2 busy cores is many times slower than on one: the
# threads wait on each other (bench/index_scale.py; figures in the README). FAISS's thread count
# is per calling thread (libgomp), so setting it here does not touch other threads' batch work.
SMALL_BATCH = 20


@contextmanager
def _omp_threads(n: int):
    if n <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class IndexDataError(ValueError):
    """Bad arguments to an index call (wrong shape, negative ids, NaN, k < 1); names what is wrong."""


# ---------------------------------------------------------------------------------------------
# argument checks shared by both implementations


def _check_ids(ids, what: str = "ids") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise IndexDataError(f"{what} must be a 1-d array of chunk ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise IndexDataError(f"{what} must be integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise IndexDataError(f"{what} must be >= 0 (-1 marks an empty result slot), got {arr.min()}")
    return arr


def _check_vecs(vecs, dim: int, what: str = "vecs") -> np.ndarray:
    arr = np.asarray(vecs)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise IndexDataError(f"{what} must have shape (n, {dim}), got {np.asarray(vecs).shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise IndexDataError(f"{what} contain NaN or infinite values")
    return arr


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise IndexDataError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _last_occurrence(ids: np.ndarray, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop earlier duplicates within one ``add`` call: the last vector given for an id wins."""
    rev = ids[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    if len(first_in_rev) == len(ids):
        return ids, vecs
    keep = np.sort(len(ids) - 1 - first_in_rev)
    return ids[keep], vecs[keep]


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of ``scores`` (nq, m) over ``ids`` (m,), best first, padded with -inf / -1."""
    nq, m = scores.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if m == 0:
        return out_s, out_i
    kk = min(k, m)
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < m else np.tile(np.arange(m), (nq, 1))
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    out_s[:, :kk] = np.take_along_axis(scores, top, axis=1)
    out_i[:, :kk] = ids[top]
    return out_s, out_i


def _write_meta(directory: Path, meta: dict) -> None:
    (directory / META_FILE).write_text(json.dumps(meta, sort_keys=True))


def _read_meta(directory: Path, kind: str) -> dict:
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexCorrupt(f"{path}: missing (not a saved index directory)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexCorrupt(f"{path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise IndexCorrupt(
            f"{path}: index format {meta.get('format')!r}, this version reads {FORMAT_VERSION}; rebuild the index"
        )
    if meta.get("kind") != kind:
        raise IndexCorrupt(f"{path}: holds a {meta.get('kind')!r} index, not {kind!r}")
    return meta


# ---------------------------------------------------------------------------------------------


class NumpyIndex:
    """Brute-force baseline: one (n, d) matrix and a matrix-vector product per query."""

    kind = "numpy"

    def __init__(self, dim: int):
        self.dim = int(dim)
        self._ids = np.zeros(0, dtype=np.int64)
        self._vecs = np.zeros((0, self.dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids, vecs) -> None:
        ids = _check_ids(ids)
        vecs = _check_vecs(vecs, self.dim)
        if len(ids) != len(vecs):
            raise IndexDataError(f"add: {len(ids)} ids for {len(vecs)} vectors")
        ids, vecs = _last_occurrence(ids, vecs)
        keep = ~np.isin(self._ids, ids)
        self._ids = np.concatenate([self._ids[keep], ids])
        self._vecs = np.concatenate([self._vecs[keep], vecs])

    def remove(self, ids) -> int:
        ids = _check_ids(ids)
        gone = np.isin(self._ids, ids)
        self._ids, self._vecs = self._ids[~gone], self._vecs[~gone]
        return int(gone.sum())

    def search(self, vecs, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = _check_vecs(vecs, self.dim, "query vectors")
        k = _check_k(k)
        ids, mat = self._ids, self._vecs
        if allowed_ids is not None:
            mask = np.isin(ids, _check_ids(allowed_ids, "allowed_ids"))
            ids, mat = ids[mask], mat[mask]
        return _top_k(q @ mat.T, ids, k)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids (n,), vecs (n, d)), copies."""
        return self._ids.copy(), self._vecs.copy()

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / IDS_FILE, self._ids, allow_pickle=False)
        np.save(directory / VECS_FILE, self._vecs, allow_pickle=False)
        _write_meta(directory, {"format": FORMAT_VERSION, "kind": self.kind, "dim": self.dim, "n": len(self)})

    @classmethod
    def load(cls, directory: Path, settings: IndexSettings | None = None) -> "NumpyIndex":
        directory = Path(directory)
        meta = _read_meta(directory, cls.kind)
        index = cls(int(meta["dim"]))
        try:
            ids = np.load(directory / IDS_FILE, allow_pickle=False)
            vecs = np.load(directory / VECS_FILE, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexCorrupt(f"{directory}: index arrays unreadable ({e})") from None
        if ids.shape != (meta["n"],) or vecs.shape != (meta["n"], index.dim):
            raise IndexCorrupt(
                f"{directory}: expected {meta['n']} vectors of dim {index.dim}, found ids {ids.shape}, vecs {vecs.shape}"
            )
        index._ids, index._vecs = ids.astype(np.int64), vecs.astype(np.float32)
        return index


# ---------------------------------------------------------------------------------------------


class FaissIndex:
    """FAISS index keyed by chunk id: exact up to ``settings.exact_max`` vectors, HNSW above."""

    def __init__(self, dim: int, settings: IndexSettings | None = None):
        self.dim = int(dim)
        self.settings = settings or IndexSettings()
        self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._ids = np.zeros(0, dtype=np.int64)  # slot -> chunk id, -1 when dead
        self._slot: dict[int, int] = {}  # chunk id -> live slot
        self._live_bits: np.ndarray | None = None  # packed live-slot bitmap, built when needed

    # ---- introspection ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self._index, faiss.IndexHNSW) else "flat"

    @property
    def dead(self) -> int:
        """Slots holding removed or replaced vectors, awaiting a rebuild (HNSW only)."""
        return len(self._ids) - len(self._slot)

    def __len__(self) -> int:
        return len(self._slot)

    def nbytes(self) -> int:
        """Bytes of the index's payload: vectors, graph links (4 bytes each), slot ids."""
        n = len(self._ids)
        links = 0
        if self.kind == "hnsw":
            links = 4 * faiss.vector_to_array(self._index.hnsw.offsets)[-1]
        return n * (4 * self.dim + 8) + int(links)

    # ---- writes -------------------------------------------------------------------------
    def add(self, ids, vecs) -> None:
        """Add vectors under ``ids`` (n,), replacing the vectors of ids already present."""
        ids = _check_ids(ids)
        vecs = _check_vecs(vecs, self.dim)
        if len(ids) != len(vecs):
            raise IndexDataError(f"add: {len(ids)} ids for {len(vecs)} vectors")
        if not len(ids):
            return
        ids, vecs = _last_occurrence(ids, vecs)
        self._kill(ids)
        if self.kind == "flat" and len(self) + len(ids) > self.settings.exact_max:
            if len(self):
                live_ids, live_vecs = self.vectors()
                ids, vecs = np.concatenate([live_ids, ids]), np.concatenate([live_vecs, vecs])
            self._reset(self._new_hnsw())
        self._append(ids, vecs)
        self._compact_if_needed()

    def remove(self, ids) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were present."""
        removed = self._kill(_check_ids(ids))
        if removed:
            self._compact_if_needed()
        return removed

    def rebuild(self) -> None:
        """Rebuild from the live vectors, picking flat or HNSW for the current size."""
        ids, vecs = self.vectors()
        self._reset(self._new_hnsw() if len(ids) > self.settings.exact_max else faiss.IndexFlatIP(self.dim))
        self._append(ids, vecs)

    # ---- reads --------------------------------------------------------------------------
    def search(self, vecs, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: (scores (nq, k) float32, ids (nq, k) int64), -1/-inf padded."""
        q = _check_vecs(vecs, self.dim, "query vectors")
        k = _check_k(k)
        threads = self.settings.search_threads if len(q) < SMALL_BATCH else 0
        if allowed_ids is not None:
            allowed = np.unique(_check_ids(allowed_ids, "allowed_ids"))
            slots = np.fromiter((self._slot.get(i, -1) for i in allowed.tolist()), np.int64, len(allowed))
            slots = slots[slots >= 0]
            if len(slots) <= self.settings.exact_max or self.kind == "flat":
                # Gather the allowed vectors and score them all: exact, cost ~ len(slots).
                with _omp_threads(threads):
                    sub = self._index.reconstruct_batch(slots) if len(slots) else np.zeros((0, self.dim), np.float32)
                return _top_k(q @ sub.T, self._ids[slots], k)
            fraction = len(slots) / max(1, len(self))
            sel = faiss.IDSelectorBatch(slots)  # copies the slots into its own hash set
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self._ef(fraction))
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self._ef(len(self) / max(1, len(self._ids))))
            if self.dead:
                params.sel = faiss.IDSelectorBitmap(self._live_bitmap())
        else:
            params = None
        with _omp_threads(threads):
            scores, slots = self._index.search(q, k, params=params)
        found = np.full(slots.shape, -1, dtype=np.int64)
        hit = slots >= 0
        found[hit] = self._ids[slots[hit]]
        scores[found < 0] = -np.inf
        return scores, found

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The live (ids (n,), vecs (n, d)), copies, in slot order."""
        live = np.flatnonzero(self._ids >= 0)
        if not len(live):
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        vecs = self._index.reconstruct_n(0, len(self._ids))
        return self._ids[live].copy(), vecs[live]

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(directory / FAISS_FILE))
        np.save(directory / IDS_FILE, self._ids, allow_pickle=False)
        _write_meta(directory, {
            "format": FORMAT_VERSION, "kind": "faiss", "repr": self.kind, "dim": self.dim,
            "slots": len(self._ids), "n": len(self), "faiss": faiss.__version__,
            "bytes": (directory / FAISS_FILE).stat().st_size,
        })

    @classmethod
    def load(cls, directory: Path, settings: IndexSettings | None = None) -> "FaissIndex":
        directory = Path(directory)
        meta = _read_meta(directory, "faiss")
        index = cls(int(meta["dim"]), settings)
        path = directory / FAISS_FILE
        # A truncated file is caught here rather than by FAISS, whose reader may try to allocate
        # whatever a torn header says.
        size = path.stat().st_size if path.exists() else None
        if size != meta.get("bytes"):
            raise IndexCorrupt(f"{path}: {size} bytes on disk, {meta.get('bytes')} written; the index is torn")
        try:
            raw = faiss.read_index(str(path))
            ids = np.load(directory / IDS_FILE, allow_pickle=False)
        except (RuntimeError, MemoryError, OSError, ValueError) as e:
            # FAISS's message is a C++ trace; the first line says what failed.
            raise IndexCorrupt(f"{directory}: unreadable index ({str(e).splitlines()[0][:200]})") from None
        expected = faiss.IndexHNSW if meta.get("repr") == "hnsw" else faiss.IndexFlat
        live = ids[ids >= 0] if ids.ndim == 1 else ids
        if (
            not isinstance(raw, expected) or raw.d != index.dim or raw.ntotal != meta.get("slots")
            or ids.shape != (raw.ntotal,) or len(live) != meta.get("n") or len(np.unique(live)) != len(live)
        ):
            raise IndexCorrupt(
                f"{directory}: expected a {meta.get('repr')} index of {meta.get('slots')} slots "
                f"({meta.get('n')} live, unique), dim {index.dim}; found {type(raw).__name__} of "
                f"{raw.ntotal} slots, dim {raw.d}, ids {ids.shape}"
            )
        index._index, index._ids = raw, ids.astype(np.int64)
        index._slot = {int(i): s for s, i in enumerate(index._ids.tolist()) if i >= 0}
        return index

    # ---- internals ----------------------------------------------------------------------
    def _new_hnsw(self) -> faiss.Index:
        index = faiss.IndexHNSWFlat(self.dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.settings.hnsw_ef_construction
        return index

    def _reset(self, index: faiss.Index) -> None:
        self._index = index
        self._ids = np.zeros(0, dtype=np.int64)
        self._slot = {}
        self._live_bits = None

    def _append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        start = len(self._ids)
        self._index.add(vecs)
        self._ids = np.concatenate([self._ids, ids])
        self._slot.update(zip(ids.tolist(), range(start, start + len(ids))))
        self._live_bits = None

    def _kill(self, ids: np.ndarray) -> int:
        """Mark the live slots of ``ids`` dead; returns how many there were."""
        slots = [s for s in map(self._slot.pop, ids.tolist(), [None] * len(ids)) if s is not None]
        if slots:
            self._ids[slots] = -1
            self._live_bits = None
        return len(slots)

    def _compact_if_needed(self) -> None:
        # Flat: compact at once (a copy of at most exact_max vectors). HNSW: once dead slots
        # are a large share, since searches then spend time walking through them.
        if self.dead and (self.kind == "flat" or self.dead > self.settings.rebuild_dead_fraction * len(self._ids)):
            self.rebuild()

    def _live_bitmap(self) -> np.ndarray:
        bits = self._live_bits
        if bits is None:
            bits = self._live_bits = np.packbits(self._ids >= 0, bitorder="little")
        return bits

    def _ef(self, fraction: float) -> int:
        # Dividing by the share of eligible slots keeps the number of eligible candidates
        # examined near efSearch; capped so a thin filter cannot turn a query into a full scan.
        return int(min(max(self.settings.hnsw_ef_search / max(fraction, 1e-9), 1), 16 * self.settings.hnsw_ef_search))
