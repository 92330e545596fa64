"""The collection's FAISS index as a derived cache of the catalog's embeddings.

The file is named for what it holds, ``vectors-<catalog id>-<generation>.faiss``, and
``vectors.json`` (the stamp, ``mbm.store.stamp``) names the file, its size and the catalog state it
was built from, with the index type, its search settings and the recall measured at build time.
An index saved at an older generation of the same catalog is brought up to date with the catalog's
change log instead of a rebuild (:meth:`VectorIndex.catch_up`, ``mbm.store.vector_index``); it is
rebuilt when it is missing, unreadable, from another catalog or due for a rebuild.

Only the holder of the collection's lock saves (see ``mbm.store.lock``); a save that fails (a full
disk raises RuntimeError in FAISS) is logged and never fails a search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mbm.store.ann import IndexSettings
from mbm.store.catalog import Catalog, read_snapshot
from mbm.store.lock import CollectionLock
from mbm.store.stamp import STAMP_FILE, describe, index_file_name, read_stamp, vectors_fresh
from mbm.store.vector_index import GPU_MAX_K, INDEX_GLOB, LEGACY_INDEX_FILE, VectorIndex, gpu_count

# VectorIndex and the stamp helpers live in mbm.store.vector_index and mbm.store.stamp; callers keep
# importing them from here (tunables such as FILTER_EXACT_MAX are read, and patched, in mbm.store.vector_index)
__all__ = [
    "GPU_MAX_K",
    "INDEX_GLOB",
    "LEGACY_INDEX_FILE",
    "STAMP_FILE",
    "VectorIndex",
    "build_from_catalog",
    "current_index",
    "describe",
    "ensure_saved",
    "gpu_count",
    "index_file_name",
    "open_vectors",
    "read_stamp",
    "save_cache",
    "vectors_fresh",
]

log = logging.getLogger(__name__)


def build_from_catalog(catalog: Catalog) -> VectorIndex:
    """Read every embedding in one snapshot and build the index stamped with that state."""
    with read_snapshot(catalog):
        meta = catalog.meta()
        dim = int(meta.get("dim", 0))
        state = catalog.state()
        # filled in place: the vectors are held once, not once in chunks and again joined (1M x 512: 2 GB less)
        ids, vecs, n = np.zeros(state.count, np.int64), np.zeros((state.count, dim), np.float32), 0
        for chunk_ids, chunk in catalog.read_embeddings():
            ids[n : n + len(chunk_ids)], vecs[n : n + len(chunk_ids)] = chunk_ids, chunk
            n += len(chunk_ids)
    index = VectorIndex.build(ids[:n], vecs[:n], state, dim, IndexSettings.from_meta(meta))
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
    log.info("built vector index %s (%d vectors) in %.2fs", index.kind, index.ntotal, time.perf_counter() - started)
    return index


def ensure_saved(catalog: Catalog, folder: Path) -> bool:
    """For the lock holder after an index run: make the saved index current; reads nothing when it is."""
    state = catalog.state()
    stamp = read_stamp(folder) or {}
    settings = IndexSettings.from_meta(catalog.meta())
    if vectors_fresh(folder, state) and (stamp.get("origin") or {}).get("settings", asdict(IndexSettings())) == asdict(
        settings
    ):
        return False
    index = current_index(catalog, folder)
    index.save(folder)
    if stamp.get("catalog_id") == state.catalog_id and not catalog.readonly:
        # indexes built at the previously saved generation or later can still catch up by the log
        catalog.prune_changes(int(stamp.get("generation", 0)))
    return True


def save_cache(index: VectorIndex, folder: Path, lock: CollectionLock) -> bool:
    """Save ``index`` if the saved one differs and this process holds (or can take at once) the lock."""
    if vectors_fresh(folder, index.state) and (read_stamp(folder) or {}).get("kind") == index.kind:
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
