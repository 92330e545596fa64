"""The server's micro-batcher on a stand-in engine: who waits for company and who does not."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from mbm.server.batching import TextBatcher
from mbm.server.metrics import Metrics


class CountingEngine:
    """Records the size of every encoder run; each query's one hit carries its own text back."""

    def __init__(self, gate: threading.Event | None = None):
        self.runs: list[int] = []
        self.gate = gate

    def embed_texts(self, texts):
        if self.gate is not None:
            self.gate.wait(10)  # holds the first run until the test lets it go
        self.runs.append(len(texts))
        return np.zeros((len(texts), 4), dtype=np.float32), list(texts)

    def search_batch(self, vectors, k):
        _, texts = vectors
        return [[Hit(t)] for t in texts], ("catalog", 1)


class Hit:
    def __init__(self, text: str):
        self.text, self.score = text, 1.0


def test_a_lone_client_does_not_wait_for_company():
    """One query at a time: the window (a minute here) is never waited, yet each answer is its own."""
    engine = CountingEngine()
    batcher = TextBatcher("c", engine, Metrics(), window_s=60)

    async def one_after_another():
        return [await asyncio.wait_for(batcher.search(f"q{i}", 1), 20) for i in range(4)]

    answers = asyncio.run(one_after_another())
    assert [hits[0].text for hits, _ in answers] == ["q0", "q1", "q2", "q3"]
    assert engine.runs == [1, 1, 1, 1]


def test_queries_that_arrive_together_share_one_encoder_run():
    """While the first run is held, eight more queries queue: they form one batch. After a crowd, a query
    waits its window (a second here) for company, and one sent 20 ms later joins it."""
    gate = threading.Event()
    engine = CountingEngine(gate)
    batcher = TextBatcher("c", engine, Metrics(), window_s=1.0)

    async def crowd():
        first = asyncio.ensure_future(batcher.search("first", 1))
        await asyncio.sleep(0.2)  # the first query is in its run, held at the gate
        rest = [asyncio.ensure_future(batcher.search(f"q{i}", 1)) for i in range(8)]
        await asyncio.sleep(0.2)
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *rest), 20)
        late = asyncio.ensure_future(batcher.search("a", 1))
        await asyncio.sleep(0.02)
        answers += await asyncio.wait_for(asyncio.gather(late, batcher.search("b", 1)), 20)
        return answers

    answers = asyncio.run(crowd())
    assert [hits[0].text for hits, _ in answers] == ["first"] + [f"q{i}" for i in range(8)] + ["a", "b"]
    assert engine.runs == [1, 8, 2]
