"""VectorIndex: inner-product search over a collection's L2-normalized embeddings, keyed by item id.

Exact (Flat) or ANN (HNSW, IVF, PQ: chosen in ``mbm.store.ann``), searched on the GPU when one is
present. It keeps up with the catalog's change log: ``remove_ids`` + ``add_with_ids`` where the index
can remove (flat, IVF), tombstones (ids mapped to -1, skipped by a selector) where it cannot (HNSW).
It asks for a rebuild when tombstones pass a fifth of it, when a trained index's collection has
grown 4x or drifted from its centroids, when the size calls for another family of index, or when
the user changes ``--index-type`` / ``--max-memory``. ANN indexes keep a float16 copy of every
vector beside them (``mbm.store.rows``) for exact re-scoring and filtered search. Saving and
loading the files named in the stamp are here; when to save, and who may, is ``mbm.store.vectors``.

Process-wide setting: importing this module sets FAISS's ``distance_compute_blas_threshold``
to 20 (batched queries through BLAS are ~10x faster than FAISS's default above 20 queries).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mbm.atomic import write_text, write_with
from mbm.errors import UsageError
from mbm.store import ann, vector_ops
from mbm.store.ann import IndexSettings, Tuning
from mbm.store.catalog import Catalog, CatalogState, read_snapshot
from mbm.store.faiss_gpu import gpu_cloner_options, gpu_count, quantizer_on_gpu
from mbm.store.rows import RowFile, rows_file_name
from mbm.store.search_request import no_hits, search_request
from mbm.store.stamp import STAMP_FILE, index_file_name, read_stamp

log = logging.getLogger(__name__)

ADD_CHUNK = 65536  # rows added to an ANN index at a time

faiss.cvar.distance_compute_blas_threshold = 20

SMALL_BATCH = 8  # up to this many queries at once take the matrix-vector path on a flat CPU index
INDEX_GLOB = "vectors-*.faiss"
LEGACY_INDEX_FILE = "vectors.faiss"  # before index files were named for their catalog state
GPU_MAX_K = 2048  # FAISS GPU indexes return at most this many neighbours and probe at most this many lists
FILTER_EXACT_MAX = 32_768  # allowed sets up to this size are scored exactly from the row file
MAX_SHORTLIST = 4096  # a re-scored shortlist never exceeds max(this, 2k)


@dataclass
class Origin:
    """How an index came to be: kept in the stamp, read to decide when to rebuild."""

    settings: dict[str, Any] = field(default_factory=lambda: asdict(IndexSettings()))
    reason: str = ""
    built_count: int = 0
    trained: bool = False
    fit: float | None = None  # mean cosine to the nearest centroid at training (IVF)
    added: int = 0  # vectors added since the build, and the sum of their centroid cosines
    added_fit: float = 0.0
    seconds: float = 0.0
    estimated_bytes: int = 0


@dataclass
class VectorIndex:
    """Inner-product search over L2-normalized vectors, keyed by catalog item id."""

    index: Any  # IndexIDMap2 over flat / HNSW / ... storage, or an IVF index holding ids itself (what is saved)
    state: CatalogState
    kind: str = "Flat"  # the FAISS factory string it was built from
    tuning: Tuning = field(default_factory=Tuning)
    rows: RowFile | None = None  # float16 vectors for exact re-scoring (ANN kinds)
    origin: Origin = field(default_factory=Origin)
    dead: int = 0  # tombstones: slots mapped to id -1 (indexes that cannot remove)
    mapped: bool = False  # read memory-mapped (read-only: a change means a rebuild)
    stale: bool = False  # caught up but due for a rebuild (catch_up keeps answering False)
    _search_index: Any = None  # the GPU copy when a GPU is present
    _ids: np.ndarray | None = None  # the id map as an array, for the few-queries path
    _alive: np.ndarray | None = None  # sorted ids held, for filtered search

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, state: CatalogState, dim: int, settings: IndexSettings | None = None
    ) -> VectorIndex:
        """The index :func:`mbm.store.ann.choose_index` picks for these vectors, trained, filled and tuned."""
        started = time.perf_counter()
        settings = settings or IndexSettings()
        plan = ann.choose_index(len(ids), dim, settings)
        x = np.ascontiguousarray(vectors, np.float32)
        ids = np.ascontiguousarray(ids, np.int64)
        index = ann.new_index(plan.factory, dim)
        try:
            trained = ann.train(index, x, use_gpu=gpu_count() > 0) > 0
        except RuntimeError as e:
            raise UsageError(
                f"index type {plan.factory!r} cannot be trained on {len(ids):,} vectors ({ann.faiss_reason(e)}) — "
                "choose a smaller one with --index-type, or --index-type auto"
            ) from None
        origin = Origin(asdict(settings), plan.reason, len(ids), trained, estimated_bytes=plan.estimated_bytes)
        out = cls(index, state, plan.factory, origin=origin)
        if plan.family == "Flat":
            if len(ids):
                index.add_with_ids(x, ids)
        else:
            out.rows = RowFile(dim)
            out.rows.put(ids, x)
            origin.fit = ann.centroid_fit(index, x[:: max(1, len(x) // 20000)])
            out.tuning = out._add_and_measure(x, ids)
        origin.seconds = time.perf_counter() - started
        return out

    def _add_and_measure(self, x: np.ndarray, ids: np.ndarray) -> Tuning:
        """Add the vectors, measuring recall against exact search on the way: a sample of them is held back,
        searched for in the index of the others (tuned up to the target), then added too. Queries that
        are in the index find their own neighbours too easily (0.02 too optimistic for HNSW here)."""
        n = len(ids)
        held = np.zeros(n, bool)
        if n >= 20:
            held[np.random.default_rng(0).choice(n, min(ann.SAMPLE_QUERIES, n // 10), replace=False)] = True
        with quantizer_on_gpu(self.index):  # only while adding: searches copy the whole index to the GPU
            for start in range(0, n, ADD_CHUNK):  # by chunks: the kept rows are never copied whole
                keep = ~held[start : start + ADD_CHUNK]
                self.index.add_with_ids(x[start : start + ADD_CHUNK][keep], ids[start : start + ADD_CHUNK][keep])
        tuning = Tuning(recall=1.0)
        if held.any():
            queries = x[held]
            _, truth = ann.exact_topk(queries, x, ids, ann.RECALL_K, skip=held)
            tuning = ann.tune(
                self.index,
                lambda q, k, t: self._ann(q, k, None, t)[1],
                queries,
                truth,
                np.full(len(queries), -2, np.int64),  # no query is an item of the index searched
                ann.exact_scores(self.index),
            )
            with quantizer_on_gpu(self.index):
                self.index.add_with_ids(x[held], ids[held])
            self._search_index = None  # a GPU copy made while tuning lacks the held-back vectors
        return tuning

    @property
    def generation(self) -> int:
        return self.state.generation

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - self.dead

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings(**self.origin.settings)

    def _searcher(self) -> Any:
        if self._search_index is None:
            self._search_index = self.index
            if gpu_count() > 0 and ann.family(self.kind) in ("Flat", "IVF") and not self.mapped:
                try:
                    self._search_index = faiss.index_cpu_to_all_gpus(self.index, gpu_cloner_options(self.kind))
                except Exception as e:  # noqa: BLE001 - fall back to the CPU index, say why
                    log.warning("FAISS GPU index unavailable (%s); searching on the CPU", e)
        return self._search_index

    # -- searching ----------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)`` for each query row; ids are -1 where fewer than k exist.

        ``allowed`` (item ids, int64) restricts the results to those items inside the search: small sets
        are scored exactly, larger ones through a FAISS selector, and a query that comes back short of
        ``min(k, allowed)`` is answered exactly. ``nprobe`` / ``ef`` override the tuned IVF / HNSW settings."""
        queries, k = search_request(queries, k, self.ntotal, nprobe=nprobe, ef=ef)
        if self.ntotal == 0:
            return no_hits(len(queries), k)
        if allowed is None:
            if self.rows is None and len(queries) <= SMALL_BATCH and gpu_count() == 0:
                return self._flat_topk(queries, k)
            return self._ann(queries, k, None, self.tuning, nprobe, ef)
        allowed = np.intersect1d(np.asarray(allowed, np.int64), self._alive_ids())
        if len(allowed) == 0:
            return no_hits(len(queries), k)
        sel = faiss.IDSelectorBatch(allowed)
        if self.rows is None:  # flat: the scan over the allowed ids is exact
            return self.index.search(queries, k, params=ann.search_params(self.index, sel=sel))
        if len(allowed) <= FILTER_EXACT_MAX:
            return vector_ops.exact_among(self.rows, queries, k, allowed)
        scores, ids = self._ann(queries, k, sel, self.tuning, nprobe, ef)
        short = (ids >= 0).sum(axis=1) < min(k, len(allowed))
        if short.any():
            scores[short], ids[short] = vector_ops.exact_among(self.rows, queries[short], k, allowed)
        return scores, ids

    def _ann(
        self, queries: np.ndarray, k: int, sel: Any, tuning: Tuning, nprobe: int | None = None, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        fetch = k
        if tuning.rescore:
            fetch = min(int(self.index.ntotal), k * tuning.rescore, max(MAX_SHORTLIST, 2 * k))
        if sel is None and self.dead:
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.array([-1], np.int64)))
        nprobe, ef = nprobe or tuning.nprobe, ef or tuning.ef
        ivf = ann.ivf_of(self.index) if ann.family(self.kind) == "IVF" else None
        if ivf is not None and nprobe:  # probe lists enough to hold what is asked for, twice over
            nprobe = min(int(ivf.nlist), max(nprobe, math.ceil(2 * fetch * ivf.nlist / max(1, self.index.ntotal))))
        index = self.index
        if sel is None and fetch <= GPU_MAX_K and (nprobe or 0) <= GPU_MAX_K:
            index = self._searcher()  # GPU indexes take no selector and at most 2048 neighbours
        params = ann.search_params(self.index, sel=sel, nprobe=nprobe, ef=ef)
        try:
            scores, ids = index.search(queries, max(1, fetch), params=params)
        except RuntimeError as e:
            if index is self.index:
                raise
            log.warning("FAISS GPU search failed (%s); searching on the CPU from now on", e)
            self._search_index = self.index
            scores, ids = self.index.search(queries, max(1, fetch), params=params)
        if ivf is not None and nprobe and nprobe < ivf.nlist and sel is None:
            short = (ids >= 0).sum(axis=1) < min(fetch, self.ntotal)  # uneven lists: probe them all for those
            if short.any():
                every = ann.search_params(self.index, nprobe=int(ivf.nlist))
                scores[short], ids[short] = self.index.search(queries[short], max(1, fetch), params=every)
        if tuning.rescore and self.rows is not None:
            return vector_ops.rescore(self.rows, queries, ids, k)
        return scores[:, :k], ids[:, :k]

    def _flat_topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = vector_ops.flat_topk(self.index, self._ids, queries, k)
        if found is None:
            return self._ann(queries, k, None, self.tuning)
        (scores, ids), self._ids = found
        return scores, ids

    def _alive_ids(self) -> np.ndarray:
        if self._alive is None:
            self._alive = vector_ops.held_ids(self.index)
        return self._alive

    # -- keeping up with the catalog -------------------------------------------------------------
    def catch_up(self, catalog: Catalog) -> bool:
        """Apply the catalog's changes since this index's generation; False when a rebuild is needed."""
        if self.stale:
            return False
        with read_snapshot(catalog):
            state = catalog.state()
            settings = IndexSettings.from_meta(catalog.meta())
            if settings != self.settings:
                return False  # the user asked for another index type or memory budget
            if state == self.state:
                return True
            if state.catalog_id != self.state.catalog_id or state.generation < self.state.generation:
                return False
            changed = catalog.changed_since(self.state.generation)
            if changed is None:
                return False
            ids, vecs = catalog.embeddings_of(changed.tolist())
        if self.mapped and (len(changed) or len(ids)):
            return False  # a memory-mapped index is read-only
        self._apply(changed, ids, vecs)
        self.state = state
        self.stale = self.ntotal != state.count or self._rebuild_reason() is not None
        return not self.stale

    def _apply(self, changed: np.ndarray, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(changed):
            self.dead += vector_ops.remove(self.index, changed)
        if len(ids):
            with quantizer_on_gpu(self.index):
                self.index.add_with_ids(np.ascontiguousarray(vecs, np.float32), np.ascontiguousarray(ids, np.int64))
            if self.rows is not None:
                self.rows.put(ids, vecs)
            fit = ann.centroid_fit(self.index, vecs)
            if fit is not None:
                self.origin.added += len(ids)
                self.origin.added_fit += fit * len(ids)
        self._search_index, self._ids, self._alive = None, None, None

    def _rebuild_reason(self) -> str | None:
        """Why this index should be rebuilt rather than kept up to date, or None."""
        o, n = self.origin, self.ntotal
        reason = None
        if self.dead > ann.TOMBSTONE_MAX * max(1, int(self.index.ntotal)):
            reason = f"{self.dead} of {int(self.index.ntotal)} entries are tombstones"
        elif o.trained and n > ann.GROWTH_RETRAIN * max(1, o.built_count):
            reason = f"grown from {o.built_count} to {n} vectors since training"
        elif o.fit is not None and o.added >= max(1000, o.built_count // 10):
            if o.fit - o.added_fit / o.added > ann.DRIFT_RETRAIN:
                reason = f"new vectors fit the centroids worse ({o.added_fit / o.added:.3f} vs {o.fit:.3f})"
        if (
            reason is None
            and self.settings.index_type == "auto"
            and (n >= 1.5 * o.built_count or 1.5 * n <= o.built_count)
        ):
            try:
                plan = ann.choose_index(n, self.dim, self.settings)
            except UsageError:
                plan = None
            if plan is not None and plan.family != ann.family(self.kind):
                reason = f"{n} vectors call for {plan.factory}, not {self.kind}"
        if reason:
            log.info("rebuilding the vector index: %s", reason)
        return reason

    # -- files --------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write the row file's changes, the index file named for this index's state, then the stamp."""
        name = index_file_name(self.state)
        rows_name = None
        if self.rows is not None:
            rows_name = rows_file_name(self.state.catalog_id)
            target = folder / rows_name
            if self.rows.path == target and target.exists():
                self.rows.flush(target)
            else:
                alive, rows = self._alive_ids(), self.rows
                self.rows = RowFile.write(target, alive, rows.get)
        write_with(folder / name, lambda tmp: faiss.write_index(self.index, tmp))
        stamp = {
            **self.state._asdict(),
            "file": name,
            "kind": self.kind,
            "bytes": (folder / name).stat().st_size,
            "rows_file": rows_name,
            "tuning": self.tuning.as_dict(),
            "origin": asdict(self.origin),
            "dead": self.dead,
            "saved_at": time.time(),
        }
        write_text(folder / STAMP_FILE, json.dumps(stamp))
        keep = {name, rows_name}
        for old in [*folder.glob(INDEX_GLOB), *folder.glob("vectors-*.f16"), folder / LEGACY_INDEX_FILE]:
            if old.name not in keep:
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
            origin = Origin(**stamp.get("origin") or {})
            kind = stamp.get("kind", "Flat")
            budget = IndexSettings(**origin.settings).budget
            mapped = ann.family(kind) == "IVF" and path.stat().st_size > budget
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mapped else 0)
            rows = RowFile.open(folder / stamp["rows_file"], int(index.d)) if stamp.get("rows_file") else None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            log.info("vector index in %s unusable (%s); rebuilding", folder, e)
            return None
        dead = 0
        if isinstance(index, faiss.IndexIDMap):
            dead = int((faiss.vector_to_array(index.id_map) == -1).sum())
        if index.ntotal - dead != state.count or (rows is None and ann.family(kind) != "Flat"):
            return None
        return cls(index, state, kind, Tuning.from_dict(stamp.get("tuning")), rows, origin, dead, mapped)
