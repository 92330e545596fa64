"""Bulk embedding on Ray Data: ``mbm index PATH --engine ray [--address ray://HEAD:10001]``.

The driver (the process holding the collection's lock) scans with mbm's own scan and decides what needs
work exactly as the local indexer does; a Ray Data actor pool (:class:`mbm.scale.ray_worker.EmbedActor`,
one model per worker or GPU) reads, decodes and embeds; the driver streams the results back in scan order
and commits them into the catalog in chunks, each chunk one transaction through ``Catalog.add_items`` (the
local indexer's write). A committed file carries its size and mtime, so a re-run after a killed job skips
it like any unchanged file: nothing is embedded twice that was committed, nothing is lost that was not.

What is left (files a worker could not decode, removed files, the vector index, fusion-token back-fill,
tags, item text) is then done by the local :class:`mbm.indexer.runner.Indexer` over the same paths, which
finds every file committed here unchanged: the collection ends as a local run would leave it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mbm.errors import CollectionError, MbmError, UsageError
from mbm.indexer.runner import Indexer, IndexReport
from mbm.indexer.scan import IMAGE_EXTENSIONS, FileEntry, scan
from mbm.scale import require
from mbm.store.catalog import Catalog, FileState
from mbm.store.tokens import TokenFormat, record_format

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
COMMIT_BATCHES = 8  # forward passes' worth of files per catalog transaction: what a killed job can lose at most


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. ``address``: ``ray://HEAD:10001`` (Ray Client), ``auto`` (the cluster this machine
    is part of) or None (``RAY_ADDRESS`` if set, else a Ray instance started on this machine for the run).
    When the caller has called ``ray.init`` already, that connection is used as it is (and left open)."""

    address: str | None = None
    workers: int | None = None  # actors, one model each (default: one per GPU, else one per cpus_per_worker CPUs)
    batch_size: int = 32
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    commit_rows: int | None = None  # files per catalog transaction (default: COMMIT_BATCHES batches)
    device: str = "auto"  # on each worker
    precision: str | None = None  # None: the collection's recorded precision
    local_below: int | None = None  # fewer files to embed than this (default: one batch) are left to the local run


@dataclass
class RayReport:
    """What the Ray stage committed; :meth:`merged` folds it into the local indexer's report of the rest."""

    committed: int = 0
    indexed: int = 0
    reused: int = 0
    moved: int = 0
    left: int = 0  # files a worker could not decode: the local indexer tries them and reports why
    workers: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def merged(self, tail: IndexReport, spec: str) -> IndexReport:
        tail.indexed += self.indexed
        tail.reused += self.reused
        tail.moved += self.moved
        tail.unchanged = max(0, tail.unchanged - self.committed)  # committed here, so the tail found them unchanged
        total = tail.seconds.get("total", 0.0) + self.seconds.get("total", 0.0)
        seconds = {k: v for k, v in tail.seconds.items() if k != "total"}
        for key, value in self.seconds.items():
            if key != "total":
                seconds[key] = seconds.get(key, 0.0) + value
        tail.seconds = {**seconds, "total": total}
        if self.workers and tail.model is None:
            tail.model = f"{spec} on {self.workers} Ray worker(s)"
        return tail


def check_ray() -> Any:
    """The ``ray`` module with Ray Data, or MissingExtra naming ``pip install 'mbm[scale]'``."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    return ray


def embed_with_ray(
    catalog: Catalog,
    roots: Sequence[str | os.PathLike[str]],
    options: RayOptions,
    *,
    max_pixels: int,
    progress: Progress | None = None,
) -> RayReport:
    """Embed the new and changed images under ``roots`` on Ray and commit them (the caller holds the lock)."""
    ray = check_ray()
    started = time.perf_counter()
    report = RayReport()
    meta = catalog.meta()
    if meta.get("kind", "image") != "image":
        raise UsageError("--engine ray embeds images; index a text collection without --engine ray")
    if not meta.get("model") or not meta.get("fingerprint"):
        raise CollectionError(f"catalog {catalog.path} records no model yet — the engine records it before a run")
    found = scan(roots, IMAGE_EXTENSIONS)
    states = catalog.file_states()
    todo = [f for f in found.files if not _unchanged(f, states.get(f.path))]
    report.seconds["scan"] = time.perf_counter() - started
    local_below = options.batch_size if options.local_below is None else options.local_below
    if len(todo) < local_below:  # e.g. the files that failed last time: not worth starting a pool
        log.info("%d file(s) to embed, fewer than %d: embedded by the local indexer", len(todo), local_below)
        return report
    todo_paths = {f.path for f in todo}
    seen = {f.path for f in found.files}
    gone_hashes = {s.hash for p, s in states.items() if p not in seen and _under(p, found.roots)}
    kept = sorted({s.hash for p, s in states.items() if s.hash and p not in todo_paths})
    previous = {p: states[p].hash for p in todo_paths if p in states and states[p].hash}
    started_here = _connect(ray, options.address)
    try:
        workers, gpus = _pool_size(ray, options)
        report.workers = workers
        actor_kwargs = {
            "spec": meta["model"],
            "fingerprint": meta["fingerprint"],
            "dtype": meta.get("dtype", "float16"),
            "precision": options.precision or meta.get("precision") or None,
            "device": options.device,
            "max_pixels": max_pixels,
            "threads": max(1, int(options.cpus_per_worker)),
            "known": kept,
            "previous": previous,
        }
        t0 = time.perf_counter()
        committer = _Committer(catalog, gone_hashes, report)
        if progress is not None:
            progress(0, len(todo))
        for table in _results(ray, todo, options, workers, gpus, actor_kwargs):
            committer.commit(table.to_pylist())
            if progress is not None:
                progress(committer.seen, len(todo))
        report.seconds["ray"] = time.perf_counter() - t0 - committer.seconds
        report.seconds["write"] = committer.seconds
    finally:
        if started_here:
            ray.shutdown()
    report.seconds["total"] = time.perf_counter() - started
    return report


def _connect(ray: Any, address: str | None) -> bool:
    """Join (or start) Ray; True when this call started the connection (the run then ends it)."""
    if ray.is_initialized():
        return False
    own = address is None and not os.environ.get("RAY_ADDRESS")  # a Ray instance of our own, for this run only
    kwargs: dict[str, Any] = {"address": address, **({"include_dashboard": False} if own else {})}
    try:
        ray.init(**kwargs)
    except Exception as e:  # a local node that does not come up is reported as a bare Exception
        where = "a local Ray instance" if own else address or os.environ["RAY_ADDRESS"]
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        fix = (
            "Ray's own logs are in its temp folder (by default /tmp/ray/session_latest/logs); run it again, or index without --engine ray"
            if own
            else "check --address (ray://HEAD:10001 for Ray Client, auto on a cluster node), or leave it out to run on this machine"
        )
        raise MbmError(f"cannot start or reach Ray at {where} ({reason}) — {fix}") from None
    return True


def _pool_size(ray: Any, options: RayOptions) -> tuple[int, float]:
    """``(actors, GPUs per actor)``: one actor per GPU where the cluster has GPUs, else per CPU share."""
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"--ray-workers must be at least 1, not {options.workers}")
    resources = ray.cluster_resources()
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if options.workers is not None:
        return options.workers, gpus
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus)), gpus
    return max(1, int(resources.get("CPU", 1) // max(options.cpus_per_worker, 1e-6))), gpus


def _results(
    ray: Any, todo: list[FileEntry], options: RayOptions, workers: int, gpus: float, actor_kwargs: dict[str, Any]
) -> Iterable[Any]:
    """Arrow tables of worker results, in scan order, at most ``commit_rows`` rows each."""
    from mbm.scale.ray_worker import EmbedActor

    items = [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in todo]
    blocks = min(len(items), max(workers * 4, math.ceil(len(items) / max(1, options.batch_size * 4))))
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    # scan order in, scan order out: item ids come out as a local run numbers them; mbm shows its own progress
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    try:
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            EmbedActor,
            fn_constructor_kwargs=actor_kwargs,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=options.cpus_per_worker,
            num_gpus=gpus,
        )
        rows = options.commit_rows or options.batch_size * COMMIT_BATCHES
        yield from ds.iter_batches(batch_size=rows, batch_format="pyarrow")
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


class _Committer:
    """Writes worker results exactly as the local indexer writes its batches (``Indexer._image_rows``'s rules):
    a content already stored is reused (vector, tokens and, for a moved file, its image facts), a new
    content is embedded by its first copy, and every chunk is one ``add_items`` transaction."""

    def __init__(self, catalog: Catalog, gone_hashes: set[str], report: RayReport):
        self.catalog = catalog
        self.gone_hashes = gone_hashes
        self.report = report
        self.done: set[str] = set()  # paths committed by this run (a retried Ray task may repeat rows)
        self.seen = 0
        self.seconds = 0.0
        self._format_recorded = False

    def commit(self, results: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        fresh = [r for r in results if r["path"] not in self.done]
        self.seen += len(fresh)
        live = [r for r in fresh if r["status"] != "failed"]
        stored = self.catalog.embedding_by_hash(r["hash"] for r in live)
        firsts: dict[str, dict[str, Any]] = {}
        rows: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        tokens: list[bytes | None] = []
        for r in live:
            h = r["hash"]
            facts = {k: r[k] for k in ("width", "height", "taken_at", "camera")}
            if h in stored:
                content = stored[h]
                if r["status"] == "known":
                    facts = dict(zip(facts, (content.width, content.height, content.taken_at, content.camera)))
                    self.report.moved += h in self.gone_hashes
                blob, tok = content.embedding, content.tokens
                self.report.reused += 1
            elif r["status"] == "decoded":
                first = firsts.setdefault(h, r)
                blob, tok = first["embedding"], first["tokens"]
                self.report.indexed += first is r
                self.report.reused += first is not r
                if tok is not None:
                    self._record_format(first["token_shape"])
            else:  # known when the run began, its content since removed by another writer: the tail redoes it
                continue
            rows.append({"path": r["path"], "size": r["size"], "mtime_ns": r["mtime_ns"], "hash": h, **facts})
            blobs.append(blob)
            tokens.append(tok)
        self.catalog.add_items(rows, blobs, tokens)
        self.done.update(r["path"] for r in rows)
        self.report.committed += len(rows)
        self.report.left += len(fresh) - len(rows)
        self.seconds += time.perf_counter() - t0

    def _record_format(self, shape: Sequence[int]) -> None:
        if not self._format_recorded:
            record_format(self.catalog, TokenFormat("image", int(shape[0]), int(shape[1])))
            self._format_recorded = True


def _unchanged(entry: FileEntry, state: FileState | None) -> bool:
    return state is not None and state.size == entry.size and state.mtime_ns == entry.mtime_ns


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def index_with_ray(
    indexer: Indexer, roots: Sequence[str | os.PathLike[str]], options: RayOptions, *, rerank_tokens: bool = False
) -> IndexReport:
    """Embed on Ray and commit, then let the local ``indexer`` finish the run over the same ``roots``
    (what Ray left, removals, the vector index, tokens, tags): the report of both together."""
    ray_report = embed_with_ray(
        indexer.catalog, roots, options, max_pixels=indexer.max_pixels, progress=indexer.progress
    )
    tail = indexer.index(roots, texts=False, rerank_tokens=rerank_tokens)
    return ray_report.merged(tail, indexer.catalog.meta().get("model", "?"))
