"""The Indexer: scan -> read/decode (thread pool) -> embed (+ fusion tokens) -> catalog -> vectors.

Each batch is committed in one transaction (rows + embeddings + tokens), so an interrupted
run keeps everything committed and the next run resumes with what is left. When the model
has a fusion head, items under the indexed paths that lack tokens are back-filled
(``mbm.indexer.backfill``) after the vectors are saved.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbm.config import default_batch_size
from mbm.indexer import backfill, tagging
from mbm.indexer.decode import DEFAULT_MAX_PIXELS, facts_dict
from mbm.indexer.device_decode import decode_on_device, device_pixels
from mbm.indexer.embed import (
    Decoded,
    Failed,
    StageClock,
    make_preparer,
    prepared_batches,
    stack_pixels,
)
from mbm.indexer.scan import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, FileEntry, display_path, one_line, scan
from mbm.indexer.texts import read_texts, text_hash
from mbm.models.factory import Encoder, no_fusion_head
from mbm.store.catalog import Catalog, FileState, StoredContent
from mbm.store.tokens import FUSION_KEY, missing, pack, record_format, record_fusion, record_unfillable, unfillable
from mbm.store.vectors import ensure_saved

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
    tokens_filled: int = 0  # items indexed before tokens were stored that got them in this run
    tokens_skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): left without tokens
    tokens_not_retried: int = 0  # items an earlier back-fill could not fill, their files unchanged since

    @property
    def ok(self) -> bool:
        return not self.skipped

    def as_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed,
            "reused": self.reused,
            "moved": self.moved,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": [{"path": display_path(p), "reason": r} for p, r in self.skipped],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "total_items": self.total_items,
            "model": self.model,
            "tokens_filled": self.tokens_filled,
            "tokens_skipped": [{"path": display_path(p), "reason": r} for p, r in self.tokens_skipped],
            "tokens_not_retried": self.tokens_not_retried,
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
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: Progress | None = None,
        save_vectors: Callable[[Catalog, Path], Any] = ensure_saved,
    ):
        self._encoder = encoder
        self.save_vectors = save_vectors  # brings the searched index up to date (the caller holds the lock)
        self.catalog = catalog
        self.vectors_dir = vectors_dir
        self._batch_size = batch_size
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.max_pixels = max_pixels
        self.progress = progress or (lambda done, total: None)
        self.dtype = np.dtype(catalog.meta().get("dtype", "float16"))
        self._fusion_recorded = False
        self._format_recorded = False

    @property
    def encoder(self) -> Encoder:
        if not isinstance(self._encoder, Encoder):
            self._encoder = self._encoder()
        if not self._fusion_recorded:  # later runs learn from the meta whether a back-fill can ever apply
            record_fusion(self.catalog, self._encoder)
            self._fusion_recorded = True
        return self._encoder

    @property
    def batch_size(self) -> int:
        """As given, else the encoder's device's default (``mbm.config.default_batch_size``)."""
        return self._batch_size or default_batch_size(self.encoder.device)

    def index(
        self, roots: Sequence[str | os.PathLike[str]], *, texts: bool = False, rerank_tokens: bool = False
    ) -> IndexReport:
        """Index ``roots``; ``rerank_tokens`` insists on fusion tokens for every item under them (an error when
        the model has no fusion head); without it they are filled whenever the model has one."""
        report, clock = IndexReport(), StageClock()
        started = time.perf_counter()
        t0 = time.perf_counter()
        found = scan(roots, TEXT_EXTENSIONS if texts else IMAGE_EXTENSIONS)
        report.skipped.extend((path, one_line(reason)) for path, reason in found.problems)
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
            failed = self._index_images(todo, states, gone_hashes, report, clock)

        t0 = time.perf_counter()
        stale = [p for p in failed if p in states]  # a file that no longer decodes loses its old vector
        report.removed = len(gone)
        self.catalog.remove_paths(gone + stale)
        clock.add("write", time.perf_counter() - t0)

        t0 = time.perf_counter()
        self.save_vectors(self.catalog, self.vectors_dir)
        clock.add("vectors", time.perf_counter() - t0)
        self._fill_tokens(found.roots, texts, rerank_tokens, report, clock)
        tagging.after_index(self.catalog, lambda: self.encoder, found.roots, clock)  # tags, item text (FTS5)
        report.total_items = self.catalog.count()
        if isinstance(self._encoder, Encoder):
            report.model = f"{self._encoder.spec} on {self._encoder.device} ({self._encoder.precision})"
        report.seconds = {**clock.seconds, "total": time.perf_counter() - started}
        return report

    def _fill_tokens(
        self, roots: list[str], texts: bool, required: bool, report: IndexReport, clock: StageClock
    ) -> None:
        """Give tokens to the items under ``roots`` that lack them (loads the model only when some do). Files an
        earlier back-fill could not use are tried again only when they changed or ``required`` (--rerank-tokens)
        asks, so an unchanged re-run does not load the model for them every time."""
        if self.catalog.meta().get(FUSION_KEY) == "0" and not required:
            return
        items = [m for m in missing(self.catalog) if _under(m.path, roots)]
        if not required:
            known = unfillable(self.catalog)
            retry = [m for m in items if known.get(m.id) != (m.size, m.mtime_ns)]
            report.tokens_not_retried += len(items) - len(retry)
            items = retry
        if not items:
            return
        if not self.encoder.has_fusion:
            if required:
                raise no_fusion_head(self.encoder.spec)
            return
        if texts:
            result = backfill.fill_texts(self.encoder, self.catalog, items, clock=clock, progress=self.progress)
        else:
            result = backfill.fill_images(
                self.encoder,
                self.catalog,
                items,
                batch_size=self.batch_size,
                workers=self.workers,
                max_pixels=self.max_pixels,
                clock=clock,
                progress=self.progress,
            )
        report.tokens_filled += result.filled
        report.tokens_skipped.extend(result.skipped)
        failed = {path for path, _ in result.skipped}
        record_unfillable(self.catalog, [m for m in items if m.path in failed])

    def _record_format(self, fmt: Any) -> None:
        if not self._format_recorded:
            record_format(self.catalog, fmt)
            self._format_recorded = True

    def _index_images(
        self,
        todo: list[FileEntry],
        states: dict[str, FileState],
        gone_hashes: set[str],
        report: IndexReport,
        clock: StageClock,
    ) -> list[str]:
        todo_paths = {f.path for f in todo}
        # Contents a file may reuse: rows this run does not rewrite stay stored throughout it,
        # and a rewritten file whose content is unchanged rewrites its own row with that content.
        kept = {s.hash for p, s in states.items() if s.hash and p not in todo_paths}
        previous = {p: states[p].hash for p in todo_paths if p in states and states[p].hash}
        encoder = self.encoder  # a fast-started one is still loading: decoding starts meanwhile
        transform = encoder.pixels if encoder.pixels is not None else encoder.preprocess  # numpy: no torch needed
        on_device = device_pixels(encoder.device, encoder.preprocess_cfg)  # CUDA: JPEGs decode on the GPU
        prepare = make_preparer(
            transform,
            encoder.image_size,
            kept,
            self.max_pixels,
            clock,
            previous=previous,
            jpeg_to_device=bool(on_device),
        )
        failed: list[str] = []
        done = 0
        self.progress(0, len(todo))
        batches = prepared_batches(
            todo,
            prepare,
            self.batch_size,
            self.workers,
            yield_cpu=encoder.device == "cpu",  # the model's threads and the decoders share these cores
        )
        for batch in batches:
            if on_device is not None:
                t0 = time.perf_counter()
                decode_on_device(batch, on_device, encoder.image_size, transform, self.max_pixels)
                clock.add("decode", time.perf_counter() - t0)
            rows, blobs, tokens = self._image_rows(batch, gone_hashes, report, clock)
            for r in batch:
                if isinstance(r, Failed):
                    report.skipped.append((r.entry.path, one_line(r.reason)))
                    failed.append(r.entry.path)
            t0 = time.perf_counter()
            if rows:
                self.catalog.add_items(rows, blobs, tokens)
            clock.add("write", time.perf_counter() - t0)
            done += len(batch)
            self.progress(done, len(todo))
        return failed

    def _image_rows(
        self, batch: list[Any], gone_hashes: set[str], report: IndexReport, clock: StageClock
    ) -> tuple[list[dict[str, Any]], list[bytes], list[bytes | None]]:
        """Rows, embeddings and tokens of one batch, in input order; each content is embedded once, by its first copy.

        Copies seen in earlier batches of this run are found in the catalog: those batches are committed."""
        stored = self.catalog.embedding_by_hash(r.hash for r in batch if not isinstance(r, Failed))
        firsts: dict[str, Decoded] = {}
        for r in batch:
            if isinstance(r, Decoded) and r.hash not in stored:
                firsts.setdefault(r.hash, r)
        stored.update(self._embed_images(list(firsts.values()), clock))
        rows, blobs, tokens = [], [], []
        for i, r in enumerate(batch):
            if isinstance(r, Failed):
                continue
            if r.hash not in stored:  # a Known content vanished: only another writer could do that
                batch[i] = Failed(r.entry, "its content was indexed but its vector is gone — run the index again")
                continue
            content = stored[r.hash]
            if isinstance(r, Decoded):
                facts = facts_dict(r.facts)
                report.indexed += firsts.get(r.hash) is r
                report.reused += firsts.get(r.hash) is not r
            else:
                facts = {
                    "width": content.width,
                    "height": content.height,
                    "taken_at": content.taken_at,
                    "camera": content.camera,
                }
                report.reused += 1
                report.moved += r.hash in gone_hashes
            rows.append(_file_row(r.entry, r.hash, facts))
            blobs.append(content.embedding)
            tokens.append(content.tokens)
        return rows, blobs, tokens

    def _embed_images(self, decoded: list[Decoded], clock: StageClock) -> dict[str, StoredContent]:
        if not decoded:
            return {}
        t0 = time.perf_counter()
        vecs, tokens = self.encoder.encode_image_batch(stack_pixels([r.pixels for r in decoded]), tokens=True)
        clock.add("embed", time.perf_counter() - t0)
        if tokens is not None:
            self._record_format(backfill.image_format(self.encoder.fusion, tokens))
        out = {}
        for i, (r, v) in enumerate(zip(decoded, vecs)):
            f = facts_dict(r.facts)
            out[r.hash] = StoredContent(
                v.astype(self.dtype).tobytes(),
                f["width"],
                f["height"],
                f["taken_at"],
                f["camera"],
                None if tokens is None else pack(tokens[i]),
            )
        return out

    def _index_texts(self, todo: list[FileEntry], report: IndexReport, clock: StageClock) -> list[str]:
        failed: list[str] = []
        self.progress(0, len(todo))
        for done, entry in enumerate(todo, 1):
            t0 = time.perf_counter()
            try:
                lines = read_texts(entry.path, size=entry.size)
            except Exception as e:  # noqa: BLE001 - one bad file must never stop a run
                reason = str(e) if isinstance(e, ValueError) else f"unexpected {type(e).__name__}: {e}"
                report.skipped.append((entry.path, one_line(reason)))
                failed.append(entry.path)
                continue
            clock.add("read", time.perf_counter() - t0)
            if lines:
                self._write_texts(entry, lines, report, clock)
            else:  # nothing to index: recorded, so the next run sees the file unchanged
                with self.catalog.transaction():
                    self.catalog.remove_paths([entry.path])
                    self.catalog.mark_empty(entry.path, entry.size, entry.mtime_ns)
            self.progress(done, len(todo))
        return failed

    def _write_texts(
        self, entry: FileEntry, lines: list[tuple[int, str]], report: IndexReport, clock: StageClock
    ) -> None:
        hashes = [text_hash(t) for _, t in lines]
        stored = self.catalog.embedding_by_hash(hashes)
        new = sorted({t for (_, t), h in zip(lines, hashes) if h not in stored})
        t0 = time.perf_counter()
        for i in range(0, len(new), 1024):
            chunk = new[i : i + 1024]
            vecs, tokens = self.encoder.encode_text_batch(chunk, tokens=True)
            if tokens:
                self._record_format(backfill.text_format(self.encoder.fusion, tokens[0]))
            packed = [None] * len(chunk) if tokens is None else [pack(x) for x in tokens]
            stored.update(
                {
                    text_hash(t): StoredContent(v.astype(self.dtype).tobytes(), tokens=p)
                    for t, v, p in zip(chunk, vecs, packed)
                }
            )
        clock.add("embed", time.perf_counter() - t0)
        t0 = time.perf_counter()
        rows = [{**_file_row(entry, h, {}), "part": part, "text": text} for (part, text), h in zip(lines, hashes)]
        with self.catalog.transaction():  # the file's old lines and its new ones change together
            self.catalog.remove_paths([entry.path])
            self.catalog.add_items(rows, [stored[h].embedding for h in hashes], [stored[h].tokens for h in hashes])
        clock.add("write", time.perf_counter() - t0)
        report.indexed += len(new)
        report.reused += len(lines) - len(new)


def _unchanged(entry: FileEntry, state: Any) -> bool:
    return state is not None and state.size == entry.size and state.mtime_ns == entry.mtime_ns


def _file_row(entry: FileEntry, digest: str, facts: dict[str, Any]) -> dict[str, Any]:
    return {"path": entry.path, "size": entry.size, "mtime_ns": entry.mtime_ns, "hash": digest, **facts}
