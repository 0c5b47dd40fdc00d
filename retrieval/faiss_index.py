"""Dense vector indexes keyed by chunk id: FAISS (exact, then IVF past a size) and a NumPy baseline.

Both implement ``retrieval.types.VectorIndex``: inner product on L2-normalised float32 vectors
(= cosine), ids are our chunk ids (int64 >= 0), adding an id that exists replaces its vector, and
``search`` pads missing slots with id -1 and score -inf. ``search(..., allowed_ids=...)`` restricts
the results to a subset of ids (entity- or filter-restricted search).

Representation (``FaissIndex.kind``):

- ``"flat"`` up to ``IndexSettings.exact_max`` vectors: ``IndexIDMap(IndexFlatIP)``, exact.
- ``"ivf"`` above: ``IndexIVFFlat`` (inner product) with ``nlist`` about 4*sqrt(n), trained on the
  vectors present when the switch happens. IVF stores our ids itself and supports ``remove_ids``
  natively, so deletes and replacements are exact and immediate. HNSW was measured against it
  (``bench/index_scale.py --compare-hnsw``): similar latency and recall on clustered data, but
  slower to build, 256 more bytes per vector for the graph, and no ``remove_ids``; it would need
  a deletion mask plus periodic rebuilds to stay consistent with the database.

The index switches to IVF automatically when an ``add`` crosses ``exact_max``, and retrains (a
rebuild) when it has grown ``ivf_retrain_growth`` times past the size it was trained on, so the
coarse centroids keep matching the data. ``rebuild()`` picks the representation afresh for the
current size: this is where an index that shrank goes back to exact.

Filtered search stays exact on small subsets: with ``allowed_ids`` of at most ``exact_max`` ids
the IVF probes every list (only the allowed ids get a distance computed); with larger subsets it
probes ``nprobe / fraction`` lists, so the expected number of candidates matches an unfiltered
search.

Concurrency: any number of threads may ``search`` at once (FAISS searches are read-only and
release the GIL). ``add``/``remove``/``rebuild`` must not overlap other calls; serving processes
never mutate, they swap in a freshly published snapshot (``retrieval.snapshot``).
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from bot.errors import IndexCorrupt
from bot.settings import IndexSettings

FORMAT_VERSION = 1
META_FILE = "dense.json"
FAISS_FILE = "dense.faiss"
IDS_FILE = "ids.npy"
VECS_FILE = "vecs.npy"


# Searches of fewer queries than this run on ``IndexSettings.search_threads`` OpenMP threads. With
# 2 OpenMP threads a batch-1 exact search over 20k vectors took 40 ms on 2 busy cores, against
# 2.4 ms on one: the threads wait on each other. FAISS's thread count is per calling thread
# (libgomp), so setting it here does not touch other threads' batch work.
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
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(q), k), -1, dtype=np.int64)
        if len(ids) == 0:
            return out_s, out_i
        scores = q @ mat.T  # (nq, n)
        m = min(k, len(ids))
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < len(ids) else np.argsort(-scores, axis=1)
        top_s = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out_s[:, :m] = np.take_along_axis(scores, top, axis=1)
        out_i[:, :m] = ids[top]
        return out_s, out_i

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
    """FAISS index keyed by chunk id: exact up to ``settings.exact_max`` vectors, IVF-Flat above."""

    def __init__(self, dim: int, settings: IndexSettings | None = None):
        self.dim = int(dim)
        self.settings = settings or IndexSettings()
        self._index: faiss.Index = self._new_flat()
        self._trained_n = 0  # vectors present when the IVF was trained (0 while flat)

    # ---- introspection ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def nlist(self) -> int:
        return self._index.nlist if self.kind == "ivf" else 0

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def nbytes(self) -> int:
        """Bytes of the index's payload in memory: vectors and ids (8 bytes each), plus centroids."""
        per_vector = 4 * self.dim + 8
        centroids = 4 * self.dim * self.nlist
        return len(self) * per_vector + centroids

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
        if len(self):
            self._remove(ids)
        if self.kind == "flat" and len(self) + len(ids) > self.settings.exact_max:
            if len(self):
                old_ids, old_vecs = self.vectors()
                ids, vecs = np.concatenate([old_ids, ids]), np.concatenate([old_vecs, vecs])
            self._index = self._new_ivf(ids, vecs)
            return
        self._index.add_with_ids(vecs, ids)
        if self.kind == "ivf" and len(self) > self.settings.ivf_retrain_growth * self._trained_n:
            self.rebuild()

    def remove(self, ids) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were present."""
        ids = _check_ids(ids)
        if not len(ids) or not len(self):
            return 0
        return self._remove(ids)

    def rebuild(self) -> None:
        """Rebuild from the vectors present, picking flat or IVF (retrained) for the current size."""
        ids, vecs = self.vectors()
        if len(ids) > self.settings.exact_max:
            self._index = self._new_ivf(ids, vecs)
        else:
            self._index = self._new_flat()
            self._trained_n = 0
            if len(ids):
                self._index.add_with_ids(vecs, ids)

    # ---- reads --------------------------------------------------------------------------
    def search(self, vecs, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: (scores (nq, k) float32, ids (nq, k) int64), -1/-inf padded."""
        q = _check_vecs(vecs, self.dim, "query vectors")
        k = _check_k(k)
        params = None
        if allowed_ids is not None:
            allowed = np.unique(_check_ids(allowed_ids, "allowed_ids"))
            if not len(allowed):
                return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
            params = self._filter_params(allowed)
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self._nprobe())
        with _omp_threads(self.settings.search_threads if len(q) < SMALL_BATCH else 0):
            scores, ids = self._index.search(q, k, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids (n,), vecs (n, d)), copies, in storage order."""
        n, d = len(self), self.dim
        if n == 0:
            return np.zeros(0, np.int64), np.zeros((0, d), np.float32)
        if self.kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            return ids, self._index.index.reconstruct_n(0, n)
        invlists = self._index.invlists
        id_parts, vec_parts = [], []
        for lst in range(self._index.nlist):
            size = invlists.list_size(lst)
            if not size:
                continue
            id_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size)
            vec_parts.append(np.frombuffer(codes, dtype=np.float32).reshape(size, d).copy())
        return np.concatenate(id_parts).astype(np.int64), np.concatenate(vec_parts)

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(directory / FAISS_FILE))
        _write_meta(directory, {
            "format": FORMAT_VERSION, "kind": "faiss", "repr": self.kind, "dim": self.dim,
            "n": len(self), "trained_n": self._trained_n, "faiss": faiss.__version__,
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
        except (RuntimeError, MemoryError) as e:
            # FAISS's message is a C++ trace; the first line says what failed.
            raise IndexCorrupt(f"{path}: unreadable FAISS index ({str(e).splitlines()[0][:200]})") from None
        expected = faiss.IndexIVF if meta.get("repr") == "ivf" else faiss.IndexIDMap
        if not isinstance(raw, expected) or raw.d != index.dim or raw.ntotal != meta["n"]:
            raise IndexCorrupt(
                f"{path}: expected a {meta.get('repr')} index of {meta['n']} vectors, dim {index.dim}; "
                f"found {type(raw).__name__} of {raw.ntotal}, dim {raw.d}"
            )
        index._index = raw
        index._trained_n = int(meta.get("trained_n", 0))
        return index

    # ---- internals ----------------------------------------------------------------------
    def _new_flat(self) -> faiss.Index:
        return faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))

    def _new_ivf(self, ids: np.ndarray, vecs: np.ndarray) -> faiss.Index:
        n = len(ids)
        nlist = self._nlist_for(n)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = 1234  # reproducible centroids
        sample = vecs
        if n > self.settings.ivf_train_max:
            pick = np.random.default_rng(1234).choice(n, self.settings.ivf_train_max, replace=False)
            sample = vecs[np.sort(pick)]
        ivf.train(sample)
        ivf.add_with_ids(vecs, ids)
        # The IVF keeps a Python reference to its quantizer; transfer ownership to the C++ side.
        ivf.own_fields = True
        quantizer.this.disown()
        self._trained_n = n
        return ivf

    def _nlist_for(self, n: int) -> int:
        if self.settings.ivf_nlist:
            nlist = self.settings.ivf_nlist
        else:
            nlist = int(4 * math.sqrt(n))
        # k-means wants >= 39 training points per centroid; keep lists non-trivial on small sets.
        train = min(n, self.settings.ivf_train_max)
        return max(1, min(nlist, train // 39))

    def _nprobe(self) -> int:
        return max(1, min(self.settings.ivf_nprobe, self._index.nlist))

    def _filter_params(self, allowed: np.ndarray) -> faiss.SearchParameters:
        # IDSelectorBatch keeps a copy of the ids (hash set + Bloom filter), so ``allowed`` may go.
        sel = faiss.IDSelectorBatch(allowed)
        if self.kind == "flat":
            return faiss.SearchParameters(sel=sel)
        nlist = self._index.nlist
        if len(allowed) <= self.settings.exact_max:
            nprobe = nlist  # every list: exact over the subset, distances only for allowed ids
        else:
            fraction = min(1.0, len(allowed) / max(1, len(self)))
            nprobe = min(nlist, math.ceil(self._nprobe() / fraction))
        return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)

    def _remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
