"""Keyword and hybrid search over the items' own text, the ``--tag`` filter, and tags on hits.

Modes (``Engine.search(mode=...)``):
- ``vector``: the dual encoder's nearest neighbours (the default; ``Searcher.search``);
- ``keyword``: BM25 over the items' own text in SQLite FTS5 (``mbm.store.keywords``); no model is
  loaded; ``Hit.score`` is the BM25 relevance (``-bm25``: higher is better, not a cosine);
- ``hybrid``: reciprocal rank fusion of the two lists. Each list contributes its best
  ``max(CANDIDATES, k)`` items; an item's fused score is

      rrf(d) = sum over the lists L that hold d of 1 / (RRF_K + rank_L(d)),   rank from 1, RRF_K = 60

  (Cormack, Clarke & Buettcher, SIGIR 2009: k = 60 keeps a first place from dominating). Ties go to
  the better vector rank, then the lower id. ``Hit.score`` stays the cosine to the query (computed
  from the stored embedding for items only the keyword list found), so a hybrid hit reads like a
  vector hit; the order is the fused one.

``tag=`` keeps only items carrying that tag (case-insensitive; ``mbm.store.tags``), in every mode,
together with the folder/date/camera filter (``mbm.store.filters.ItemFilter``). Hits carry their tags (:class:`TaggedHit`, a :class:`Hit` with ``tags``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from mbm.errors import UsageError
from mbm.retrieval.query import QueryLike, as_query
from mbm.retrieval.searcher import Hit, Searcher, hit_from_row
from mbm.store.catalog import Catalog, read_snapshot
from mbm.store.filters import ItemFilter
from mbm.store.keywords import has_text_tables, keyword_search, query_words
from mbm.store.tags import tag_ids, tagged_ids, tags_of

MODES = ("vector", "keyword", "hybrid")
RRF_K = 60
CANDIDATES = 100


@dataclass(frozen=True)
class TaggedHit(Hit):
    """A hit with the item's tags, most confident first (``()`` when it has none; None: not tagged)."""

    tags: tuple[tuple[str, float], ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d["tags"] = None if self.tags is None else [{"tag": t, "score": s} for t, s in self.tags]
        return d


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"search mode {mode!r} is not known — use one of {', '.join(MODES)}")
    return mode


def keyword_text(query: QueryLike) -> str:
    """The words a keyword search looks for: the query's positive text terms."""
    q = as_query(query)
    texts = [str(t.value) for t in q if t.kind == "text" and t.weight > 0]
    if not texts or not query_words(" ".join(texts)):
        raise UsageError(
            f"query {str(q)!r} has no words to look up in the items' text — give text, or search with --mode vector"
        )
    return " ".join(texts)


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: ``(id, sum of 1/(k + rank))`` best first; ties to the earlier list's rank, then id."""
    scores: dict[int, float] = {}
    ranks: dict[int, list[int]] = {}
    for n, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(item, [len(r) + 1 for r in rankings])[n] = rank
    return sorted(scores.items(), key=lambda x: (-x[1], ranks[x[0]], x[0]))


@dataclass(frozen=True)
class TagFilter(ItemFilter):
    """An :class:`ItemFilter` that also requires a tag (any case): every search path that takes a filter
    (vector search with its sorts and cut-offs, keyword, hybrid) then honours ``--tag`` the same way."""

    tag: str | None = None

    def __bool__(self) -> bool:
        return self.tag is not None or super().__bool__()

    def ids(self, conn: sqlite3.Connection) -> np.ndarray:
        tagged = tag_ids(conn, self.tag) if self.tag is not None else None
        if not super().__bool__():
            return tagged if tagged is not None else super().ids(conn)
        base = super().ids(conn)
        return base if tagged is None else np.intersect1d(base, tagged)


def tag_filter(where: ItemFilter | None, tag: str | None) -> ItemFilter:
    """``where`` narrowed to items carrying ``tag`` (``where`` itself when ``tag`` is None)."""
    where = where or ItemFilter()
    if tag is None:
        return where
    if not tag.strip():
        raise UsageError("--tag is empty — give a tag (see `mbm tags` for the collection's tags)")
    return TagFilter(where.under, where.after, where.before, where.camera, tag.strip())


def hits_from(catalog: Catalog, scored: Sequence[tuple[int, float]]) -> list[Hit]:
    """Hits (as :class:`TaggedHit`, tags not read) for ``(id, score)`` in order; ids whose rows are gone are left out."""
    rows = catalog.rows([i for i, _ in scored])
    hits: list[Hit] = []
    for item_id, score in scored:
        row = rows.get(item_id)
        if row is not None:
            hits.append(hit_from_row(len(hits) + 1, score, row, TaggedHit))
    return hits


def _vector_ranking(
    searcher: Searcher, vector: np.ndarray, k: int, min_score: float | str | None, allowed: np.ndarray | None
) -> list[tuple[int, float]]:
    if allowed is not None and len(allowed) == 0:
        return []
    cutoff = searcher.cutoff(vector, min_score)  # a number, or "auto": the collection's background
    scores, ids = searcher.vectors.search(vector[None, :], k, allowed)
    return [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0 and (cutoff is None or s >= cutoff)]


def _cosines(catalog: Catalog, ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
    with read_snapshot(catalog):
        found, vecs = catalog.embeddings_of(list(ids))
    return {int(i): float(v @ vector) for i, v in zip(found, vecs)}


def search(
    searcher: Searcher,
    query: QueryLike,
    vector: np.ndarray | None,
    *,
    k: int,
    mode: str = "vector",
    min_score: float | str | None = None,
    where: ItemFilter | None = None,
) -> list[Hit]:
    """Top-``k`` hits in ``mode`` (``vector`` needs ``vector``; ``keyword`` ignores it) among the items ``where``
    allows (a :class:`TagFilter` for ``--tag``). Plain vector search goes through ``Searcher.search`` instead."""
    check_mode(mode)
    catalog = searcher.catalog
    allowed = where.ids(catalog.conn) if where else None
    if mode == "vector":
        assert vector is not None
        return hits_from(catalog, _vector_ranking(searcher, vector, k, min_score, allowed))
    if allowed is not None and len(allowed) == 0:
        return []
    if min_score is not None and mode == "keyword":
        raise UsageError("--min-score is a cosine and keyword search has none — leave it out, or use --mode hybrid")
    if not has_text_tables(catalog):
        raise UsageError(
            f"catalog {catalog.path} has no item text yet — run `mbm index PATH` once with this mbm to add it"
        )
    text = keyword_text(query)
    if mode == "keyword":
        return hits_from(catalog, keyword_search(catalog, text, k, allowed))
    assert vector is not None
    depth = max(CANDIDATES, k)
    by_vector = _vector_ranking(searcher, vector, depth, min_score, allowed)
    by_words = keyword_search(catalog, text, depth, allowed)
    fused = rrf([[i for i, _ in by_vector], [i for i, _ in by_words]])[:k]
    cosine = dict(by_vector)
    missing = [i for i, _ in fused if i not in cosine]
    if missing:
        cosine.update(_cosines(catalog, missing, vector))
    return hits_from(catalog, [(i, cosine.get(i, 0.0)) for i, _ in fused])


def with_tags(hits: Sequence[Hit], catalog: Catalog) -> list[Hit]:
    """The same hits as :class:`TaggedHit` carrying their stored tags (None where nothing is tagged yet)."""
    if not hits:
        return list(hits)
    found = tags_of(catalog, [h.id for h in hits])
    tagged = tagged_ids(catalog, [h.id for h in hits])
    names = [f.name for f in fields(Hit)]
    out: list[Hit] = []
    for h in hits:
        tags = tuple(found.get(h.id, ())) if h.id in tagged else None
        out.append(TaggedHit(**{n: getattr(h, n) for n in names}, tags=tags))
    return out
