"""The catalog: one SQLite file per collection, the source of truth.

Every item row carries its embedding, written in the same transaction, so a crash
never leaves a vector without its row or the reverse. Each catalog has a random
``catalog_id`` given at creation and a ``generation`` that grows with every write
that changes vectors; a ``changes`` log records which item ids each generation
touched, so a derived FAISS index built at an older generation of the same catalog
is brought up to date with ``remove_ids`` / ``add_with_ids`` instead of a rebuild.

Searching opens the catalog read-only (``mode=ro``; ``immutable=1`` on a read-only
mount): no write lock, no migration. Only index runs open it for writing.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import numpy as np
import sqlite_utils

from mbm.errors import CatalogError

BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another writer (a backup, a checkpoint) before failing
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


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("items").create(
        {
            "id": int,
            "path": str,
            "part": int,
            "text": str,
            "size": int,
            "mtime_ns": int,
            "hash": str,
            "width": int,
            "height": int,
            "taken_at": str,
            "camera": str,
            "indexed_at": str,
            "embedding": bytes,
        },
        pk="id",
        not_null={"path", "part", "hash", "embedding"},
        defaults={"part": 0},
    )
    db.table("items").create_index(["path", "part"], unique=True)
    db.table("items").create_index(["hash"])


def _m002_identity_and_changes(db: sqlite_utils.Database) -> None:
    """A random catalog id, a log of the item ids each generation touched, and files with no items."""
    generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('catalog_id', ?)", [secrets.token_hex(8)])
    # the log is complete from this generation on; older derived indexes are rebuilt
    db.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('changes_from', ?)", [generation[0] if generation else "0"]
    )
    db.table("changes").create({"generation": int, "item_id": int})
    db.table("changes").create_index(["generation"])
    db.table("empty_files").create({"path": str, "size": int, "mtime_ns": int}, pk="path")


def _m003_item_tokens(db: sqlite_utils.Database) -> None:
    """The fusion head's tokens per item (see ``mbm.store.tokens``); NULL until computed. The partial index
    keeps "which items lack tokens?" cheap however large the collection is."""
    db.table("items").add_column("tokens", bytes)
    db.execute("CREATE INDEX items_without_tokens ON items(id) WHERE tokens IS NULL")


def _m004_tags_and_item_text(db: sqlite_utils.Database) -> None:
    """Tags with confidences per item (``mbm.store.tags``) and each item's own words in an FTS5 index
    (``mbm.store.keywords``). Triggers drop both when an item is deleted or its content changes, in the
    writer's own transaction, so neither can outlive or mislabel the item it describes."""
    db.execute(
        "CREATE TABLE item_tags (item_id INTEGER NOT NULL, tag TEXT NOT NULL COLLATE NOCASE, score REAL NOT NULL, "
        "PRIMARY KEY (item_id, tag)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX item_tags_by_tag ON item_tags(tag, item_id)")
    db.execute("CREATE TABLE tagged (item_id INTEGER PRIMARY KEY, vocabulary TEXT NOT NULL)")
    db.execute(
        "CREATE VIRTUAL TABLE item_text USING fts5(names, caption, keywords, "
        "tokenize = 'porter unicode61 remove_diacritics 2')"
    )
    db.execute("CREATE TABLE item_text_state (item_id INTEGER PRIMARY KEY, signature TEXT NOT NULL)")
    forget = (
        "DELETE FROM item_tags WHERE item_id = old.id; DELETE FROM tagged WHERE item_id = old.id; "
        "DELETE FROM item_text WHERE rowid = old.id; DELETE FROM item_text_state WHERE item_id = old.id;"
    )
    db.execute(f"CREATE TRIGGER items_deleted_extras AFTER DELETE ON items BEGIN {forget} END")
    db.execute(
        f"CREATE TRIGGER items_changed_extras AFTER UPDATE OF hash ON items WHEN old.hash IS NOT new.hash "
        f"BEGIN {forget} END"
    )


# Append-only: a released migration never changes; a schema change is a new entry.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_initial", _m001_initial),
    ("002_identity_and_changes", _m002_identity_and_changes),
    ("003_item_tokens", _m003_item_tokens),
    ("004_tags_and_item_text", _m004_tags_and_item_text),
]


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


def _classify(path: Path, e: sqlite3.Error, *, readonly: bool) -> CatalogError:
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
            conn = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process kills
            catalog = cls(path, conn)
            catalog._migrate()
        except sqlite3.Error as e:
            raise _classify(path, e, readonly=False) from e
        return catalog

    @classmethod
    def _open_readonly(cls, path: Path) -> Catalog:
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
            catalog = cls(path, conn, readonly=True)
            try:
                catalog._check_schema()
            except sqlite3.Error as e:
                conn.close()
                raise _classify(path, e, readonly=True) from e
            return catalog
        assert last is not None
        raise _classify(path, last, readonly=True) from last

    def close(self) -> None:
        self.conn.close()

    def _applied(self) -> set[str]:
        rows = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
        ).fetchall()
        return {r[0] for r in self.conn.execute("SELECT name FROM _migrations")} if rows else set()

    def _check_schema(self) -> None:
        done = self._applied()
        newer = done - {name for name, _ in MIGRATIONS}
        if newer:
            raise CatalogError(
                f"catalog {self.path} was written by a newer mbm (migrations {sorted(newer)}) — upgrade mbm"
            )
        if "001_initial" not in done:
            raise CatalogError(f"catalog {self.path} is not an mbm catalog (no items table) — check the --store path")
        self._has_changes_log = "002_identity_and_changes" in done
        self.has_tokens = "003_item_tokens" in done

    def _migrate(self) -> None:
        if {name for name, _ in MIGRATIONS} <= self._applied():
            self._check_schema()
            return  # nothing due: no write transaction
        with self.transaction():
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = self._applied()
            if done - {name for name, _ in MIGRATIONS}:
                self._check_schema()
            for name, step in MIGRATIONS:
                if name not in done:
                    step(self.db)
                    self.conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _now()))
        self._check_schema()

    def transaction(self) -> _Transaction:
        if self.readonly:
            raise CatalogError(f"catalog {self.path} is open read-only — index runs open it for writing")
        return _Transaction(self.conn, path=self.path)

    # -- metadata ---------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return {k: v for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in values.items()],
            )

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


class _Transaction:
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
                raise _classify(self.path or Path("catalog"), e, readonly=False) from e
            self.owner = True
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> None:
        if not self.owner:
            return
        if exc_type:
            self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and self.path is not None:
                raise _classify(self.path, exc, readonly=False) from exc
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self.conn.execute("ROLLBACK")
            raise _classify(self.path or Path("catalog"), e, readonly=False) from e


def read_snapshot(catalog: Catalog) -> _Transaction:
    """A read transaction: everything read inside sees one consistent state of the catalog."""
    return _Transaction(catalog.conn, immediate=False)
