"""Each item's own words in SQLite FTS5: file and folder names, sidecar captions, XMP/IPTC keywords.

Tables from migration 004 (``mbm.store.migrations``): the FTS5 table ``item_text(names, caption,
keywords)`` whose rowid is the item id (tokenizer ``porter unicode61 remove_diacritics 2``:
"Beaches" finds "beach", "café" finds "cafe"), and ``item_text_state(item_id, signature)``,
which says from what the text was made (content hash, path, sidecar files' sizes and times),
so a re-run reads only what changed. Triggers drop both when an item is deleted or its content
changes. Writing item text never advances the catalog's generation: no vector changed.

A query is split into words, English function words ("a", "of", "the") dropped; each word is
quoted (no FTS5 syntax reaches the engine) and the words are OR-ed, ranked by BM25, so items
matching more, and rarer, words come first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from mbm.store.by_ids import rows_by_ids
from mbm.store.catalog import Catalog

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32
# English function words: in an OR query they match nearly every caption and only add noise
STOP_WORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or that the this to was were
    with without into onto over under near up down out off than then there their these those who
    what where which while very some any all each few more most other such no not only own same so
    too can will just""".split()
)
# BM25 weights of the columns: names, caption, keywords (keywords are chosen by a person: worth more)
COLUMN_WEIGHTS = (1.0, 1.0, 2.0)


class ItemText(NamedTuple):
    names: str
    caption: str
    keywords: str


class TextRow(NamedTuple):
    item_id: int
    hash: str  # the content the text belongs to: stored only while the item still holds it
    signature: str
    text: ItemText


def has_text_tables(catalog: Catalog) -> bool:
    """False for a catalog from before migration 004 (opened read-only)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'item_text_state'"
    return catalog.conn.execute(sql).fetchone() is not None


def signatures(catalog: Catalog, ids: Sequence[int]) -> dict[int, str]:
    sql = "SELECT item_id, signature FROM item_text_state WHERE item_id IN ({ids})"
    return dict(rows_by_ids(catalog.conn, sql, ids))


def set_texts(catalog: Catalog, rows: Sequence[TextRow]) -> int:
    """Replace the text of ``rows`` in one transaction where each item still holds that content."""
    stored = 0
    with catalog.transaction() as conn:
        for r in rows:
            if conn.execute("SELECT 1 FROM items WHERE id = ? AND hash = ?", (r.item_id, r.hash)).fetchone() is None:
                continue
            conn.execute("DELETE FROM item_text WHERE rowid = ?", (r.item_id,))
            conn.execute(
                "INSERT INTO item_text (rowid, names, caption, keywords) VALUES (?, ?, ?, ?)", (r.item_id, *r.text)
            )
            conn.execute(
                "INSERT INTO item_text_state (item_id, signature) VALUES (?, ?) "
                "ON CONFLICT(item_id) DO UPDATE SET signature = excluded.signature",
                (r.item_id, r.signature),
            )
            stored += 1
    return stored


def texts_of(catalog: Catalog, ids: Sequence[int]) -> dict[int, ItemText]:
    if not has_text_tables(catalog):
        return {}
    sql = "SELECT rowid, names, caption, keywords FROM item_text WHERE rowid IN ({ids})"
    return {int(rowid): ItemText(*text) for rowid, *text in rows_by_ids(catalog.conn, sql, ids)}


def query_words(text: str) -> list[str]:
    """The words of a query, lower-cased, each once, in order; English function words are left out unless
    the query holds nothing else."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    content = [w for w in words if w not in STOP_WORDS]
    return (content or words)[:MAX_QUERY_WORDS]


def match_expression(words: Iterable[str]) -> str:
    """An FTS5 MATCH expression OR-ing the quoted words (no operator or column filter can be injected)."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def keyword_search(catalog: Catalog, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """``(item id, score)`` of the best ``k`` items for ``text`` by BM25 (score = -bm25: higher is better),
    restricted to ``allowed`` ids when given."""
    words = query_words(text)
    if not words or not has_text_tables(catalog) or k <= 0:
        return []
    weights = ", ".join(str(w) for w in COLUMN_WEIGHTS)
    sql = f"SELECT rowid, bm25(item_text, {weights}) AS r FROM item_text WHERE item_text MATCH ? ORDER BY r, rowid" + (
        "" if allowed is not None else " LIMIT ?"
    )
    args: tuple = (match_expression(words),) if allowed is not None else (match_expression(words), int(k))
    rows = catalog.conn.execute(sql, args)
    if allowed is None:
        return [(int(i), -float(r)) for i, r in rows]
    keep = set(np.asarray(allowed, np.int64).tolist())
    out = []
    for i, r in rows:
        if int(i) in keep:
            out.append((int(i), -float(r)))
            if len(out) >= k:
                break
    return out


def ids_at(catalog: Catalog, path: str) -> list[int]:
    """Ids of the items of one file (a text file has one per line)."""
    return [int(r[0]) for r in catalog.conn.execute("SELECT id FROM items WHERE path = ?", (path,))]
