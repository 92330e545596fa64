"""Which items a search may return: folders, capture dates, camera. One SQL query on the catalog gives
the ids, and the vector search looks only among them, so ``-k 10`` returns 10 hits whenever 10 match.

An item's date is its EXIF capture time (``taken_at``, camera-local, as the camera wrote it) and,
for files without one, the file's modification time in this machine's local time. A date bound
names the start of a period: ``2024``, ``2024-06``, ``2024-06-15``, ``2024-06-15T14:30``.
``after`` keeps items from that instant on, ``before`` items strictly before it, so
``after="2024-06", before="2024-07"`` is June 2024.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from mbm.errors import UsageError

# the date an item sorts and filters by; the same text form as taken_at (ISO 8601, no zone)
WHEN_SQL = (
    "COALESCE(taken_at, CASE WHEN mtime_ns IS NOT NULL THEN "
    "strftime('%Y-%m-%dT%H:%M:%S', mtime_ns / 1000000000, 'unixepoch', 'localtime') END)"
)

_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?)?)?$")


def parse_when(text: str, option: str = "--after") -> str:
    """The ISO start of the period ``text`` names (``2024``, ``2024-06``, ``2024-06-15``, ``2024-06-15T14:30``);
    a UsageError naming the option and the accepted forms otherwise."""
    m = _PERIOD.match(text.strip())
    parts = [int(g) if g else None for g in m.groups()] if m else []
    try:
        if not m:
            raise ValueError
        year, month, day, hour, minute, second = parts
        start = datetime(year or 1, month or 1, day or 1, hour or 0, minute or 0, second or 0)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a date — give YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM "
            "(e.g. 2024-06 or 2024-06-15)"
        ) from None
    return start.isoformat()


@dataclass(frozen=True)
class ItemFilter:
    """Conditions an item must meet (all of them); folders in ``under`` are alternatives (any of them)."""

    under: tuple[str, ...] = ()  # absolute folders (or files) the item's path lies in
    after: str | None = None  # ISO start: items dated at or after it
    before: str | None = None  # ISO start: items dated strictly before it
    camera: str | None = None  # case-insensitive part of the camera name ("pixel", "Canon EOS")

    @classmethod
    def of(
        cls,
        under: str | Sequence[str] | None = None,
        after: str | None = None,
        before: str | None = None,
        camera: str | None = None,
    ) -> ItemFilter:
        """From what a user gives: paths (relative, ``~``) and date texts, checked and normalized."""
        folders = [under] if isinstance(under, str) else list(under or [])
        start = parse_when(after, "--after") if after else None
        end = parse_when(before, "--before") if before else None
        if start and end and start >= end:
            raise UsageError(f"--after {after} is not earlier than --before {before} — nothing could match")
        if camera is not None and not camera.strip():
            raise UsageError("--camera is empty — give part of a camera name, e.g. --camera pixel")
        paths = tuple(os.path.abspath(os.path.expanduser(p)) for p in folders)
        return cls(paths, start, end, camera.strip() if camera else None)

    def __bool__(self) -> bool:
        return bool(self.under or self.after or self.before or self.camera)

    def sql(self) -> tuple[str, list[str]]:
        """``(WHERE clause, parameters)`` over the items table."""
        where: list[str] = []
        params: list[str] = []
        if self.under:
            alternatives = []
            for path in self.under:
                prefix = path.rstrip("/") + "/"
                # a range on the (path, part) index instead of LIKE, which would scan every row
                alternatives.append("(path = ? OR (path >= ? AND path < ?))")
                params += [path, prefix, prefix[:-1] + "0"]
            where.append("(" + " OR ".join(alternatives) + ")")
        if self.after:
            where.append(f"{WHEN_SQL} >= ?")
            params.append(self.after)
        if self.before:
            where.append(f"{WHEN_SQL} < ?")
            params.append(self.before)
        if self.camera:
            where.append("instr(lower(camera), lower(?)) > 0")
            params.append(self.camera)
        return " AND ".join(where) or "1", params

    def ids(self, conn: sqlite3.Connection) -> np.ndarray:
        """The ids of the catalog's items that pass (int64, ascending)."""
        clause, params = self.sql()
        rows = conn.execute(f"SELECT id FROM items WHERE {clause} ORDER BY id", params)
        return np.fromiter((r[0] for r in rows), np.int64)


def item_when(taken_at: str | None, mtime_ns: int | None) -> str | None:
    """The date an item sorts by, in :data:`WHEN_SQL`'s form (for rows already read)."""
    if taken_at:
        return taken_at
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9).replace(microsecond=0).isoformat()
