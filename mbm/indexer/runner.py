"""The Indexer: scan -> read/decode (thread pool) -> embed -> catalog -> vectors.

Each batch is committed in one transaction (rows + embeddings), so an interrupted
run keeps everything committed and the next run resumes with what is left.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mbm.indexer.decode import DEFAULT_MAX_PIXELS, facts_dict
from mbm.indexer.embed import Decoded, Failed, Known, StageClock, make_preparer, prepared_batches
from mbm.indexer.scan import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, FileEntry, display_path, scan
from mbm.indexer.texts import read_texts, text_hash
from mbm.models.factory import Encoder
from mbm.store.catalog import Catalog
from mbm.store.vectors import build_from_catalog, vectors_fresh

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (files done, files to do)


@dataclass
class IndexReport:
    """What one ``index`` run did. ``skipped`` lists (path, reason)."""

    indexed: int = 0
    reused: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    total_items: int = 0
    model: str | None = None  # set when the run loaded the model

    @property
    def ok(self) -> bool:
        return not self.skipped

    def as_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed, "reused": self.reused, "moved": self.moved, "unchanged": self.unchanged,
            "removed": self.removed, "skipped": [{"path": display_path(p), "reason": r} for p, r in self.skipped],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "total_items": self.total_items, "model": self.model,
        }


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


class Indexer:
    """Composes the stages. ``encoder`` is an Encoder or a function returning one, called only
    when something needs embedding (an unchanged re-run never loads the model)."""

    def __init__(
        self,
        encoder: Encoder | Callable[[], Encoder],
        catalog: Catalog,
        vectors_dir: Path,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: Progress | None = None,
    ):
        self._encoder = encoder
        self.catalog = catalog
        self.vectors_dir = vectors_dir
        self.batch_size = batch_size
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.max_pixels = max_pixels
        self.progress = progress or (lambda done, total: None)
        self.dtype = np.dtype(catalog.meta().get("dtype", "float16"))

    @property
    def encoder(self) -> Encoder:
        if not isinstance(self._encoder, Encoder):
            self._encoder = self._encoder()
        return self._encoder

    def index(self, roots: Sequence[str | os.PathLike[str]], *, texts: bool = False) -> IndexReport:
        report, clock = IndexReport(), StageClock()
        started = time.perf_counter()
        t0 = time.perf_counter()
        found = scan(roots, TEXT_EXTENSIONS if texts else IMAGE_EXTENSIONS)
        report.skipped.extend(found.problems)
        states = self.catalog.file_states()
        todo = [f for f in found.files if not _unchanged(f, states.get(f.path))]
        report.unchanged = len(found.files) - len(todo)
        seen = {f.path for f in found.files}
        gone = [p for p in states if _under(p, found.roots) and p not in seen]
        clock.add("scan", time.perf_counter() - t0)

        if not todo:
            failed: list[str] = []
        elif texts:
            failed = self._index_texts(todo, report, clock)
        else:
            gone_hashes = {states[p].hash for p in gone}
            failed = self._index_images(todo, gone_hashes, report, clock)

        t0 = time.perf_counter()
        stale = [p for p in failed if p in states]  # a file that no longer decodes loses its old vector
        report.removed = len(gone)
        self.catalog.remove_paths(gone + stale)
        clock.add("write", time.perf_counter() - t0)

        t0 = time.perf_counter()
        if not vectors_fresh(self.vectors_dir, self.catalog.generation(), self.catalog.count()):
            build_from_catalog(self.catalog).save(self.vectors_dir)
        clock.add("vectors", time.perf_counter() - t0)
        report.total_items = self.catalog.count()
        if isinstance(self._encoder, Encoder):
            report.model = f"{self._encoder.spec} on {self._encoder.device} ({self._encoder.precision})"
        report.seconds = {**clock.seconds, "total": time.perf_counter() - started}
        return report

    def _index_images(self, todo: list[FileEntry], gone_hashes: set[str], report: IndexReport, clock: StageClock) -> list[str]:
        known = self.catalog.known_hashes()
        prepare = make_preparer(self.encoder.preprocess, self.encoder.image_size, known, self.max_pixels, clock)
        failed: list[str] = []
        done = 0
        self.progress(0, len(todo))
        for batch in prepared_batches(todo, prepare, self.batch_size, self.workers):
            rows, blobs = [], []
            fresh: dict[str, tuple[bytes, int | None, int | None, str | None, str | None]] = {}
            decoded = [r for r in batch if isinstance(r, Decoded)]
            if decoded:
                import torch

                t0 = time.perf_counter()
                vecs = self.encoder.encode_image_tensors(torch.stack([r.pixels for r in decoded]))
                clock.add("embed", time.perf_counter() - t0)
                for r, v in zip(decoded, vecs):
                    facts = facts_dict(r.facts)
                    rows.append(_file_row(r.entry, r.hash, facts))
                    blobs.append(v.astype(self.dtype).tobytes())
                    fresh[r.hash] = (blobs[-1], facts["width"], facts["height"], facts["taken_at"], facts["camera"])
                report.indexed += len(decoded)
            reused = [r for r in batch if isinstance(r, Known)]
            if reused:
                stored = {**self.catalog.embedding_by_hash(r.hash for r in reused), **fresh}
                for r in reused:
                    if r.hash not in stored:  # its first copy in this run failed to decode
                        batch.append(Failed(r.entry, "same content as a file that could not be decoded"))
                        continue
                    emb, w, h, taken, camera = stored[r.hash]
                    rows.append(_file_row(r.entry, r.hash, {"width": w, "height": h, "taken_at": taken, "camera": camera}))
                    blobs.append(emb)
                    report.moved += r.hash in gone_hashes
                report.reused += sum(r.hash in stored for r in reused)
            for r in batch:
                if isinstance(r, Failed):
                    report.skipped.append((r.entry.path, r.reason))
                    failed.append(r.entry.path)
            t0 = time.perf_counter()
            if rows:
                self.catalog.add_items(rows, blobs)
            clock.add("write", time.perf_counter() - t0)
            done += len(batch)
            self.progress(done, len(todo))
        return failed

    def _index_texts(self, todo: list[FileEntry], report: IndexReport, clock: StageClock) -> list[str]:
        failed: list[str] = []
        self.progress(0, len(todo))
        for done, entry in enumerate(todo, 1):
            t0 = time.perf_counter()
            try:
                lines = read_texts(entry.path)
            except ValueError as e:
                report.skipped.append((entry.path, str(e)))
                failed.append(entry.path)
                continue
            clock.add("read", time.perf_counter() - t0)
            hashes = [text_hash(t) for _, t in lines]
            stored = self.catalog.embedding_by_hash(hashes)
            new = sorted({t for (_, t), h in zip(lines, hashes) if h not in stored})
            t0 = time.perf_counter()
            for i in range(0, len(new), 1024):
                chunk = new[i : i + 1024]
                vecs = self.encoder.encode_texts(chunk)
                stored.update({text_hash(t): (v.astype(self.dtype).tobytes(), None, None, None, None) for t, v in zip(chunk, vecs)})
            clock.add("embed", time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = [{**_file_row(entry, h, {}), "part": part, "text": text} for (part, text), h in zip(lines, hashes)]
            with self.catalog.transaction():  # the file's old lines and its new ones change together
                self.catalog.remove_paths([entry.path])
                self.catalog.add_items(rows, [stored[h][0] for h in hashes])
            clock.add("write", time.perf_counter() - t0)
            report.indexed += len(new)
            report.reused += len(lines) - len(new)
            self.progress(done, len(todo))
        return failed


def _unchanged(entry: FileEntry, state: Any) -> bool:
    return state is not None and state.size == entry.size and state.mtime_ns == entry.mtime_ns


def _file_row(entry: FileEntry, digest: str, facts: dict[str, Any]) -> dict[str, Any]:
    return {"path": entry.path, "size": entry.size, "mtime_ns": entry.mtime_ns, "hash": digest, **facts}
