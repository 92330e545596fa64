"""Back-fill of fusion tokens for items indexed without them (before tokens were stored).

Images are read and decoded again, exactly as the indexer decodes them (same thread pool, same
limits), and used only when their content hash still matches the stored one; texts need no file,
their stored text is enough. Each batch is committed on its own, so an interrupted back-fill keeps
what it did and the next run goes on with what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mbm.indexer.embed import (
    Decoded,
    Failed,
    StageClock,
    make_preparer,
    prepared_batches,
)
from mbm.indexer.scan import FileEntry, one_line
from mbm.store.catalog import Catalog
from mbm.store.tokens import Missing, TokenFormat, pack, record_format, set_tokens

TEXT_BATCH = 256


@dataclass
class FillResult:
    filled: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def image_format(fusion: Any, tokens: Any) -> TokenFormat:
    return TokenFormat("image", int(tokens.shape[1]), int(tokens.shape[2]))


def text_format(fusion: Any, tokens: Any) -> TokenFormat:
    return TokenFormat("text", int(fusion.cfg.max_text_tokens), int(tokens.shape[-1]))


def fill_images(
    encoder: Any,
    catalog: Catalog,
    items: Sequence[Missing],
    *,
    batch_size: int,
    workers: int,
    max_pixels: int,
    clock: StageClock,
    progress: Callable[[int, int], None],
) -> FillResult:
    result = FillResult()
    prepare = make_preparer(encoder.preprocess, encoder.image_size, frozenset(), max_pixels, clock)
    by_path = {m.path: m for m in items}
    entries = [FileEntry(m.path, m.size, m.mtime_ns) for m in items]
    done = 0
    progress(0, len(entries))
    for batch in prepared_batches(entries, prepare, batch_size, workers):
        usable = []
        for r in batch:
            stored = by_path[r.entry.path]
            if isinstance(r, Failed):
                result.skipped.append((r.entry.path, one_line(r.reason)))
            elif isinstance(r, Decoded) and r.hash != stored.hash:
                result.skipped.append(
                    (r.entry.path, "its content changed since it was indexed — run `mbm index` on it again")
                )
            elif isinstance(r, Decoded):
                usable.append(r)
        if usable:
            import torch

            t0 = time.perf_counter()
            _, tokens = encoder.encode_image_batch(torch.stack([r.pixels for r in usable]), tokens=True)
            clock.add("tokens", time.perf_counter() - t0)
            record_format(catalog, image_format(encoder.fusion, tokens))
            t0 = time.perf_counter()
            rows = [(by_path[r.entry.path].id, r.hash, pack(t)) for r, t in zip(usable, tokens)]
            result.filled += set_tokens(catalog, rows)
            clock.add("write", time.perf_counter() - t0)
        done += len(batch)
        progress(done, len(entries))
    return result


def fill_texts(
    encoder: Any, catalog: Catalog, items: Sequence[Missing], *, clock: StageClock, progress: Callable[[int, int], None]
) -> FillResult:
    result = FillResult()
    progress(0, len(items))
    for i in range(0, len(items), TEXT_BATCH):
        chunk = items[i : i + TEXT_BATCH]
        t0 = time.perf_counter()
        _, tokens = encoder.encode_text_batch([m.text or "" for m in chunk], tokens=True)
        clock.add("tokens", time.perf_counter() - t0)
        record_format(catalog, text_format(encoder.fusion, tokens[0]))
        t0 = time.perf_counter()
        result.filled += set_tokens(catalog, [(m.id, m.hash, pack(t)) for m, t in zip(chunk, tokens)])
        clock.add("write", time.perf_counter() - t0)
        progress(i + len(chunk), len(items))
    return result
