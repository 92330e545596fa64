"""The catalog: one SQLite file per collection, the source of truth.

Every item row carries its embedding, written in the same transaction, so a crash
never leaves a vector without its row or the reverse. ``generation`` in ``meta``
grows with every write; the FAISS file records the generation it was built from.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from mbm.errors import CatalogError

ITEM_COLUMNS = ("id", "path", "part", "text", "size", "mtime_ns", "hash", "width", "height", "taken_at", "camera", "indexed_at")


def _m001_initial(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["items"].create(
        {
            "id": int, "path": str, "part": int, "text": str, "size": int, "mtime_ns": int, "hash": str,
            "width": int, "height": int, "taken_at": str, "camera": str, "indexed_at": str, "embedding": bytes,
        },
        pk="id",
        not_null={"path", "part", "hash", "embedding"},
        defaults={"part": 0},
    )
    db["items"].create_index(["path", "part"], unique=True)
    db["items"].create_index(["hash"])


# Append-only: a released migration never changes; a schema change is a new entry.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [("001_initial", _m001_initial)]


@dataclass(frozen=True)
class FileState:
    """What the catalog knows about one file: enough to tell unchanged from changed."""

    size: int
    mtime_ns: int
    hash: str
    ids: tuple[int, ...]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Catalog:
    """Items, their embeddings and the collection's metadata in one SQLite file (WAL mode)."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn
        self.db = sqlite_utils.Database(conn)

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> Catalog:
        if not create and not path.is_file():
            raise CatalogError(f"no catalog at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process kills
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"catalog {path} cannot be opened ({e}) — move it away and re-index") from e
        catalog = cls(path, conn)
        catalog._migrate()
        return catalog

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        with self.transaction():
            self.conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            done = {row[0] for row in self.conn.execute("SELECT name FROM _migrations")}
            known = {name for name, _ in MIGRATIONS}
            if done - known:
                raise CatalogError(
                    f"catalog {self.path} was written by a newer mbm (migrations {sorted(done - known)}) — upgrade mbm"
                )
            for name, step in MIGRATIONS:
                if name not in done:
                    step(self.db)
                    self.conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _now()))

    def transaction(self) -> "_Transaction":
        return _Transaction(self.conn)

    # -- metadata ---------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return {k: v for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self._set_meta(values)

    def _set_meta(self, values: dict[str, Any]) -> None:
        self.conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _bump(self) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    # -- reads ------------------------------------------------------------------------------
    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def file_states(self) -> dict[str, FileState]:
        """Every indexed file (a text file has one row per line) keyed by path."""
        states: dict[str, FileState] = {}
        for path, size, mtime, hash_, ids in self.conn.execute(
            "SELECT path, size, mtime_ns, MIN(hash), GROUP_CONCAT(id) FROM items GROUP BY path"
        ):
            states[path] = FileState(size, mtime, hash_, tuple(int(i) for i in ids.split(",")))
        return states

    def embedding_by_hash(self, hashes: Iterable[str]) -> dict[str, tuple[bytes, int | None, int | None, str | None, str | None]]:
        """Stored embedding (and image facts) for each known content hash, to reuse on move/copy."""
        found: dict[str, tuple[bytes, int | None, int | None, str | None, str | None]] = {}
        wanted = list(dict.fromkeys(hashes))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            sql = f"SELECT hash, embedding, width, height, taken_at, camera FROM items WHERE hash IN ({','.join('?' * len(chunk))})"
            for h, emb, w, hgt, taken, cam in self.conn.execute(sql, chunk):
                found.setdefault(h, (emb, w, hgt, taken, cam))
        return found

    def known_hashes(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT DISTINCT hash FROM items")}

    def read_embeddings(self, batch: int = 20000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids int64, vectors float32)`` chunks in id order (call inside a read transaction)."""
        dtype = np.dtype(self.meta().get("dtype", "float16"))
        cur = self.conn.execute("SELECT id, embedding FROM items ORDER BY id")
        while rows := cur.fetchmany(batch):
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype).reshape(len(rows), -1).astype(np.float32)
            # float16 storage moves norms by ~1e-4: renormalize so an identical image scores 1.0
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            yield ids, vecs

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            chunk = [int(x) for x in ids[i : i + 500]]
            sql = f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            for row in self.conn.execute(sql, chunk):
                out[row[0]] = dict(zip(ITEM_COLUMNS, row))
        return out

    def ids_under(self, folder: str) -> np.ndarray:
        prefix = folder.rstrip("/") + "/"
        # a range on the (path, part) index instead of LIKE, which would scan every row
        rows = self.conn.execute("SELECT id FROM items WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0"))
        return np.fromiter((r[0] for r in rows), np.int64)

    def integrity_problems(self) -> list[str]:
        problems = [r[0] for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        dim = int(self.meta().get("dim", 0))
        width = np.dtype(self.meta().get("dtype", "float16")).itemsize * dim
        bad = self.conn.execute("SELECT COUNT(*) FROM items WHERE length(embedding) != ?", (width,)).fetchone()[0]
        if dim and bad:
            problems.append(f"{bad} embeddings do not have {dim} dimensions")
        return problems

    # -- writes -----------------------------------------------------------------------------
    def add_items(self, rows: Sequence[dict[str, Any]], embeddings: Sequence[bytes]) -> None:
        """Insert or replace items (keyed by path + part) with their embeddings in one transaction."""
        stamp = _now()
        cols = [c for c in ITEM_COLUMNS if c != "id"] + ["embedding"]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("path", "part"))
        sql = (
            f"INSERT INTO items ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(path, part) DO UPDATE SET {updates}"
        )
        records = [
            tuple({**row, "part": row.get("part", 0), "indexed_at": stamp, "embedding": emb}.get(c) for c in cols)
            for row, emb in zip(rows, embeddings, strict=True)
        ]
        with self.transaction():
            self.conn.executemany(sql, records)
            self._bump()

    def remove_paths(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        removed = 0
        with self.transaction():
            for i in range(0, len(paths), 500):
                chunk = paths[i : i + 500]
                cur = self.conn.execute(f"DELETE FROM items WHERE path IN ({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
            if removed:
                self._bump()
        return removed


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, nesting-safe (inner blocks join the outer one)."""

    def __init__(self, conn: sqlite3.Connection, immediate: bool = True):
        self.conn = conn
        self.immediate = immediate
        self.owner = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
            self.owner = True
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.owner:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def read_snapshot(catalog: Catalog) -> _Transaction:
    """A read transaction: everything read inside sees one consistent state of the catalog."""
    return _Transaction(catalog.conn, immediate=False)
