"""Micro-batching of text queries: concurrent requests share one encoder forward and one index pass.

The first query of a batch waits ``window_s`` for others (skipped when the queue is already
full); while a batch runs in the thread pool, new queries queue up and form the next one,
so under load batches grow by themselves. The window is skipped too while traffic is a single
client's: when no other query is waiting or running and the last batch was a query alone, nobody
is coming to share the forward pass, and at one client a query waits for nothing.

Queries the collection re-ranks by default (``Engine.default_rerank``) share the encoder forward
too: one run of the torch-free text tower gives every query's embedding and the token features
its re-ranking reads (``Engine.prime_queries``); each is then searched and re-ranked on its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from mbm.server.metrics import Metrics


@dataclass
class _Job:
    text: str
    k: int
    min_score: float | None
    future: asyncio.Future[Any]
    reranked: bool = False  # the collection's default re-ranking: the Engine searches it, at ``offset``
    offset: int = 0


class TextBatcher:
    """One per collection: ``await batcher.search(text, k)`` -> (Hits, (catalog_id, generation)) they came from."""

    def __init__(self, name: str, engine: Any, metrics: Metrics, *, window_s: float = 0.002, max_batch: int = 32):
        self.name, self.engine, self.metrics = name, engine, metrics
        self.window_s, self.max_batch = window_s, max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0  # queries queued or running: more than the one just taken means company
        self._last_batch = 0

    async def search(
        self, text: str, k: int, min_score: float | None = None, *, reranked: bool = False, offset: int = 0
    ) -> tuple[list[Any], tuple[str, int]]:
        """Plain: the top ``k`` by cosine (the caller pages them). ``reranked``: the page ``offset``..``offset + k``
        of the Engine's default search, re-ranked where the collection does so."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()  # one per event loop (a test client may run several)
            self._task = loop.create_task(self._run())
        future: asyncio.Future[Any] = loop.create_future()
        self._in_flight += 1
        try:
            await self._queue.put(_Job(text, k, min_score, future, reranked, offset))
            return await future
        finally:
            self._in_flight -= 1

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            alone = self._in_flight <= 1 and self._last_batch <= 1
            deadline = time.perf_counter() + (0.0 if alone else self.window_s)
            while len(jobs) < self.max_batch:
                if not self._queue.empty():
                    jobs.append(self._queue.get_nowait())
                    continue
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self._last_batch = len(jobs)
            try:
                results = await run_in_threadpool(self._batch, jobs)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, Exception):  # a re-ranked query's own error: the others are answered
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _batch(self, jobs: list[_Job]) -> list[Any]:
        self.metrics.batch.labels(self.name).observe(len(jobs))
        out: dict[int, Any] = {}
        plain = [j for j in jobs if not j.reranked]
        if plain:
            t0 = time.perf_counter()
            vectors = self.engine.embed_texts([j.text for j in plain])
            t1 = time.perf_counter()
            found, version = self.engine.search_batch(vectors, k=max(j.k for j in plain))
            self.metrics.encode.labels(self.name).observe(t1 - t0)
            self.metrics.search.labels(self.name).observe(time.perf_counter() - t1)
            for j, hits in zip(plain, found):
                out[id(j)] = ([h for h in hits if j.min_score is None or h.score >= j.min_score][: j.k], version)
        ranked = [j for j in jobs if j.reranked]
        if ranked:
            t0 = time.perf_counter()
            self.engine.prime_queries([j.text for j in ranked])
            self.metrics.encode.labels(self.name).observe(time.perf_counter() - t0)
        for j in ranked:
            try:
                version = self.engine.generation()  # read first, as the blocking path does
                hits = self.engine.search(j.text, k=j.k, offset=j.offset, min_score=j.min_score)
                self.metrics.observe_search(self.name, dict(self.engine.timings), encode=False)
                out[id(j)] = (hits, version)
            except Exception as e:  # noqa: BLE001 - handed to that request alone
                out[id(j)] = e
        return [out[id(j)] for j in jobs]
