"""The catalog's SQLite connections: read-write in WAL mode for index runs, read-only for searches,
explicit transactions, and SQLite's errors turned into messages that name the fix."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mbm.errors import CatalogError

BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another writer (a backup, a checkpoint) before failing


def classify_error(path: Path, e: sqlite3.Error, *, readonly: bool) -> CatalogError:
    """Tell "locked by another process", "read-only" and "corrupt" apart, each with its fix."""
    msg = str(e).lower()
    if "locked" in msg or "busy" in msg:
        return CatalogError(
            f"catalog {path} is locked by another process (an index run or a backup?) — "
            "wait for it to finish, then run the command again"
        )
    if "readonly" in msg or "read-only" in msg or (not readonly and not os.access(path.parent, os.W_OK)):
        return CatalogError(
            f"catalog {path} is on a read-only file system or folder — searching and `mbm info` "
            "work there; to index, make the store writable or use another --store"
        )
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg or "corrupt" in msg):
        return CatalogError(
            f"catalog {path} is damaged ({e}) — restore it from a backup, or index into a new "
            "--collection; `mbm check` reports what can still be read"
        )
    return CatalogError(f"catalog {path} cannot be opened ({e}) — check the file's permissions and free disk space")


def connect(path: Path) -> sqlite3.Connection:
    """A read-write connection in WAL mode; transactions are explicit (:class:`Transaction`).
    Raises ``sqlite3.Error``: the caller classifies it together with its migration."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process kills
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that takes no write lock; CatalogError when the file cannot be read."""
    uri = "file:" + quote(str(path.absolute()))
    last: sqlite3.Error | None = None
    # mode=ro shares the WAL with writers; on a read-only mount (no -shm can be made) the
    # file is opened immutable, which is right there since nothing can change it
    for suffix in ("?mode=ro", "?mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(
                uri + suffix,
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as e:
            last = e
            if "not a database" in str(e).lower() or "malformed" in str(e).lower():
                break
            continue
        return conn
    assert last is not None
    raise classify_error(path, last, readonly=True) from last


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, nesting-safe (inner blocks join the outer one)."""

    def __init__(self, conn: sqlite3.Connection, immediate: bool = True, path: Path | None = None):
        self.conn = conn
        self.immediate = immediate
        self.owner = False
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            try:
                self.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
            except sqlite3.OperationalError as e:
                raise classify_error(self.path or Path("catalog"), e, readonly=False) from e
            self.owner = True
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> None:
        if not self.owner:
            return
        if exc_type:
            self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and self.path is not None:
                raise classify_error(self.path, exc, readonly=False) from exc
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self.conn.execute("ROLLBACK")
            raise classify_error(self.path or Path("catalog"), e, readonly=False) from e
