"""Read, hash, decode and preprocess files in a thread pool, in order, a batch at a time.

Threads, not processes: Pillow releases the GIL while it decodes and resizes, so a
thread pool decodes on every core without pickling tensors between processes or paying
worker start-up.

When the model computes on the same cores (a CPU encoder), decoding *takes turns* with it
(``yield_cpu``): no file is started while the consumer holds a batch. The model's threads
(torch's OpenMP team, ONNX Runtime's pool) wait for their slowest member at every layer,
so a decoding thread that takes one of their cores stalls them all; measured on 2 cores
with ViT-B-32 in bf16, taking turns cut the summed embed time of 300 photos from 12.6 s to
8.2 s and decode from 14.3 s to 8.7 s (less contention for caches and cores), and the whole
run by 5%.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mbm.indexer.decode import IMAGE_LIMIT, DecodeError, ImageFacts, PixelBudget, decode, jpeg_header, read_file
from mbm.indexer.scan import FileEntry


@dataclass
class Decoded:
    entry: FileEntry
    hash: str
    pixels: Any  # preprocessed (3, H, W): a float32 numpy array (``Encoder.pixels``) or a torch tensor
    facts: ImageFacts


@dataclass
class Encoded:
    """A plain JPEG left undecoded for the model's device (``mbm.indexer.device_decode``): its bytes and header."""

    entry: FileEntry
    hash: str
    data: bytes
    facts: ImageFacts
    orientation: int


@dataclass
class Known:
    """Content already in the catalog (moved, copied or touched): its vector is reused."""

    entry: FileEntry
    hash: str


@dataclass
class Failed:
    entry: FileEntry
    reason: str


Prepared = Decoded | Encoded | Known | Failed


class StageClock:
    """Seconds spent per stage, summed over threads (so decode may exceed wall time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds


def make_preparer(
    preprocess: Callable[[Any], Any],
    min_side: int,
    known_hashes: AbstractSet[str],
    max_pixels: int,
    clock: StageClock,
    *,
    previous: Mapping[str, str] | None = None,
    budget: PixelBudget | None = None,
    jpeg_to_device: bool = False,
) -> Callable[[FileEntry], Prepared]:
    """A function that reads and decodes one file, safe to call from several threads.

    A file is ``Known`` when its content is in ``known_hashes`` (stored before the run and
    kept through it) or is unchanged from its own ``previous`` hash (path -> hash); nothing
    learnt during the run counts, so no thread's timing decides which copy is "first".
    Copies within a run are each decoded; the runner, which sees results in input order,
    embeds the first and reuses its vector for the rest. ``jpeg_to_device``: plain JPEGs come back
    ``Encoded``, for the embedding stage to decode on the GPU."""
    known = frozenset(known_hashes)
    previous = previous or {}
    budget = budget or PixelBudget()

    def prepare(entry: FileEntry) -> Prepared:
        too_big = IMAGE_LIMIT.problem(entry.size)
        if too_big:  # from the scan: the file is not even opened
            return Failed(entry, too_big)
        t0 = time.perf_counter()
        try:
            data, digest = read_file(entry.path)
            t1 = time.perf_counter()
            clock.add("read", t1 - t0)
            if digest in known or previous.get(entry.path) == digest:
                return Known(entry, digest)
            header = jpeg_header(data, max_pixels=max_pixels) if jpeg_to_device else None
            if header is not None:
                clock.add("decode", time.perf_counter() - t1)
                return Encoded(entry, digest, data, *header)
            image, facts = decode(data, min_side, max_pixels=max_pixels, budget=budget)
            del data  # up to MAX_FILE_BYTES: not kept while preprocessing
            pixels = preprocess(image)
            clock.add("decode", time.perf_counter() - t1)
            return Decoded(entry, digest, pixels, facts)
        except DecodeError as e:
            return Failed(entry, str(e))
        except Exception as e:  # noqa: BLE001 - one bad file must never stop a run
            return Failed(entry, f"unexpected {type(e).__name__}: {e}")

    return prepare


def stack_pixels(pixels: Sequence[Any]) -> Any:
    """One ``(N, 3, H, W)`` batch of preprocessed images: numpy when they all are (no torch import), else torch."""
    if all(isinstance(p, np.ndarray) for p in pixels):
        return np.stack(pixels)
    import torch

    device = next(p.device for p in pixels if isinstance(p, torch.Tensor))  # decoded on a GPU: stack there
    return torch.stack([torch.as_tensor(p).to(device) for p in pixels])


class Turns:
    """Lets the decoding threads start files only while the consumer is not embedding (``pause``)."""

    def __init__(self) -> None:
        self._go = threading.Event()
        self._go.set()

    def wait(self) -> None:
        self._go.wait()

    def pause(self, paused: bool) -> None:
        if paused:
            self._go.clear()
        else:
            self._go.set()


def prepared_batches(
    entries: Iterable[FileEntry],
    prepare: Callable[[FileEntry], Prepared],
    batch_size: int,
    workers: int,
    prefetch: int = 3,
    *,
    yield_cpu: bool = False,
) -> Iterator[list[Prepared]]:
    """Yield lists of results, in input order, each holding at most ``batch_size`` decoded images.

    ``yield_cpu``: start no file while the consumer holds a batch (it embeds on the same cores)."""
    window = max(batch_size * prefetch, workers * 2)
    pending: collections.deque[Future[Prepared]] = collections.deque()
    batch: list[Prepared] = []
    decoded = 0
    turns = Turns()

    def take_turn(entry: FileEntry) -> Prepared:
        turns.wait()
        return prepare(entry)

    hold = turns if yield_cpu else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mbm-decode") as pool:
        it = iter(entries)
        try:
            for entry in it:
                pending.append(pool.submit(take_turn, entry))
                while len(pending) >= window:
                    batch, decoded = yield from _drain_one(pending, batch, decoded, batch_size, hold)
            while pending:
                batch, decoded = yield from _drain_one(pending, batch, decoded, batch_size, hold)
            if batch:
                yield from _hand_over(batch, hold)
        finally:
            for fut in pending:  # an interrupted run must not wait for queued work
                fut.cancel()
            turns.pause(False)  # before the pool waits for its threads: none may stay paused


def _hand_over(batch: list[Prepared], hold: Turns | None) -> Generator[list[Prepared], None, None]:
    """Yield ``batch``, with decoding paused while the consumer has it when ``hold`` is given."""
    if hold is None:
        yield batch
        return
    hold.pause(True)
    try:
        yield batch
    finally:
        hold.pause(False)


def _drain_one(
    pending: collections.deque[Future[Prepared]],
    batch: list[Prepared],
    decoded: int,
    batch_size: int,
    hold: Turns | None,
) -> Generator[list[Prepared], None, tuple[list[Prepared], int]]:
    result = pending.popleft().result()
    batch.append(result)
    if isinstance(result, Decoded):
        decoded += 1
    # Yield full batches; also flush long runs of reused/failed files so progress keeps moving.
    if decoded >= batch_size or len(batch) >= batch_size * 8:
        yield from _hand_over(batch, hold)
        return [], 0
    return batch, decoded
