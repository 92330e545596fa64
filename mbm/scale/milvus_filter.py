"""Milvus filter expressions for "only these item ids", each small enough for one request.

Ids come from catalog filters (``--in FOLDER``, dates, tags): a folder's items are mostly consecutive
ids, so runs become ranges (``(id >= 10 and id <= 900)``) and the rest ``id in [...]`` lists.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MAX_EXPR_CHARS = 60_000  # well under Milvus's request limits, and parsed quickly
MIN_RUN = 4  # consecutive ids from which a range is shorter than the list


def id_runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` of each run of consecutive ids in a sorted unique array."""
    if len(ids) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(ids) - 1]])
    return [(int(ids[s]), int(ids[e])) for s, e in zip(starts, ends)]


def id_filters(ids: np.ndarray, max_chars: int = MAX_EXPR_CHARS) -> Iterator[tuple[str, int]]:
    """``(expression, ids it allows)`` chunks that together allow exactly ``ids`` (sorted, unique)."""
    terms: list[str] = []
    singles: list[str] = []
    n = size = 0
    for first, last in id_runs(ids):
        if last - first + 1 >= MIN_RUN:
            term = f"(id >= {first} and id <= {last})"
            terms.append(term)
        else:
            term = ",".join(str(i) for i in range(first, last + 1))
            singles.append(term)
        size += len(term) + 5
        n += last - first + 1
        if size >= max_chars:
            yield _expression(terms, singles), n
            terms, singles, n, size = [], [], 0, 0
    if terms or singles:
        yield _expression(terms, singles), n


def _expression(ranges: list[str], singles: list[str]) -> str:
    parts = list(ranges)
    if singles:
        parts.append(f"id in [{','.join(singles)}]")
    return " or ".join(parts)
