"""SELECTs over a list of item ids, run 500 ids a statement (SQLite limits the parameters of one)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

CHUNK = 500  # well under SQLITE_MAX_VARIABLE_NUMBER, which is 999 in SQLite builds before 3.32


def rows_by_ids(conn: sqlite3.Connection, sql: str, ids: Sequence[int]) -> Iterator[Any]:
    """The rows ``sql`` gives for ``ids``; ``{ids}`` in ``sql`` stands for their placeholders
    (``... WHERE id IN ({ids})``)."""
    wanted = [int(i) for i in ids]
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        yield from conn.execute(sql.format(ids=",".join("?" * len(chunk))), chunk)
