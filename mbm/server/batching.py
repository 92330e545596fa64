"""Micro-batching of text queries: concurrent requests share one encoder forward and one index pass.

The first query of a batch waits ``window_s`` for others (skipped when the queue is already
full); while a batch runs in the thread pool, new queries queue up and form the next one,
so under load batches grow by themselves and at one client a query waits only the window.
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


class TextBatcher:
    """One per collection: ``await batcher.search(text, k)`` -> (Hits, (catalog_id, generation)) they came from."""

    def __init__(self, name: str, engine: Any, metrics: Metrics, *, window_s: float = 0.002, max_batch: int = 32):
        self.name, self.engine, self.metrics = name, engine, metrics
        self.window_s, self.max_batch = window_s, max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None

    async def search(self, text: str, k: int, min_score: float | None = None) -> tuple[list[Any], tuple[str, int]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()  # one per event loop (a test client may run several)
            self._task = loop.create_task(self._run())
        future: asyncio.Future[Any] = loop.create_future()
        await self._queue.put(_Job(text, k, min_score, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            deadline = time.perf_counter() + self.window_s
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
            try:
                results = await run_in_threadpool(self._batch, jobs)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, hits in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(hits)

    def _batch(self, jobs: list[_Job]) -> list[tuple[list[Any], tuple[str, int]]]:
        t0 = time.perf_counter()
        vectors = self.engine.embed_texts([j.text for j in jobs])
        t1 = time.perf_counter()
        found, version = self.engine.search_batch(vectors, k=max(j.k for j in jobs))
        t2 = time.perf_counter()
        self.metrics.batch.labels(self.name).observe(len(jobs))
        self.metrics.encode.labels(self.name).observe(t1 - t0)
        self.metrics.search.labels(self.name).observe(t2 - t1)
        return [
            ([h for h in hits if j.min_score is None or h.score >= j.min_score][: j.k], version)
            for j, hits in zip(jobs, found)
        ]
