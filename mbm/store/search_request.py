"""What every vector backend's ``search`` does first (FAISS here, Milvus in ``mbm.scale.milvus``):
check the overrides, shape the queries and bound k; and the answer with no hits."""

from __future__ import annotations

import numpy as np

from mbm.errors import UsageError


def search_request(
    queries: np.ndarray, k: int, ntotal: int, *, nprobe: int | None, ef: int | None, max_k: int | None = None
) -> tuple[np.ndarray, int]:
    """``queries`` as a C-contiguous float32 matrix and ``k`` bounded to 1..``ntotal`` (and ``max_k``);
    UsageError naming the option when ``nprobe`` or ``ef`` is below 1."""
    for name, value in (("--nprobe", nprobe), ("--ef", ef)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, not {value}")
    queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    most = ntotal if max_k is None else min(ntotal, max_k)
    return queries, (max(1, min(k, most)) if ntotal else 1)


def no_hits(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of ``nq`` queries that found nothing: scores -inf, ids -1."""
    return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
