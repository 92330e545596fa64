"""Near-duplicate items: groups whose stored embeddings are almost the same picture.

Every pair with cosine >= ``threshold`` is found by an exact FAISS range search over the
catalog's embeddings (``IndexFlatIP.range_search``, queries in chunks so memory stays
bounded); the pairs are joined into connected components by union-find. Exact search,
not the collection's ANN index: a missed pair would split a group, and range search is
what flat indexes do well (100k x 384 is about 4 TFLOP, ~20 s on two cores).

Groups come largest first. Each names a suggested keeper: the largest resolution, then the
oldest (EXIF date taken, else the file's mtime), then the shortest path; the keeper is
listed first and every other item carries its cosine to the keeper.

The default threshold comes from ``benchmarks/duplicates_threshold.py`` (re-encoded,
resized, cropped and EXIF-rotated copies against different photos of the same kind of
subject, with the bundled model): see ``benchmarks/results/duplicates_threshold.json``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from mbm.errors import UsageError
from mbm.indexer.scan import display_path
from mbm.store.catalog import Catalog, read_snapshot

DEFAULT_THRESHOLD = 0.915  # measured: benchmarks/results/duplicates_threshold.json
QUERY_CHUNK = 4096


@dataclass(frozen=True)
class DuplicateItem:
    id: int
    path: str
    size: int | None
    width: int | None
    height: int | None
    taken_at: str | None
    modified: str | None
    similarity: float  # cosine to the group's keeper (1.0 for the keeper itself)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": display_path(self.path)}


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-identical items, the suggested keeper first."""

    items: tuple[DuplicateItem, ...]
    min_similarity: float  # the weakest link inside the group (connected components may chain)

    @property
    def keeper(self) -> DuplicateItem:
        return self.items[0]

    @property
    def reclaimable_bytes(self) -> int:
        return sum(i.size or 0 for i in self.items[1:])

    def as_dict(self) -> dict[str, Any]:
        return {
            "keeper": self.keeper.as_dict()["path"],
            "count": len(self.items),
            "min_similarity": round(self.min_similarity, 6),
            "reclaimable_bytes": self.reclaimable_bytes,
            "items": [i.as_dict() for i in self.items],
        }


def check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 < threshold <= 1.0):
        raise UsageError(
            f"duplicate threshold {threshold!r} is not a cosine in (0, 1] — give e.g. {DEFAULT_THRESHOLD} "
            "(higher: only closer copies)"
        )
    return float(threshold)


def similar_pairs(
    vectors: np.ndarray, threshold: float, chunk: int = QUERY_CHUNK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, cosine)`` for every pair of rows ``i < j`` of normalized ``vectors`` with cosine >= threshold."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    # float16 storage and renormalization move an identical copy's cosine to 1 - ~1e-4
    radius = float(threshold) - 1e-5
    firsts, seconds, sims = [], [], []
    for start in range(0, n, chunk):
        lims, dist, found = index.range_search(vectors[start : start + chunk], radius)
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims))
        keep = found > rows  # each pair once, no self-pairs
        firsts.append(rows[keep])
        seconds.append(found[keep])
        sims.append(dist[keep])
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims)


def components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """A component label per node ``0..n-1`` (union-find with path halving)."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for a, b in zip(first.tolist(), second.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)], np.int64)


def _modified(row: dict[str, Any]) -> str | None:
    if not row.get("mtime_ns"):
        return None
    return dt.datetime.fromtimestamp(row["mtime_ns"] / 1e9, dt.timezone.utc).isoformat(timespec="seconds")


def keeper_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key that puts the suggested keeper first: most pixels, then oldest, then shortest path."""
    pixels = (row.get("width") or 0) * (row.get("height") or 0)
    when = row.get("taken_at") or _modified(row) or "9999"
    return (-pixels, when, len(row["path"]), row["path"])


def find_duplicates(catalog: Catalog, threshold: float = DEFAULT_THRESHOLD) -> list[DuplicateGroup]:
    """Groups of near-identical items in ``catalog`` (cosine >= ``threshold`` links two items), largest first."""
    threshold = check_threshold(threshold)
    with read_snapshot(catalog):
        parts = list(catalog.read_embeddings())
    if not parts:
        return []
    ids = np.concatenate([p[0] for p in parts])
    vecs = np.concatenate([p[1] for p in parts])
    first, second, sims = similar_pairs(vecs, threshold)
    if not len(first):
        return []
    labels = components(len(ids), first, second)
    weakest: dict[int, float] = {}
    for a, s in zip(labels[first].tolist(), sims.tolist()):
        weakest[a] = min(weakest.get(a, 1.0), s)
    members: dict[int, list[int]] = {}
    for node in np.unique(np.concatenate([first, second])).tolist():
        members.setdefault(int(labels[node]), []).append(node)
    rows = catalog.rows([int(ids[i]) for nodes in members.values() for i in nodes])
    groups = [
        _group([i for i in nodes if int(ids[i]) in rows], ids, vecs, rows, weakest[label])
        for label, nodes in members.items()
    ]
    groups = [g for g in groups if len(g.items) > 1]
    groups.sort(key=lambda g: (-len(g.items), -g.reclaimable_bytes, g.keeper.path))
    return groups


def _group(
    nodes: Sequence[int], ids: np.ndarray, vecs: np.ndarray, rows: dict[int, dict[str, Any]], weakest: float
) -> DuplicateGroup:
    ordered = sorted(nodes, key=lambda i: keeper_key(rows[int(ids[i])]))
    keeper_vec = vecs[ordered[0]]
    items = []
    for i in ordered:
        row = rows[int(ids[i])]
        items.append(
            DuplicateItem(
                int(ids[i]),
                row["path"],
                row.get("size"),
                row.get("width"),
                row.get("height"),
                row.get("taken_at"),
                _modified(row),
                round(min(1.0, float(vecs[i] @ keeper_vec)), 6),
            )
        )
    return DuplicateGroup(tuple(items), float(weakest))
