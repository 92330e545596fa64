"""The FAISS index: a derived cache of the catalog's embeddings.

The file is named for what it holds, ``vectors-<catalog id>-<generation>.faiss``, and
``vectors.json`` (the stamp) names the file, its size and the catalog state it was
built from. A stamp can therefore never describe another file: a replaced catalog
has another id, and an interleaved save of an older generation writes another name.
An index built at an older generation of the same catalog is brought up to date with
the catalog's change log (``remove_ids`` + ``add_with_ids``) instead of a rebuild.
Only the holder of the collection's lock saves (see ``mbm.store.lock``); a save that
fails (a full disk raises RuntimeError in FAISS) is logged and never fails a search.

Process-wide setting: importing this module sets FAISS's ``distance_compute_blas_threshold``
to 20 (batched queries through BLAS are ~10x faster than FAISS's default above 20 queries).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mbm.atomic import write_text, write_with
from mbm.store.catalog import Catalog, CatalogState, read_snapshot
from mbm.store.lock import CollectionLock

log = logging.getLogger(__name__)

faiss.cvar.distance_compute_blas_threshold = 20

SMALL_BATCH = 8  # up to this many queries at once take the matrix-vector path on a flat CPU index
STAMP_FILE = "vectors.json"
INDEX_GLOB = "vectors-*.faiss"
LEGACY_INDEX_FILE = "vectors.faiss"  # before index files were named for their catalog state


def index_file_name(state: CatalogState) -> str:
    return f"vectors-{state.catalog_id}-{state.generation}.faiss"


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@dataclass
class VectorIndex:
    """Inner-product search over L2-normalized vectors, keyed by catalog item id."""

    index: Any  # faiss.IndexIDMap2 on the CPU (what is saved)
    state: CatalogState
    kind: str = "Flat"
    _search_index: Any = None  # the GPU copy when a GPU is present
    _ids: np.ndarray | None = None  # the id map as an array, for the few-queries path

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, state: CatalogState, dim: int) -> VectorIndex:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
        return cls(index, state)

    @property
    def generation(self) -> int:
        return self.state.generation

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def _searcher(self) -> Any:
        if self._search_index is None:
            self._search_index = self.index
            if gpu_count() > 0:
                try:
                    self._search_index = faiss.index_cpu_to_all_gpus(self.index)
                except Exception as e:  # noqa: BLE001 - fall back to the CPU index, say why
                    log.warning("FAISS GPU index unavailable (%s); searching on the CPU", e)
        return self._search_index

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)`` for each query row; ids are -1 where fewer than k exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if self.ntotal == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        if allowed is None:
            if len(queries) <= SMALL_BATCH and gpu_count() == 0:
                return self._flat_topk(queries, k)
            return self._searcher().search(queries, k)
        # Filtered search: selectors are CPU-only in FAISS, and the flat scan is cheap.
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64)))
        return self.index.search(queries, k, params=params)

    def _flat_topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A few queries on the flat index: one BLAS matrix-vector product over FAISS's own storage
        (no copy) and a partial sort. FAISS's path for a single query is 1.5-2x slower here, and
        making it faster means changing its process-wide OpenMP thread count."""
        flat = faiss.downcast_index(self.index.index)
        if not isinstance(flat, faiss.IndexFlat):
            return self._searcher().search(queries, k)
        n = flat.ntotal
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * flat.d).reshape(n, flat.d)
        if self._ids is None or len(self._ids) != n:
            self._ids = faiss.vector_to_array(self.index.id_map)
        scores = queries @ xb.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(queries), 1))
        part = np.take_along_axis(scores, top, 1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(part, order, 1).astype(np.float32), self._ids[np.take_along_axis(top, order, 1)]

    def catch_up(self, catalog: Catalog) -> bool:
        """Apply the catalog's changes since this index's generation; False when a rebuild is needed."""
        with read_snapshot(catalog):
            state = catalog.state()
            if state == self.state:
                return True
            if state.catalog_id != self.state.catalog_id or state.generation < self.state.generation:
                return False
            changed = catalog.changed_since(self.state.generation)
            if changed is None:
                return False
            ids, vecs = catalog.embeddings_of(changed)
        if len(changed):
            self.index.remove_ids(np.ascontiguousarray(changed, np.int64))
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)
        self._search_index, self._ids = None, None
        self.state = state
        return self.ntotal == state.count

    def save(self, folder: Path) -> None:
        """Write the file named for this index's state, then the stamp; drop older index files."""
        name = index_file_name(self.state)
        write_with(folder / name, lambda tmp: faiss.write_index(self.index, tmp))
        stamp = {
            **self.state._asdict(),
            "file": name,
            "kind": self.kind,
            "bytes": (folder / name).stat().st_size,
            "saved_at": time.time(),
        }
        write_text(folder / STAMP_FILE, json.dumps(stamp))
        for old in [*folder.glob(INDEX_GLOB), folder / LEGACY_INDEX_FILE]:
            if old.name != name:
                with contextlib.suppress(OSError):
                    old.unlink()

    @classmethod
    def load(cls, folder: Path, catalog_id: str) -> VectorIndex | None:
        """The saved index when it was built from this catalog (at any generation), else None."""
        stamp = read_stamp(folder)
        for _ in range(3):  # a concurrent save may replace the named file between the stamp and the file
            if stamp is None or stamp.get("catalog_id") != catalog_id:
                return None
            index = cls._read(folder, stamp)
            if index is not None:
                return index
            again = read_stamp(folder)
            if again == stamp:
                return None
            stamp = again
        return None

    @classmethod
    def _read(cls, folder: Path, stamp: dict[str, Any]) -> VectorIndex | None:
        try:
            state = CatalogState(stamp["catalog_id"], int(stamp["generation"]), int(stamp["count"]))
            path = folder / index_file_name(state)
            if stamp.get("file") != path.name or path.stat().st_size != stamp["bytes"]:
                return None
            index = faiss.read_index(str(path))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            log.info("vector index in %s unusable (%s); rebuilding", folder, e)
            return None
        if index.ntotal != state.count:
            return None
        return cls(index, state, stamp.get("kind", "Flat"))


def read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def vectors_fresh(folder: Path, state: CatalogState) -> bool:
    """Whether the saved index matches the catalog state, judged from the stamp and file size alone."""
    stamp = read_stamp(folder)
    if stamp is None:
        return False
    try:
        return (stamp.get("catalog_id"), stamp.get("generation"), stamp.get("count")) == tuple(state) and (
            folder / index_file_name(state)
        ).stat().st_size == stamp.get("bytes")
    except OSError:
        return False


def build_from_catalog(catalog: Catalog) -> VectorIndex:
    """Read every embedding in one snapshot and build the index stamped with that state."""
    with read_snapshot(catalog):
        dim = int(catalog.meta().get("dim", 0))
        state = catalog.state()
        parts = list(catalog.read_embeddings())
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    index = VectorIndex.build(ids, vecs, state, dim)
    if index.ntotal != state.count:  # rows with damaged embeddings are left out (`mbm check` reports them)
        index.state = state._replace(count=index.ntotal)
    return index


def current_index(catalog: Catalog, folder: Path, index: VectorIndex | None = None) -> VectorIndex:
    """``index`` (else the saved one) brought up to the catalog's state by its change log, else a rebuild."""
    if index is None or index.state.catalog_id != catalog.catalog_id:
        index = VectorIndex.load(folder, catalog.catalog_id)
    if index is not None and index.catch_up(catalog):
        return index
    started = time.perf_counter()
    index = build_from_catalog(catalog)
    log.info("rebuilt vector index (%d vectors) in %.2fs", index.ntotal, time.perf_counter() - started)
    return index


def ensure_saved(catalog: Catalog, folder: Path) -> bool:
    """For the lock holder after an index run: make the saved index current; reads nothing when it is."""
    state = catalog.state()
    if vectors_fresh(folder, state):
        return False
    previous = read_stamp(folder) or {}
    index = current_index(catalog, folder)
    index.save(folder)
    if previous.get("catalog_id") == state.catalog_id and not catalog.readonly:
        # indexes built at the previously saved generation or later can still catch up by the log
        catalog.prune_changes(int(previous.get("generation", 0)))
    return True


def save_cache(index: VectorIndex, folder: Path, lock: CollectionLock) -> bool:
    """Save ``index`` if the saved one differs and this process holds (or can take at once) the lock."""
    if vectors_fresh(folder, index.state):
        return False
    with lock.attempt() as holder:
        if not holder:
            return False
        stamp = read_stamp(folder) or {}
        if stamp.get("catalog_id") == index.state.catalog_id and int(stamp.get("generation", -1)) > index.generation:
            return False  # a newer state is saved already
        try:
            index.save(folder)
        except (OSError, RuntimeError) as e:  # a full disk or read-only store: searching goes on from memory
            log.warning("could not save the vector index in %s (%s); it will be rebuilt next time", folder, e)
            return False
        return True


def open_vectors(
    catalog: Catalog, folder: Path, lock: CollectionLock | None = None, index: VectorIndex | None = None
) -> VectorIndex:
    """The collection's index, current with the catalog; saved when stale on disk and ``lock`` allows."""
    index = current_index(catalog, folder, index)
    if lock is not None:
        save_cache(index, folder, lock)
    return index
