"""Engine: the library's front door. Opens a collection, indexes, searches; never prints.

>>> from mbm import Engine
>>> eng = Engine.open()                    # default store, collection "default"
>>> report = eng.index(["./photos"])
>>> hits = eng.search("red car", k=10)

An Engine stays warm: its vector index and encoders are loaded once and refreshed
only when the catalog changes (another catalog id, or a newer generation, which is
applied incrementally from the catalog's change log). Searching opens the catalog
read-only and never waits for an index run; one index run at a time holds the
collection's lock, and only the lock holder rewrites derived caches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mbm.atomic import clean_temp
from mbm.collection.checks import check_index_args, check_kind, collection_kind, search_settings
from mbm.collection.handle import CollectionHandle
from mbm.collection.info import CollectionInfo
from mbm.collection.model import record_model
from mbm.config import (
    CATALOG_FILE,
    DEFAULT_BATCH_SIZE,
    ensure_store,
)
from mbm.errors import CatalogError, CollectionError, UsageError
from mbm.indexer.decode import DEFAULT_MAX_PIXELS
from mbm.indexer.runner import Indexer, IndexReport, Progress
from mbm.models.factory import no_fusion_head
from mbm.retrieval import hybrid
from mbm.retrieval.rerank import (
    DEFAULT_RERANK_TOP,
    MissingTokens,
    rerank_term,
)
from mbm.retrieval.searcher import Hit, Searcher, image_paths_encoder
from mbm.scale import backend as scale_backend
from mbm.store.ann import settings_meta
from mbm.store.catalog import Catalog
from mbm.store.check import CheckReport
from mbm.store.tokens import FUSION_KEY

if TYPE_CHECKING:
    from mbm.indexer.importer import ImportReport

# moved to mbm.collection; importable from here as before
__all__ = ["CATALOG_FILE", "CollectionInfo", "Engine", "Notify", "check_index_args", "collection_kind"]

Notify = Callable[[str], None]
log = logging.getLogger(__name__)


class Engine(CollectionHandle):
    """One collection in one store: index, import, search. Heavy parts (model, vectors) load on first use
    and stay loaded; the collection itself (catalog, model, info) is :class:`CollectionHandle`'s."""

    # -- indexing -----------------------------------------------------------------------------
    def index(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        texts: bool | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: Progress | None = None,
        dtype: str = "float16",
        wait: bool = True,
        notify: Notify | None = None,
        rerank_tokens: bool = False,
        index_type: str | None = None,
        max_memory: str | int | None = None,
        engine: str = "local",
        ray_address: str | None = None,
        ray_workers: int | None = None,
        backend: str | None = None,
        uri: str | None = None,
    ) -> IndexReport:
        """Add new and changed files under ``paths``, reuse moved ones, drop deleted ones.

        With a model that has a fusion head, items under ``paths`` that lack re-ranking tokens get them;
        ``rerank_tokens=True`` insists (an error for a model without one).
        One index run per collection at a time: another one waits for this (telling ``notify``),
        or raises ``CollectionBusy`` with ``wait=False``. ``index_type`` (a FAISS factory string, or "auto")
        and ``max_memory`` ("2GB") are recorded for the collection and choose its vector index (``mbm.store.ann``).
        ``engine="ray"`` embeds on Ray Data (``ray_address``, ``ray_workers``: ``mbm.scale.ray_index``);
        ``backend="milvus"`` with ``uri`` makes the collection search Milvus (``mbm.scale.milvus``), kept for it.
        ``batch_size``: images per forward pass; unless given, 32 on the CPU and 256 on a GPU (``default_batch_size``)."""
        check_index_args(paths, batch_size)
        settings_meta(None, max_memory, 0)  # a bad size fails before any model loads
        kind = collection_kind(paths, texts)
        try:  # fail fast before waiting; the checks that count are made again under the lock
            early = self._meta()
        except CatalogError:  # e.g. being created by another run right now
            early = {}
        check_kind(self.name, early, kind, paths)
        self._check_model_spec(early)
        if rerank_tokens and early.get(FUSION_KEY) == "0":
            raise no_fusion_head(early.get("model", "?"))
        scale_backend.check_run(engine, backend, uri, kind, early)
        with self._writing(kind, paths, dtype, index_type, max_memory, wait, notify) as catalog:
            scale_backend.record_backend(catalog, self.name, backend, uri)
            indexer = Indexer(
                self.encoder,
                catalog,
                self.folder,
                batch_size=batch_size,
                workers=workers,
                max_pixels=max_pixels,
                progress=progress,
                save_vectors=scale_backend.save_index,  # FAISS or Milvus: only the index searched is built
            )
            if engine == "ray":
                from mbm.scale.ray_index import RayOptions, index_with_ray

                precision = None if self.precision in (None, "auto") else self.precision  # None: the collection's
                options = RayOptions(
                    ray_address,
                    ray_workers,
                    batch_size or DEFAULT_BATCH_SIZE,
                    device=self.device or "auto",
                    precision=precision,
                )
                report = index_with_ray(indexer, paths, options, rerank_tokens=rerank_tokens)
            else:
                report = indexer.index(paths, texts=kind == "text", rerank_tokens=rerank_tokens)
            self._export_query_encoder()
        return report

    def import_embeddings(
        self,
        source: str | os.PathLike[str],
        *,
        texts: bool = False,
        index_type: str | None = None,
        max_memory: str | int | None = None,
        progress: Progress | None = None,
        wait: bool = True,
        notify: Notify | None = None,
    ) -> ImportReport:
        """Add embeddings computed elsewhere: clip-retrieval's output folder, or ``.npy`` files with a
        ``.parquet`` / ``.jsonl`` of rows beside them (``mbm.indexer.importer``). A new collection needs
        the model that computed them (``Engine(model=...)``); shards imported before are skipped."""
        from mbm.indexer.importer import find_shards, import_shards

        shards = find_shards(source, texts=texts)
        kind = "text" if texts else "image"
        settings_meta(None, max_memory, 0)
        early = self._meta() if self.exists else {}
        check_kind(self.name, early, kind, [source])
        self._check_model_spec(early)
        if not early.get("model") and self.model_spec is None and self._encoder is None:
            raise UsageError(
                f"collection {self.name!r} is new: name the model that computed the embeddings with --model SPEC"
            )
        with self._writing(kind, [source], "float16", index_type, max_memory, wait, notify) as catalog:
            t0 = time.perf_counter()
            report = import_shards(catalog, shards, progress=progress)
            t1 = time.perf_counter()
            scale_backend.save_index(catalog, self.folder)
            report.seconds.update(rows=t1 - t0, vectors=time.perf_counter() - t1, total=time.perf_counter() - t0)
        return report

    @contextlib.contextmanager
    def _writing(
        self,
        kind: str,
        paths: Sequence[Any],
        dtype: str,
        index_type: str | None,
        max_memory: str | int | None,
        wait: bool,
        notify: Notify | None,
    ) -> Iterator[Catalog]:
        """The catalog open for writing under the collection's lock, the collection checked (or created) for
        ``kind`` and ``--index-type`` / ``--max-memory`` recorded (the vector index follows them)."""
        ensure_store(self.store)
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock.hold(wait=wait, on_wait=notify):
            clean_temp(self.folder, min_age_s=0)  # left by a crashed write: no other writer can be active now
            catalog = self.catalog(create=True, write=True)
            meta = catalog.meta()
            check_kind(self.name, meta, kind, paths)  # another run may have created it while we waited
            self._check_model_spec(meta)
            if not meta.get("model"):
                self._init_collection(catalog, kind, dtype, notify)
            catalog.set_index_settings(**settings_meta(index_type, max_memory, int(catalog.meta().get("dim", 0))))
            yield catalog

    def _init_collection(self, catalog: Catalog, kind: str, dtype: str, notify: Notify | None) -> None:
        """Record the model: the one asked for, else the default (telling ``notify`` why)."""
        reason = None
        if self.model_spec is None and self._encoder is None:
            from mbm.models.factory import choose_default_model

            self.model_spec, reason = choose_default_model()
        encoder = self.encoder()
        if reason and notify is not None:
            notify(f"new collection {self.name!r}: model {encoder.spec} ({reason}; choose another with --model)")
        record_model(catalog, self.name, encoder, kind, dtype, reason)

    def prepare_search(self) -> None:
        """Leave what a fast cold search needs: a current vector index on disk and, once the model
        has been loaded, its text tower exported for torch-free query encoding."""
        with self._lock.attempt() as holder:
            if holder:
                scale_backend.save_index(self.catalog(write=True), self.folder)
                self._export_query_encoder()

    # -- searching ----------------------------------------------------------------------------
    def searcher(self) -> Searcher:
        """The warm Searcher: its vectors are brought up to date only when the catalog changed."""
        with self._refresh:
            catalog = self.catalog()
            if (
                self._searcher is not None
                and self._vectors is not None
                and catalog.version() == (self._vectors.state.catalog_id, self._vectors.state.generation)
            ):
                return self._searcher
            self._check_model_spec()
            if catalog.count() == 0:
                raise CollectionError(f"collection {self.name!r} is empty — run `mbm index PATH` to add files")
            self._vectors = scale_backend.open_index(catalog, self.folder, self._lock, self._vectors)  # FAISS or Milvus
            if self._searcher is None:
                self._searcher = Searcher(
                    catalog, self._vectors, self.embed_texts, lambda paths: image_paths_encoder(self.encoder())(paths)
                )
            self._searcher.catalog, self._searcher.vectors = catalog, self._vectors
            return self._searcher

    def prime_queries(self, texts: list[str]) -> None:
        """Encode ``texts`` in one run of the collection's torch-free text tower, embeddings and re-ranking token
        features both, so that :meth:`search` of each reuses that run (a server's concurrent queries); without
        an exported text tower, nothing (each search encodes its own)."""
        fast = self._fast_text()
        if fast is not None and len(texts) > 1:
            fast.encode_tokens_many(texts)

    def embed_texts(self, texts: list[str]) -> Any:
        """L2-normalized float32 text embeddings (torch-free when the collection has its query encoder)."""
        fast = self._fast_text()
        return fast.encode_texts(texts) if fast is not None else self.encoder().encode_texts(texts)

    def search(
        self,
        query: Any,
        *,
        k: int = 10,
        min_score: float | str | None = None,
        under: str | Sequence[str] | None = None,
        rerank: int | bool | None = None,
        tag: str | None = None,
        mode: str = "vector",
        after: str | None = None,
        before: str | None = None,
        camera: str | None = None,
        sort: str = "score",
        offset: int = 0,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> list[Hit]:
        """Search with text, an image path (``Path``), a raw vector, or a structured ``Query``.

        ``mode``: "vector" (default), "keyword" (BM25 over the items' own text, no model) or "hybrid"
        (reciprocal rank fusion of both; see ``mbm.retrieval.hybrid``); ``tag`` keeps items carrying that tag.
        Hits carry their tags (``TaggedHit.tags``).

        ``rerank=N`` (``True``: DEFAULT_RERANK_TOP) re-orders the top N (at least k) with the model's fusion
        head over the tokens stored at index time (no file is opened) and sets ``Hit.match``; the hits past
        them follow in the dual encoder's order. ``timings["rerank"]`` is that step, ``timings["rerank_query"]``
        the query's tokens. ``rerank=None`` (the default) re-ranks the top DEFAULT_RERANK_TOP (whatever ``k``) where re-ranking
        was measured to help: a text query over pictures with stored tokens, with a model whose folder holds a
        re-ranking calibration (the bundled model; ``mbm.retrieval.hubness``), in vector mode sorted by score;
        any other search is left in the dual encoder's order. ``rerank=0`` never re-ranks.

        Filters, applied inside the vector search (``k`` hits whenever ``k`` match): ``under`` (folders or
        files, any of them), ``after`` / ``before`` (capture date, else file time: ``2024``, ``2024-06``,
        ``2024-06-15``; ``after`` inclusive, ``before`` exclusive), ``camera`` (part of its name).
        ``min_score="auto"``: the calibrated cutoff (``Searcher.auto_cutoff``). ``sort="date"|"path"`` orders
        every hit above the cutoff (``auto`` unless given) by that key; ``offset`` skips that many hits of
        the order, which stays the same page after page while the collection does not change.
        ``nprobe`` / ``ef``: search an IVF / HNSW index more (or less) thoroughly than its tuned settings."""
        where, top = search_settings(
            k=k,
            offset=offset,
            rerank=rerank or 0,
            mode=mode,
            sort=sort,
            under=under,
            after=after,
            before=before,
            camera=camera,
            tag=tag,
        )
        for key in ("rerank", "rerank_query"):
            self.timings.pop(key, None)
        reranker, term = self._auto_reranker(query, mode, sort) if rerank is None else (None, None)
        if reranker is not None:
            top = DEFAULT_RERANK_TOP
        elif top:  # a query or a model that cannot re-rank fails before anything is searched
            term = rerank_term(query, self._meta().get("kind") == "text")
            reranker = self._reranker(term.kind)
        if reranker is not None:
            self._unaccounted_load = 0.0  # a model load here is outside the timed phases (its time is in timings)
        t0 = time.perf_counter()
        searcher = self.searcher()
        t1 = time.perf_counter()
        vector = searcher.query_vector(query) if mode != "keyword" else None
        t2 = time.perf_counter()
        with self._refresh:  # threads share the index: no search runs while another thread catches it up
            searcher = self.searcher()
            if mode == "vector" and vector is not None:
                hits = searcher.search(
                    vector, k=max(offset + k, top), min_score=min_score, where=where, sort=sort, nprobe=nprobe, ef=ef
                )
            else:
                hits = hybrid.search(
                    searcher, query, vector, k=max(offset + k, top), mode=mode, min_score=min_score, where=where
                )
        if reranker is not None and term is not None:
            t3 = time.perf_counter()
            tokens = reranker.query_tokens(term)
            t4 = time.perf_counter()
            # the same N re-ordered on every page, the hits past them in their order; asked for, at least k (the
            # default re-orders its fixed N whatever k is, so a longer list starts as a shorter one does)
            head = top if rerank is None else max(k, top)
            try:
                with self._refresh:
                    hits = reranker.rerank(tokens, hits[:head], searcher.catalog) + hits[head:]
                self.timings.update(rerank_query=t4 - t3, rerank=time.perf_counter() - t4)
            except MissingTokens as e:
                if rerank is not None:
                    raise
                log.info("search not re-ranked: %s", e)
        hits = hits[offset : offset + k]
        with self._refresh:
            hits = hybrid.with_tags(hits, searcher.catalog)
        loading, self._unaccounted_load = self._unaccounted_load, 0.0
        self.timings.update(open=t1 - t0, encode=max(0.0, t2 - t1 - loading), search=time.perf_counter() - t2)
        self._export_query_encoder()  # the next cold search skips torch
        return hits

    def search_many(self, vectors: Any, *, k: int = 10, min_score: float | None = None) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``vectors`` (normalized query embeddings) in one index pass."""
        with self._refresh:
            return self.searcher().search_many(vectors, k=k, min_score=min_score)

    def search_batch(
        self, vectors: Any, *, k: int = 10, min_score: float | None = None
    ) -> tuple[list[list[Hit]], tuple[str, int]]:
        """``search_many`` plus the ``(catalog_id, generation)`` the hits come from, read together; hits carry
        their tags, as :meth:`search`'s do."""
        with self._refresh:
            searcher = self.searcher()
            found = searcher.search_many(vectors, k=k, min_score=min_score)
            return [hybrid.with_tags(hits, searcher.catalog) for hits in found], self.catalog().version()

    def generation(self) -> tuple[str, int]:
        """``(catalog_id, generation)`` of the catalog now: results are stable while it does not change."""
        with self._refresh:
            return self.catalog().version()

    def item(self, item_id: int) -> dict[str, Any] | None:
        """The catalog row of one item (no embedding), or None when there is no such item."""
        with self._refresh:
            return self.catalog().rows([int(item_id)]).get(int(item_id))

    def indexed_paths(self) -> list[str]:
        """Every indexed path, in path order (one per file; a text file's lines share it)."""
        with self._refresh:
            return [p for p, _ in self.catalog().paths()]

    def item_vector(self, item_id: int) -> Any:
        """The stored (normalized float32) embedding of one item, or None when there is no such item."""
        from mbm.store.catalog import read_snapshot

        with self._refresh:
            catalog = self.catalog()
            with read_snapshot(catalog):
                ids, vecs = catalog.embeddings_of([int(item_id)])
        return vecs[0] if len(ids) else None

    def check(self, *, fix: bool = False) -> CheckReport:
        """Integrity, damaged embeddings, files that are gone, stale caches, temp files; ``fix`` repairs
        what can be repaired without losing data (it takes the collection's lock, never waits)."""
        from mbm.store.check import check_collection

        catalog = self.catalog(write=fix)
        report = check_collection(
            self.name,
            self.folder,
            catalog,
            self._lock,
            fix=fix,
            save_vectors=scale_backend.save_index,
            faiss_cache=not scale_backend.uses_milvus(catalog.meta()),
        )
        if fix:
            self._vectors = self._searcher = None
        return report
