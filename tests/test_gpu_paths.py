"""FAISS on the GPU (faiss-gpu, `pip install 'mbm[gpu]'`): build and search there, same answers as the
CPU; k above the GPU's 2048 and filtered searches fall back to the CPU. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from mbm.store.ann import IndexSettings
from mbm.store.catalog import CatalogState
from mbm.store.vectors import GPU_MAX_K, VectorIndex, gpu_count

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_count() == 0, reason="no GPU for FAISS (faiss-cpu, or no CUDA device)"),
]


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    x = centers[rng.integers(0, 50, n)] + 0.4 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "IVF64,PQ16"])
def test_gpu_search_matches_the_cpu_and_large_k_falls_back(factory):
    x = clustered(20_000)
    ids = np.arange(10, 20_010, dtype=np.int64)  # catalog ids are not row numbers
    index = VectorIndex.build(ids, x, CatalogState("gpu", 1, len(ids)), 64, IndexSettings(factory))
    queries = clustered(100, seed=1)
    scores, found = index.search(queries, 10)
    assert index._search_index is not index.index  # really searched on a GPU copy
    cpu = VectorIndex(index.index, index.state, index.kind, index.tuning, index.rows, index.origin)
    cpu._search_index = cpu.index  # the same index, kept on the CPU
    cpu_scores, cpu_found = cpu.search(queries, 10)
    assert np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, cpu_found)]) >= 0.98
    np.testing.assert_allclose(scores[:, 0], cpu_scores[:, 0], atol=1e-3)
    big_s, big = index.search(queries[:3], GPU_MAX_K + 500)  # more than a GPU index returns: the CPU answers
    assert big.shape == (3, GPU_MAX_K + 500) and (big >= 0).all() and (np.diff(big_s, axis=1) <= 1e-6).all()
    allowed = ids[::7]
    _, filtered = index.search(queries, 10, allowed)  # selectors run on the CPU
    assert np.isin(filtered, allowed).all()


def test_ivf_trains_on_the_gpu_and_reaches_the_recall_target():
    x = clustered(30_000)
    index = VectorIndex.build(np.arange(len(x)), x, CatalogState("gpu", 1, len(x)), 64, IndexSettings("IVF256,PQ16"))
    assert index.origin.trained and index.tuning.recall >= 0.95
