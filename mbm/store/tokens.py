"""Fusion tokens stored with the catalog's items: what re-ranking reads instead of the image files.

An item's ``tokens`` blob holds the fusion head's own projected tokens (``FusionModel.project_image`` /
``project_text``), float16, row-major: an image ``G x width`` (the bundled model: 9 x 128 = 2,304 bytes),
a text only its real tokens, ``n x width`` (n at most the head's ``max_text_tokens``). NULL means not
computed (an item indexed before tokens were stored, or with a model that has no fusion head).

The catalog's meta records the format under ``tokens`` (JSON: kind, tokens per item, width, dtype) and,
under ``fusion``, whether the collection's model has a fusion head ("1"/"0", written when an index run
loads the model), so a run with nothing to do never loads the model just to find out.
Writing tokens never advances the catalog's generation: the vectors did not change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from mbm.errors import CatalogError
from mbm.store.by_ids import rows_by_ids
from mbm.store.catalog import Catalog

FORMAT_KEY = "tokens"
FUSION_KEY = "fusion"


@dataclass(frozen=True)
class TokenFormat:
    """How the tokens of one collection are laid out. ``per_item``: tokens per image; for texts the most a
    text keeps (0: as many as its tokenizer gives)."""

    kind: str  # "image" or "text"
    per_item: int
    width: int
    dtype: str = "float16"

    @property
    def row_bytes(self) -> int:
        return self.width * np.dtype(self.dtype).itemsize

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def of_meta(cls, meta: dict[str, str]) -> TokenFormat | None:
        raw = meta.get(FORMAT_KEY)
        return cls(**json.loads(raw)) if raw else None


def pack(tokens: np.ndarray) -> bytes:
    return np.ascontiguousarray(tokens, np.float16).tobytes()


def unpack_images(blobs: Sequence[bytes], fmt: TokenFormat) -> np.ndarray:
    """``(N, G, width)`` float16 from image blobs."""
    return np.frombuffer(bytearray(b"".join(blobs)), fmt.dtype).reshape(len(blobs), fmt.per_item, fmt.width)


def unpack_texts(blobs: Sequence[bytes], fmt: TokenFormat) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens (N, T, width) float16, mask (N, T) bool)`` from text blobs of varying length, zero-padded."""
    counts = [len(b) // fmt.row_bytes for b in blobs]
    out = np.zeros((len(blobs), max([1, *counts]), fmt.width), fmt.dtype)
    mask = np.zeros(out.shape[:2], bool)
    for i, (blob, n) in enumerate(zip(blobs, counts)):
        out[i, :n] = np.frombuffer(blob, fmt.dtype).reshape(n, fmt.width)
        mask[i, :n] = True
    return out, mask


def record_format(catalog: Catalog, fmt: TokenFormat) -> None:
    """Record the collection's token format (once; the model's fingerprint keeps it fixed afterwards)."""
    stored = TokenFormat.of_meta(catalog.meta())
    if stored is None:
        catalog.set_meta(**{FORMAT_KEY: fmt.to_json()})
    elif stored != fmt:
        raise CatalogError(
            f"catalog {catalog.path} holds fusion tokens of format {stored}, the model gives {fmt} — "
            "re-index into a new --collection"
        )


def record_fusion(catalog: Catalog, encoder: Any) -> None:
    """Record whether the collection's model has a fusion head (when it changed, or was not known)."""
    value = "1" if encoder.fusion is not None else "0"
    if catalog.meta().get(FUSION_KEY) != value:
        catalog.set_meta(**{FUSION_KEY: value})


def tokens_of(catalog: Catalog, ids: Sequence[int]) -> dict[int, bytes]:
    """Stored tokens of those of ``ids`` that have them."""
    if not catalog.has_tokens:
        return {}
    sql = "SELECT id, tokens FROM items WHERE id IN ({ids}) AND tokens IS NOT NULL"
    return dict(rows_by_ids(catalog.conn, sql, ids))


class Missing(NamedTuple):
    """An item without tokens: what filling them needs (the file, or the stored text)."""

    id: int
    path: str
    hash: str
    text: str | None
    size: int
    mtime_ns: int


UNFILLABLE_KEY = "tokens_unfillable"  # meta: {item id: [size, mtime_ns]} whose file a back-fill could not use


def unfillable(catalog: Catalog) -> dict[int, tuple[int, int]]:
    """Items a back-fill could not give tokens, with the file's (size, mtime_ns) when it tried."""
    import json

    try:
        recorded = json.loads(catalog.meta().get(UNFILLABLE_KEY) or "{}")
        return {int(k): (int(v[0]), int(v[1])) for k, v in recorded.items()}
    except (ValueError, TypeError, IndexError):
        return {}  # unreadable: forget it, the next back-fill tries every item again


def record_unfillable(catalog: Catalog, failed: Sequence[Missing]) -> None:
    """Remember ``failed`` (items whose file could not be used) beside those still lacking tokens from before, so
    an automatic back-fill does not read them again while their files stay as they were."""
    import json

    still = {m.id for m in missing(catalog)}
    kept = {i: stat for i, stat in unfillable(catalog).items() if i in still}
    kept.update({m.id: (m.size, m.mtime_ns) for m in failed if m.id in still})
    value = json.dumps({str(i): list(stat) for i, stat in sorted(kept.items())}) if kept else ""
    if catalog.meta().get(UNFILLABLE_KEY, "") != value:
        catalog.set_meta(**{UNFILLABLE_KEY: value})


def missing(catalog: Catalog) -> list[Missing]:
    """Every item without tokens, in id order (read through the partial index: cheap when there are none)."""
    sql = "SELECT id, path, hash, text, size, mtime_ns FROM items WHERE tokens IS NULL ORDER BY id"
    return [Missing(*r) for r in catalog.conn.execute(sql)]


def set_tokens(catalog: Catalog, items: Sequence[tuple[int, str, bytes]]) -> int:
    """Store ``(id, hash, tokens)`` in one transaction, only where the item still holds that content;
    returns how many were stored. The generation stays: no vector changed."""
    with catalog.transaction() as conn:
        before = conn.total_changes
        conn.executemany("UPDATE items SET tokens = ? WHERE id = ? AND hash = ?", [(t, int(i), h) for i, h, t in items])
        return conn.total_changes - before


@dataclass(frozen=True)
class TokenStats:
    items_with: int
    items_without: int
    total_bytes: int

    @property
    def bytes_per_item(self) -> int:
        return round(self.total_bytes / self.items_with) if self.items_with else 0


def token_stats(catalog: Catalog) -> TokenStats:
    if not catalog.has_tokens:
        return TokenStats(0, catalog.count(), 0)
    with_, total = catalog.conn.execute("SELECT COUNT(tokens), COALESCE(SUM(length(tokens)), 0) FROM items").fetchone()
    without = catalog.conn.execute("SELECT COUNT(*) FROM items WHERE tokens IS NULL").fetchone()[0]
    return TokenStats(int(with_), int(without), int(total))


def bad_tokens(catalog: Catalog) -> list[int]:
    """Ids whose token blob cannot hold the collection's format (wrong length): re-ranking would misread them."""
    fmt = TokenFormat.of_meta(catalog.meta())
    if fmt is None or not catalog.has_tokens:
        return []
    row = fmt.row_bytes
    args: tuple[int, ...]
    if fmt.kind == "image":
        sql, args = "SELECT id FROM items WHERE tokens IS NOT NULL AND length(tokens) != ?", (fmt.per_item * row,)
    else:  # a text keeps 1..per_item whole rows (any number when per_item is 0)
        most = fmt.per_item * row if fmt.per_item else 1 << 62
        sql = "SELECT id FROM items WHERE tokens IS NOT NULL AND (length(tokens) % ? != 0 OR length(tokens) = 0 OR length(tokens) > ?)"
        args = (row, most)
    return [int(r[0]) for r in catalog.conn.execute(sql, args)]


def clear_tokens(catalog: Catalog, ids: Sequence[int]) -> None:
    """Forget the tokens of ``ids``: the next index run of their folder computes them again."""
    with catalog.transaction() as conn:
        conn.executemany("UPDATE items SET tokens = NULL WHERE id = ?", [(int(i),) for i in ids])
