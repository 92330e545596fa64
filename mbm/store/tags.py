"""Tags stored with the catalog's items: a label and a confidence in [0, 1] per (item, tag).

Tables from migration 004 (``mbm.store.migrations``): ``item_tags(item_id, tag, score)`` and
``tagged(item_id, vocabulary)``, which records that an item was tagged (possibly with no tag
above the cut-off) under which vocabulary. The vocabulary key changes when the model, the
tag source or the labels change, so every item is tagged again then; otherwise only items
that have no ``tagged`` row are. Triggers drop an item's tags when it is deleted or its
content changes. Writing tags never advances the catalog's generation: no vector changed.

Tags compare case-insensitively (``COLLATE NOCASE``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mbm.store.catalog import Catalog

VOCABULARY_KEY = "tags_vocabulary"  # meta: the key items were tagged under
LABELS_KEY = "tags_labels"  # meta: a vocabulary set with `mbm tags --vocabulary FILE` (JSON list)


class Tagged(NamedTuple):
    item_id: int
    hash: str  # the content that was tagged: stored only while the item still holds it
    tags: Sequence[tuple[str, float]]


def has_tags_tables(catalog: Catalog) -> bool:
    """False for a catalog from before migration 004 (opened read-only)."""
    row = catalog.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'item_tags'").fetchone()
    return row is not None


def untagged(catalog: Catalog, vocabulary: str) -> list[int]:
    """Ids of the items not tagged under ``vocabulary`` (new items, changed ones, or all after a change of it)."""
    if not has_tags_tables(catalog):
        return []
    sql = (
        "SELECT items.id FROM items LEFT JOIN tagged ON tagged.item_id = items.id "
        "WHERE tagged.item_id IS NULL OR tagged.vocabulary != ? ORDER BY items.id"
    )
    return [int(r[0]) for r in catalog.conn.execute(sql, (vocabulary,))]


def hashes_of(catalog: Catalog, ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    wanted = [int(i) for i in ids]
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        out.update(
            catalog.conn.execute(f"SELECT id, hash FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        )
    return out


def set_tags(catalog: Catalog, vocabulary: str, items: Sequence[Tagged]) -> int:
    """Replace the tags of ``items`` in one transaction, only where an item still holds the tagged content;
    returns how many items were stored."""
    stored = 0
    with catalog.transaction() as conn:
        for item in items:
            row = conn.execute("SELECT 1 FROM items WHERE id = ? AND hash = ?", (item.item_id, item.hash)).fetchone()
            if row is None:  # deleted or changed since its embedding was read: the next run tags it
                continue
            conn.execute("DELETE FROM item_tags WHERE item_id = ?", (item.item_id,))
            conn.executemany(
                "INSERT OR REPLACE INTO item_tags (item_id, tag, score) VALUES (?, ?, ?)",
                [(item.item_id, tag, round(float(score), 4)) for tag, score in item.tags],
            )
            conn.execute(
                "INSERT INTO tagged (item_id, vocabulary) VALUES (?, ?) "
                "ON CONFLICT(item_id) DO UPDATE SET vocabulary = excluded.vocabulary",
                (item.item_id, vocabulary),
            )
            stored += 1
    return stored


def tags_of(catalog: Catalog, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
    """Each item's tags, most confident first (items without tags are absent)."""
    if not has_tags_tables(catalog):
        return {}
    out: dict[int, list[tuple[str, float]]] = {}
    wanted = [int(i) for i in ids]
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        sql = (
            f"SELECT item_id, tag, score FROM item_tags WHERE item_id IN ({','.join('?' * len(chunk))}) "
            "ORDER BY item_id, score DESC, tag"
        )
        for item_id, tag, score in catalog.conn.execute(sql, chunk):
            out.setdefault(int(item_id), []).append((str(tag), float(score)))
    return out


def tagged_ids(catalog: Catalog, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that were tagged (with or without a tag above the cut-off)."""
    if not has_tags_tables(catalog):
        return set()
    out: set[int] = set()
    wanted = [int(i) for i in ids]
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        sql = f"SELECT item_id FROM tagged WHERE item_id IN ({','.join('?' * len(chunk))})"
        out.update(int(r[0]) for r in catalog.conn.execute(sql, chunk))
    return out


def ids_with_tag(catalog: Catalog, tag: str) -> np.ndarray:
    """Ids of the items carrying ``tag`` (any case), ascending."""
    return tag_ids(catalog.conn, tag)


def tag_ids(conn: sqlite3.Connection, tag: str) -> np.ndarray:
    """:func:`ids_with_tag` on a bare connection (an empty array for a catalog from before tags)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'item_tags'"
    if conn.execute(sql).fetchone() is None:
        return np.zeros(0, np.int64)
    rows = conn.execute("SELECT item_id FROM item_tags WHERE tag = ? ORDER BY item_id", (tag,))
    return np.fromiter((r[0] for r in rows), np.int64)


class TagCount(NamedTuple):
    tag: str
    items: int
    mean_score: float


def tag_counts(catalog: Catalog) -> list[TagCount]:
    """Every tag with how many items carry it, most common first."""
    if not has_tags_tables(catalog):
        return []
    sql = "SELECT tag, COUNT(*), AVG(score) FROM item_tags GROUP BY tag ORDER BY COUNT(*) DESC, tag"
    return [TagCount(str(t), int(n), round(float(s), 4)) for t, n, s in catalog.conn.execute(sql)]


def tagging_progress(catalog: Catalog, vocabulary: str | None) -> tuple[int, int]:
    """``(items tagged under vocabulary, items)``."""
    total = catalog.count()
    if not has_tags_tables(catalog) or vocabulary is None:
        return 0, total
    done = catalog.conn.execute("SELECT COUNT(*) FROM tagged WHERE vocabulary = ?", (vocabulary,)).fetchone()[0]
    return int(done), total
