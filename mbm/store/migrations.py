"""The catalog's schema, as recorded migrations: each step runs once, in order, inside the write
transaction that records it in the ``_migrations`` table (sqlite-utils' ``Migrations`` idea).

Append-only: a released migration never changes; a schema change is a new entry in :data:`MIGRATIONS`.
Only index runs migrate; searches open the catalog read-only and only check the recorded names
(``mbm.store.catalog.Catalog``).
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
from collections.abc import Callable

import sqlite_utils


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


def applied(conn: sqlite3.Connection) -> set[str]:
    """Names of the migrations recorded in the catalog (none for a new file)."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchall()
    return {r[0] for r in conn.execute("SELECT name FROM _migrations")} if rows else set()


def unknown(done: set[str]) -> set[str]:
    """Recorded migrations this mbm does not have: the catalog was written by a newer mbm."""
    return done - {name for name, _ in MIGRATIONS}


def due(conn: sqlite3.Connection) -> bool:
    """Whether a migration is still to run (read without a write transaction)."""
    return not {name for name, _ in MIGRATIONS} <= applied(conn)


def apply_due(db: sqlite_utils.Database, check_schema: Callable[[], None]) -> None:
    """Run and record every migration not applied yet, inside the caller's write transaction;
    ``check_schema`` refuses a catalog from a newer mbm before anything runs."""
    db.conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = applied(db.conn)
    if unknown(done):
        check_schema()
    for name, step in MIGRATIONS:
        if name not in done:
            step(db)
            applied_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            db.conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, applied_at))
