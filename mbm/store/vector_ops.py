"""Array operations behind :class:`mbm.store.vector_index.VectorIndex`: exact re-scoring of a shortlist,
exact search among allowed ids, the few-queries flat path, the ids an index holds, tombstones."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from mbm.store import ann
from mbm.store.rows import RowFile

Result = tuple[np.ndarray, np.ndarray]  # (scores float32, ids int64), one row per query


def rescore(rows: RowFile, queries: np.ndarray, cand: np.ndarray, k: int) -> Result:
    """Exact scores of each query's shortlist ``cand`` (ids, -1 padded) from the float16 rows; the best ``k``."""
    valid = cand >= 0
    uniq, inverse = np.unique(np.where(valid, cand, cand[valid][0] if valid.any() else 0), return_inverse=True)
    vecs = rows.get(uniq)
    inverse = inverse.reshape(cand.shape)
    scores = np.empty(cand.shape, np.float32)
    for s in range(0, len(queries), 64):  # bounded memory for large batches: 64 x shortlist x dim floats
        scores[s : s + 64] = np.einsum("qd,qfd->qf", queries[s : s + 64], vecs[inverse[s : s + 64]])
    scores[~valid] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_s, top_i = np.take_along_axis(scores, order, 1), np.take_along_axis(cand, order, 1)
    top_i[~np.isfinite(top_s)] = -1
    return top_s, top_i


def exact_among(rows: RowFile, queries: np.ndarray, k: int, allowed: np.ndarray) -> Result:
    """Exact top-``k`` among the ``allowed`` ids (sorted, all held), read from the rows chunk by chunk."""

    class Gather:
        def __len__(self) -> int:
            return len(allowed)

        def __getitem__(self, part: slice) -> np.ndarray:
            return rows.get(allowed[part])

    return ann.exact_topk(queries, Gather(), allowed, k)  # type: ignore[arg-type]


def flat_topk(index: Any, id_map: np.ndarray | None, queries: np.ndarray, k: int) -> tuple[Result, np.ndarray] | None:
    """A few queries on an IndexIDMap2 over IndexFlat: one BLAS matrix-vector product over FAISS's own
    storage (no copy) and a partial sort, with the id map as an array (returned to be cached); None
    for other indexes. FAISS's path for a single query is 1.5-2x slower here, and making it faster
    means changing its process-wide OpenMP thread count."""
    flat = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else None
    if not isinstance(flat, faiss.IndexFlat):
        return None
    n = flat.ntotal
    xb = faiss.rev_swig_ptr(flat.get_xb(), n * flat.d).reshape(n, flat.d)
    if id_map is None or len(id_map) != n:
        id_map = faiss.vector_to_array(index.id_map)
    scores = queries @ xb.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(queries), 1))
    part = np.take_along_axis(scores, top, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    found = np.take_along_axis(part, order, 1).astype(np.float32), id_map[np.take_along_axis(top, order, 1)]
    return found, id_map


def held_ids(index: Any) -> np.ndarray:
    """Every item id ``index`` holds (an IndexIDMap2's map without tombstones, or an IVF's lists), sorted."""
    if isinstance(index, faiss.IndexIDMap):
        ids = faiss.vector_to_array(index.id_map)
    else:
        lists = ann.ivf_of(index).invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist)]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.sort(ids[ids >= 0])


def remove(index: Any, changed: np.ndarray) -> int:
    """Take ``changed`` ids out of ``index``: ``remove_ids`` where it can, else tombstones (the slot keeps
    its vector, its id becomes -1, and searches skip -1 with a selector); the tombstones added."""
    if ann.removes_in_place(index):
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(changed, np.int64)))
        return 0
    id_map = faiss.vector_to_array(index.id_map)
    gone = np.isin(id_map, changed)
    if gone.any():
        id_map[gone] = -1
        faiss.copy_array_to_vector(id_map, index.id_map)
        index.construct_rev_map()
    return int(gone.sum())
