"""The catalog: one SQLite file per collection, the source of truth.

Every item row carries its embedding, written in the same transaction, so a crash
never leaves a vector without its row or the reverse. Each catalog has a random
``catalog_id`` given at creation and a ``generation`` that grows with every write
that changes vectors; a ``changes`` log records which item ids each generation
touched, so a derived FAISS index built at an older generation of the same catalog
is brought up to date with ``remove_ids`` / ``add_with_ids`` instead of a rebuild.

Searching opens the catalog read-only (``mode=ro``; ``immutable=1`` on a read-only
mount): no write lock, no migration. Only index runs open it for writing. The schema is in
``mbm.store.migrations``; connections, transactions and error messages in ``mbm.store.connection``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sqlite_utils

from mbm.errors import CatalogError
from mbm.store import migrations
from mbm.store.connection import Transaction, classify_error, connect, connect_readonly

ITEM_COLUMNS = (
    "id",
    "path",
    "part",
    "text",
    "size",
    "mtime_ns",
    "hash",
    "width",
    "height",
    "taken_at",
    "camera",
    "indexed_at",
)


@dataclass(frozen=True)
class FileState:
    """What the catalog knows about one file: enough to tell unchanged from changed."""

    size: int
    mtime_ns: int
    hash: str
    ids: tuple[int, ...]  # empty for a file recorded as holding nothing to index


class StoredContent(NamedTuple):
    """What an item stores about its content, reused by a moved or copied file with the same hash."""

    embedding: bytes
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    camera: str | None = None
    tokens: bytes | None = None  # the fusion head's tokens (mbm.store.tokens), when stored


class CatalogState(NamedTuple):
    """What a derived cache must match: which catalog, at which generation, with how many items."""

    catalog_id: str
    generation: int
    count: int  # type: ignore[assignment]  # the field shadows tuple.count, as its callers expect


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Catalog:
    """Items, their embeddings and the collection's metadata in one SQLite file (WAL mode)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, readonly: bool = False):
        self.path = path
        self.conn = conn
        self.readonly = readonly
        self.db = sqlite_utils.Database(conn)
        self._has_changes_log = False
        self.has_tokens = False  # a catalog from before migration 003 (read-only) has no tokens column

    @classmethod
    def open(cls, path: Path, *, create: bool = False, readonly: bool = False) -> Catalog:
        """Open for writing (``create`` makes a new one), or ``readonly`` for searching."""
        path = Path(path)
        if not create and not path.is_file():
            raise CatalogError(f"no catalog at {path}")
        if readonly:
            return cls._open_readonly(path)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            catalog = cls(path, connect(path))
            catalog._migrate()
        except sqlite3.Error as e:
            raise classify_error(path, e, readonly=False) from e
        return catalog

    @classmethod
    def _open_readonly(cls, path: Path) -> Catalog:
        conn = connect_readonly(path)
        catalog = cls(path, conn, readonly=True)
        try:
            catalog._check_schema()
        except sqlite3.Error as e:
            conn.close()
            raise classify_error(path, e, readonly=True) from e
        return catalog

    def close(self) -> None:
        self.conn.close()

    def _check_schema(self) -> None:
        done = migrations.applied(self.conn)
        newer = migrations.unknown(done)
        if newer:
            raise CatalogError(
                f"catalog {self.path} was written by a newer mbm (migrations {sorted(newer)}) — upgrade mbm"
            )
        if "001_initial" not in done:
            raise CatalogError(f"catalog {self.path} is not an mbm catalog (no items table) — check the --store path")
        self._has_changes_log = "002_identity_and_changes" in done
        self.has_tokens = "003_item_tokens" in done

    def _migrate(self) -> None:
        if migrations.due(self.conn):  # else no write transaction
            with self.transaction():
                migrations.apply_due(self.db, self._check_schema)
        self._check_schema()

    def transaction(self) -> Transaction:
        if self.readonly:
            raise CatalogError(f"catalog {self.path} is open read-only — index runs open it for writing")
        return Transaction(self.conn, path=self.path)

    # -- metadata ---------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return {k: v for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in values.items()],
            )

    def set_index_settings(self, **values: str) -> bool:
        """Record ``--index-type`` / ``--max-memory`` (``mbm.store.ann.settings_meta``); a change advances the
        generation, with no items logged, so every warm reader (a running server) reopens the index built
        for the new settings instead of catching up the old one. True when something changed."""
        unset = {"index_type": "auto", "max_memory": ""}
        with self.transaction():
            meta = self.meta()
            changed = {k: v for k, v in values.items() if (meta.get(k) or unset.get(k, "")) != (v or unset.get(k, ""))}
            if not changed:
                return False
            self.set_meta(**changed)
            self._bump(())
        return True

    def init_meta(self, **values: Any) -> dict[str, str]:
        """Set each key only where it is absent (a concurrent first run may have set it); return the meta."""
        with self.transaction():
            self.conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
            )
            return self.meta()

    @property
    def catalog_id(self) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_id'").fetchone()
        if row:
            return str(row[0])
        # a catalog from before ids, opened read-only: derive one that differs from any new catalog
        created = self.conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
        return "legacy-" + (created[0] if created else "unknown")

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def version(self) -> tuple[str, int]:
        """``(catalog_id, generation)``: one indexed read, cheap enough to check before every search."""
        values = dict(
            self.conn.execute("SELECT key, value FROM meta WHERE key IN ('catalog_id', 'generation')").fetchall()
        )
        return (str(values["catalog_id"]) if "catalog_id" in values else self.catalog_id), int(
            values.get("generation", 0)
        )

    def state(self) -> CatalogState:
        """Id, generation and item count read in one snapshot (cheap: one indexed query each)."""
        with read_snapshot(self):
            return CatalogState(self.catalog_id, self.generation(), self.count())

    def _bump(self, ids: Iterable[int]) -> int:
        """Advance the generation and log ``ids`` as changed in it (inside a write transaction)."""
        generation = self.generation() + 1
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(generation),),
        )
        self.conn.executemany(
            "INSERT INTO changes (generation, item_id) VALUES (?, ?)", [(generation, int(i)) for i in ids]
        )
        return generation

    def changed_since(self, generation: int) -> np.ndarray | None:
        """Ids of items added, replaced or removed after ``generation``; None when the log does not reach back."""
        if not self._has_changes_log:
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'changes_from'").fetchone()
        if generation < int(row[0] if row else 0):
            return None
        rows = self.conn.execute("SELECT DISTINCT item_id FROM changes WHERE generation > ?", (generation,))
        return np.fromiter((r[0] for r in rows), np.int64)

    def prune_changes(self, upto: int) -> None:
        """Forget the log up to generation ``upto`` (a derived index that old is rebuilt instead)."""
        with self.transaction():
            current = int(self.meta().get("changes_from", "0"))
            if upto > current:
                self.conn.execute("DELETE FROM changes WHERE generation <= ?", (upto,))
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'changes_from'", (str(upto),))

    # -- reads ------------------------------------------------------------------------------
    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def file_states(self) -> dict[str, FileState]:
        """Every indexed file (a text file has one row per line) keyed by path, and empty files."""
        states: dict[str, FileState] = {}
        for path, size, mtime, hash_, ids in self.conn.execute(
            "SELECT path, size, mtime_ns, MIN(hash), GROUP_CONCAT(id) FROM items GROUP BY path"
        ):
            states[path] = FileState(size, mtime, hash_, tuple(int(i) for i in ids.split(",")))
        if self._has_changes_log:
            for path, size, mtime in self.conn.execute("SELECT path, size, mtime_ns FROM empty_files"):
                states.setdefault(path, FileState(size, mtime, "", ()))
        return states

    def embedding_by_hash(self, hashes: Iterable[str]) -> dict[str, StoredContent]:
        """Stored embedding, image facts and tokens for each known content hash, to reuse on move/copy
        (a copy that has tokens is preferred)."""
        found: dict[str, StoredContent] = {}
        wanted = list(dict.fromkeys(hashes))
        tokens = "tokens" if self.has_tokens else "NULL"
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            sql = (
                f"SELECT hash, embedding, width, height, taken_at, camera, {tokens} FROM items "
                f"WHERE hash IN ({','.join('?' * len(chunk))}) ORDER BY {tokens} IS NULL"
            )
            for h, *stored in self.conn.execute(sql, chunk):
                found.setdefault(h, StoredContent(*stored))
        return found

    def known_hashes(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT DISTINCT hash FROM items")}

    def _vectors(self, rows: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.dtype(self.meta().get("dtype", "float16"))
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype).reshape(len(rows), -1).astype(np.float32)
        # float16 storage moves norms by ~1e-4: renormalize so an identical image scores 1.0
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return ids, vecs

    def read_embeddings(self, batch: int = 20000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids int64, vectors float32)`` chunks in id order (call inside a read transaction)."""
        width = np.dtype(self.meta().get("dtype", "float16")).itemsize * int(self.meta().get("dim", 0) or 0)
        where = " WHERE length(embedding) = ?" if width else ""  # a damaged row must not break the whole index
        cur = self.conn.execute(f"SELECT id, embedding FROM items{where} ORDER BY id", (width,) if width else ())
        while rows := cur.fetchmany(batch):
            yield self._vectors(rows)

    def embeddings_of(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of those of ``ids`` that exist now (call inside a read transaction)."""
        width = np.dtype(self.meta().get("dtype", "float16")).itemsize * int(self.meta().get("dim", 0) or 0)
        rows: list[tuple[int, bytes]] = []
        wanted = [int(x) for x in ids]
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            sql = (
                f"SELECT id, embedding FROM items WHERE id IN ({','.join('?' * len(chunk))}) AND length(embedding) = ?"
            )
            rows.extend(self.conn.execute(sql, [*chunk, width]))
        rows.sort()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, int(self.meta().get("dim", 0) or 0)), np.float32)
        return self._vectors(rows)

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

    def paths(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """Every distinct indexed path with its item ids, in path order."""
        for path, ids in self.conn.execute("SELECT path, GROUP_CONCAT(id) FROM items GROUP BY path ORDER BY path"):
            yield path, tuple(int(i) for i in ids.split(","))

    def bad_embeddings(self) -> list[int]:
        """Ids whose embedding does not have the collection's dimension."""
        width = np.dtype(self.meta().get("dtype", "float16")).itemsize * int(self.meta().get("dim", 0) or 0)
        if not width:
            return []
        return [r[0] for r in self.conn.execute("SELECT id FROM items WHERE length(embedding) != ?", (width,))]

    def integrity_problems(self) -> list[str]:
        problems = [r[0] for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        bad = self.bad_embeddings()
        if bad:
            problems.append(f"{len(bad)} embeddings do not have {self.meta().get('dim')} dimensions")
        return problems

    # -- writes -----------------------------------------------------------------------------
    def add_items(
        self, rows: Sequence[dict[str, Any]], embeddings: Sequence[bytes], tokens: Sequence[bytes | None] | None = None
    ) -> None:
        """Insert or replace items (keyed by path + part) with their embeddings and fusion tokens (None: not
        computed; a replaced item loses its old ones) in one transaction."""
        if not rows:
            return  # nothing changes: the generation (and every derived cache) stays as it is
        stamp = _now()
        tokens = [None] * len(rows) if tokens is None else tokens
        cols = [c for c in ITEM_COLUMNS if c != "id"] + ["embedding", "tokens"]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("path", "part"))
        sql = (
            f"INSERT INTO items ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(path, part) DO UPDATE SET {updates}"
        )
        records = [
            tuple(
                {**row, "part": row.get("part", 0), "indexed_at": stamp, "embedding": emb, "tokens": tok}.get(c)
                for c in cols
            )
            for row, emb, tok in zip(rows, embeddings, tokens, strict=True)
        ]
        with self.transaction():
            self.conn.executemany(sql, records)
            ids = self._ids_of([(r["path"], r.get("part", 0)) for r in rows])
            self.conn.executemany("DELETE FROM empty_files WHERE path = ?", [(p,) for p in {r["path"] for r in rows}])
            self._bump(ids)

    def _ids_of(self, keys: Sequence[tuple[str, int]]) -> list[int]:
        out = []
        for path, part in keys:
            row = self.conn.execute("SELECT id FROM items WHERE path = ? AND part = ?", (path, part)).fetchone()
            out.append(int(row[0]))
        return out

    def mark_empty(self, path: str, size: int, mtime_ns: int) -> None:
        """Record a file that holds nothing to index (an empty text file), so re-runs see it unchanged."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO empty_files (path, size, mtime_ns) VALUES (?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns",
                (path, size, mtime_ns),
            )

    def remove_paths(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        removed: list[int] = []
        with self.transaction():
            for i in range(0, len(paths), 500):
                chunk = paths[i : i + 500]
                marks = ",".join("?" * len(chunk))
                removed += [r[0] for r in self.conn.execute(f"SELECT id FROM items WHERE path IN ({marks})", chunk)]
                self.conn.execute(f"DELETE FROM items WHERE path IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM empty_files WHERE path IN ({marks})", chunk)
            if removed:
                self._bump(removed)
        return len(removed)

    def remove_ids(self, ids: Iterable[int]) -> int:
        ids = [int(i) for i in ids]
        with self.transaction():
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                self.conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            if ids:
                self._bump(ids)
        return len(ids)


def read_snapshot(catalog: Catalog) -> Transaction:
    """A read transaction: everything read inside sees one consistent state of the catalog."""
    return Transaction(catalog.conn, immediate=False)
