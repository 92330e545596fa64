"""Which FAISS index a collection gets, how it is searched, and how well: the choices behind
:class:`mbm.store.vector_index.VectorIndex`.

- :func:`choose_index`: exact (``Flat``) while one query is cheap, then ``HNSW32`` while it fits the
  memory budget, then ``IVF<nlist>,PQ<m>`` (codes of ``m`` bytes, the shortlist re-scored exactly from
  the float16 row file), the autofaiss rules cut down to the three that matter for one machine.
  ``--index-type`` forces any FAISS factory string.
- :func:`tune`: every ANN index is measured against exact search, a sample of the collection's own
  vectors (held out of the index while measured) as queries; ``nprobe`` / ``efSearch`` / the re-scored shortlist grow until recall@10 reaches
  :data:`TARGET_RECALL` (or their caps).
- :func:`search_params`: per-call ``faiss.SearchParameters`` (thread-safe: nothing is set on the index).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from mbm.errors import UsageError

log = logging.getLogger(__name__)

EXACT_MAX_WORK = 25_000_000  # vectors x dims below which exact search stays (~5 ms a query here)
HNSW_M = 32
TARGET_RECALL = 0.95
TUNE_MARGIN = 0.01  # tuned to 0.96 measured: two standard errors of a 500-query sample above the target
RECALL_K = 10
SAMPLE_QUERIES = 500
BATCHED_EXACT = 20  # queries from which exact_topk searches with FAISS (below, numpy): FAISS's BLAS threshold
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
RESCORE_STEPS = (10, 30, 100)  # shortlist = factor x k candidates re-scored exactly
GROWTH_RETRAIN = 4.0  # retrain a trained index once the collection is this many times its training size
DRIFT_RETRAIN = 0.05  # ... or when new vectors sit this much further (cosine) from their centroids
TOMBSTONE_MAX = 0.2  # rebuild an index that cannot remove (HNSW) when this fraction is dead
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str | int | None) -> int | None:
    """``"2GB"``, ``"512M"``, ``"1.5 GiB"`` or a byte count -> bytes (binary units); None stays None."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"--max-memory {text!r} is not a size — write it like 2GB, 512MB or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def default_budget() -> int:
    """Half of this machine's memory: what an index may take when ``--max-memory`` is not given."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


@dataclass(frozen=True)
class IndexSettings:
    """What the user asked for (catalog meta ``index_type`` / ``max_memory``): the choice is remade from it."""

    index_type: str = "auto"
    max_memory: int | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> IndexSettings:
        mem = meta.get("max_memory") or ""
        return cls(meta.get("index_type") or "auto", int(mem) if mem.isdigit() else None)

    @property
    def budget(self) -> int:
        return self.max_memory or default_budget()


def settings_meta(index_type: str | None, max_memory: str | int | None, dim: int) -> dict[str, str]:
    """Catalog meta for ``--index-type`` / ``--max-memory``, checked (``"auto"`` resets either); {} for neither."""
    out = {}
    if index_type is not None:
        out["index_type"] = check_factory(index_type, dim) if dim else index_type
    if max_memory is not None:
        auto = str(max_memory).strip().lower() == "auto"
        out["max_memory"] = "" if auto else str(parse_memory(max_memory))
    return out


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # a FAISS factory string ("Flat", "HNSW32", "IVF1024,PQ64")
    reason: str
    estimated_bytes: int

    @property
    def family(self) -> str:
        return family(self.factory)


def family(factory: str) -> str:
    if "IVF" in factory:
        return "IVF"
    if "HNSW" in factory:
        return "HNSW"
    return "Flat" if factory == "Flat" else "other"


def faiss_reason(e: RuntimeError) -> str:
    """The line of a FAISS error that says what went wrong (its C++ trace is no use to a user)."""
    return str(e).strip().splitlines()[-1][:160]


def check_factory(factory: str, dim: int) -> str:
    """A forced ``--index-type`` that FAISS can build for ``dim`` dimensions; UsageError naming it otherwise."""
    factory = factory.strip()
    if factory.lower() == "auto":
        return "auto"
    if "IDMap" in factory:
        raise UsageError(f"--index-type {factory!r}: leave out IDMap — mbm maps item ids itself")
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise UsageError(
            f"--index-type {factory!r} is not a FAISS factory string for {dim}-dimensional vectors "
            f"({faiss_reason(e)}) — "
            'try "Flat", "HNSW32", "IVF1024,PQ64" or "auto"'
        ) from None
    return factory


def estimate_bytes(factory: str, n: int, dim: int) -> int:
    """Resident memory of ``factory`` holding ``n`` vectors (the float16 row file is memory-mapped, not counted)."""
    ids = 8 * n
    if m := re.search(r"HNSW(\d+)", factory):
        links = n * (2 * int(m.group(1)) * 4 + 16)
        return _code_bytes(factory, dim) * n + links + ids + 32 * n  # + the id map's reverse table
    if m := re.search(r"IVF(\d+)", factory):
        nlist = int(m.group(1))
        opq = dim * dim * 4 if "OPQ" in factory else 0
        return _code_bytes(factory.split(",", 2)[-1], dim) * n + ids + nlist * dim * 4 + opq
    return _code_bytes(factory, dim) * n + ids + 32 * n


def _code_bytes(part: str, dim: int) -> int:
    if m := re.search(r"PQ(\d+)(?:x(\d+))?", part):
        return math.ceil(int(m.group(1)) * int(m.group(2) or 8) / 8)
    if "SQ8" in part:
        return dim
    if "SQfp16" in part or "SQbf16" in part:
        return 2 * dim
    if "SQ4" in part:
        return math.ceil(dim / 2)
    return 4 * dim


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest 2*sqrt(n), trainable from the data (>= 39 each)."""
    nlist = 2 ** round(math.log2(max(2.0 * math.sqrt(max(n, 1)), 1.0)))
    return int(max(1, min(nlist, 65536, n // 39 or 1)))


def choose_index(n: int, dim: int, settings: IndexSettings) -> IndexPlan:
    """The index for ``n`` vectors of ``dim`` dims: forced, exact while cheap, HNSW while it fits, else IVF-PQ."""
    budget = settings.budget
    if settings.index_type != "auto":
        factory = settings.index_type
        return IndexPlan(factory, "forced with --index-type", estimate_bytes(factory, n, dim))
    flat = estimate_bytes("Flat", n, dim)
    if n * dim <= EXACT_MAX_WORK and flat <= budget:
        return IndexPlan("Flat", f"exact: {n:,} vectors x {dim} dims are fast to scan", flat)
    hnsw = f"HNSW{HNSW_M}"
    if (need := estimate_bytes(hnsw, n, dim)) <= budget:
        return IndexPlan(hnsw, f"graph: {format_bytes(need)} fits the memory budget of {format_bytes(budget)}", need)
    nlist = ivf_lists(n)
    smallest = 0
    for m in sorted((m for m in range(1, dim // 4 + 1) if dim % m == 0 and m <= dim // 8), reverse=True):
        factory = f"IVF{nlist},PQ{m}"
        smallest = estimate_bytes(factory, n, dim)
        if smallest <= budget:
            why = f"compressed to {m} bytes a vector, re-scored exactly: HNSW would need {format_bytes(need)}"
            return IndexPlan(factory, why + f", more than the budget of {format_bytes(budget)}", smallest)
    raise UsageError(
        f"--max-memory {format_bytes(budget)} is too small for {n:,} vectors of {dim} dims (the smallest index, "
        f"IVF-PQ, needs {format_bytes(smallest)}) — raise --max-memory"
    )


def new_index(factory: str, dim: int) -> Any:
    """An empty index keyed by item ids: IVF indexes keep ids themselves; the others go inside an IndexIDMap2."""
    inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    return inner if ivf_of(inner) is not None else faiss.IndexIDMap2(inner)


def ivf_of(index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def innermost(index: Any) -> Any:
    """The storage index under id maps and pre-transforms (OPQ, PCA)."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        else:
            return index


def hnsw_of(index: Any) -> Any:
    inner = innermost(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def exact_scores(index: Any) -> bool:
    """Whether ``index`` returns exact inner products (full float32 vectors, no transform): no re-scoring needed."""
    top = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        return False
    inner = innermost(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexIVFFlat))


def removes_in_place(index: Any) -> bool:
    """IVF and flat-code indexes support ``remove_ids``; graphs (HNSW) need tombstones instead."""
    return ivf_of(index) is not None or isinstance(innermost(index), faiss.IndexFlatCodes)


def train(index: Any, vectors: np.ndarray, *, use_gpu: bool = False, seed: int = 0) -> int:
    """Train ``index`` on a sample of ``vectors`` (k-means on the GPU when one is there); the sample size."""
    if index.is_trained:
        return 0
    ivf = ivf_of(index)
    per_list = 64
    size = len(vectors) if ivf is None else min(len(vectors), max(per_list * ivf.nlist, 10_000))
    sample = vectors
    if size < len(vectors):
        sample = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))]
    storage = innermost(index)
    if hasattr(storage, "do_polysemous_training"):
        storage.do_polysemous_training = False  # only for Hamming pre-filtering, which mbm does not use: 100x slower
    if ivf is not None:
        ivf.cp.niter = 10  # 10 k-means rounds lose no recall here and halve training time
        if use_gpu:
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    index.train(np.ascontiguousarray(sample, np.float32))
    if ivf is not None and use_gpu:
        ivf.clustering_index = None
    return len(sample)


def centroid_fit(index: Any, vectors: np.ndarray) -> float | None:
    """Mean cosine of ``vectors`` to their nearest IVF centroid (None for other indexes): the drift gauge."""
    ivf = ivf_of(index)
    if ivf is None or len(vectors) == 0:
        return None
    x = np.ascontiguousarray(vectors, np.float32)
    pre: Any = faiss.downcast_index(index)
    if isinstance(pre, faiss.IndexPreTransform):  # OPQ / PCA first: the centroids live after them
        chain: Any = pre.chain
        for i in range(chain.size()):
            x = faiss.downcast_VectorTransform(chain.at(i)).apply(x)
    scores, _ = ivf.quantizer.search(x, 1)
    return float(np.mean(scores[:, 0]))


def search_params(index: Any, *, sel: Any = None, nprobe: int | None = None, ef: int | None = None) -> Any:
    """Per-call parameters for ``index`` (through OPQ/PCA pre-transforms), or None when there is nothing to set."""
    if sel is None and nprobe is None and ef is None:
        return None
    top = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    inner = innermost(index)
    lib: Any = faiss  # the stubs lack SearchParametersHNSW and the keyword constructors
    params: Any
    if isinstance(inner, faiss.IndexIVF):
        params = lib.SearchParametersIVF(nprobe=int(min(nprobe or inner.nprobe, inner.nlist)))
    elif isinstance(inner, faiss.IndexHNSW):
        params = lib.SearchParametersHNSW(efSearch=int(ef or inner.hnsw.efSearch))
    else:
        params = lib.SearchParameters()
    if isinstance(top, faiss.IndexPreTransform):
        params.sel = sel
        outer = lib.SearchParametersPreTransform(index_params=params)  # faiss keeps params alive
        outer.sel = sel
        return outer
    params.sel = sel
    return params


@dataclass
class Tuning:
    """How the index is searched by default, and the recall@10 that measured on the collection's own vectors."""

    nprobe: int | None = None
    ef: int | None = None
    rescore: int = 0  # shortlist factor re-scored exactly from the row file; 0: the index's scores are exact
    recall: float | None = None
    queries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Tuning:
        d = d or {}
        return cls(d.get("nprobe"), d.get("ef"), int(d.get("rescore", 0)), d.get("recall"), int(d.get("queries", 0)))

    def describe(self) -> str:
        parts = [f"nprobe={self.nprobe}" if self.nprobe else "", f"efSearch={self.ef}" if self.ef else ""]
        parts.append(f"re-scored shortlist {self.rescore}xk" if self.rescore else "")
        return ", ".join(p for p in parts if p)


def exact_topk(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, *, skip: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` by chunks of ``vectors`` (``(scores, ids)``, -1 padded); rows where the boolean
    ``skip`` is True take no part (without copying the others)."""
    nq, k = len(queries), max(1, k)
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    q32 = np.ascontiguousarray(queries, np.float32)
    for start in range(0, len(vectors), 65536):
        chunk = np.asarray(vectors[start : start + 65536], np.float32)
        skipped = skip[start : start + len(chunk)] if skip is not None else None
        if nq >= BATCHED_EXACT:  # FAISS: BLAS and a top-k heap per query, both threaded (~2x numpy on 500 queries)
            kk = min(k + (int(skipped.sum()) if skipped is not None else 0), len(chunk))  # room for the skipped
            s, part = faiss.knn(q32, np.ascontiguousarray(chunk), kk, metric=faiss.METRIC_INNER_PRODUCT)
            if skipped is not None:
                s[skipped[part]] = -np.inf
        else:  # a few queries: numpy's threaded matrix product (FAISS threads over queries alone)
            s = queries @ chunk.T
            if skipped is not None:
                s[:, skipped] = -np.inf
            kk = min(k, s.shape[1])
            part = (
                np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                if kk < s.shape[1]
                else np.tile(np.arange(s.shape[1]), (nq, 1))
            )
            s = np.take_along_axis(s, part, 1)
        best_s, best_i = merge_topk(best_s, best_i, s, ids[start + part], k)
    best_i[np.isneginf(best_s)] = -1  # fewer than k rows (or only skipped ones): padding, as before
    return best_s, best_i


def merge_topk(
    best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` of two per-query candidate lists (scores and ids side by side), ties to the earlier list."""
    cand_s, cand_i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i], axis=1)
    order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray, query_ids: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each query's true top-``k`` found in its top-``k``, the query's own item left out of both."""
    hits = 0.0
    for f, t, own in zip(found, truth, query_ids):
        t = t[(t != own) & (t >= 0)][:k]
        f = f[(f != own) & (f >= 0)][:k]
        hits += len(np.intersect1d(f, t)) / max(1, len(t))
    return hits / max(1, len(found))


Search = Callable[[np.ndarray, int, Tuning], np.ndarray]  # (queries, k, tuning) -> ids


def tune(
    index: Any, search: Search, queries: np.ndarray, truth: np.ndarray, query_ids: np.ndarray, exact: bool
) -> Tuning:
    """The cheapest settings reaching :data:`TARGET_RECALL` + :data:`TUNE_MARGIN` on the sample (the most
    thorough ones tried when none does), so that new queries reach the target too."""
    k = RECALL_K + 1  # a query that is an item gets itself back too
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    steps: list[Tuning] = []
    for factor in (0,) if exact else RESCORE_STEPS:
        if ivf is not None:
            steps += [Tuning(nprobe=p, rescore=factor) for p in NPROBE_STEPS if p <= ivf.nlist]
        elif hnsw is not None:
            steps += [Tuning(ef=e, rescore=factor) for e in EF_STEPS]
        else:
            steps.append(Tuning(rescore=factor))
    best = steps[-1]
    for t in steps:
        t.recall, t.queries = recall_at(search(queries, k, t), truth, query_ids), len(queries)
        if best.recall is None or t.recall > best.recall:
            best = t
        if t.recall >= TARGET_RECALL + TUNE_MARGIN:
            return t
    log.warning(
        "index reaches recall@%d %.3f at most (%s), below the %.2f target",
        RECALL_K,
        best.recall or 0,
        best.describe(),
        TARGET_RECALL,
    )
    return best
