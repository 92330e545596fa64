"""``vectors.json``, the stamp beside a collection's FAISS index: which catalog state the index file
holds, its type, tuning, recall and size. Read without loading the index (``mbm info``, freshness)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mbm.store.ann import Tuning
from mbm.store.catalog import CatalogState

STAMP_FILE = "vectors.json"


def index_file_name(state: CatalogState) -> str:
    return f"vectors-{state.catalog_id}-{state.generation}.faiss"


def read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def describe(folder: Path, catalog_id: str) -> dict[str, Any]:
    """What ``mbm info`` shows of the saved index: type, why, settings, recall, memory and row-file bytes."""
    stamp = read_stamp(folder) or {}
    if stamp.get("catalog_id") != catalog_id:
        return {"type": "not built"}
    rows = folder / stamp["rows_file"] if stamp.get("rows_file") else None
    tuning = Tuning.from_dict(stamp.get("tuning"))
    origin = stamp.get("origin") or {}
    return {
        "type": stamp.get("kind", "Flat"),
        "reason": origin.get("reason", ""),
        "params": {k: v for k, v in (("nprobe", tuning.nprobe), ("efSearch", tuning.ef)) if v}
        | ({"rescore": tuning.rescore} if tuning.rescore else {}),
        "recall_at_10": tuning.recall,
        "recall_queries": tuning.queries,
        "memory_bytes": int(stamp.get("bytes", 0)),
        "rows_bytes": rows.stat().st_size if rows is not None and rows.is_file() else 0,
        "tombstones": int(stamp.get("dead", 0)),
        "build_seconds": round(float(origin.get("seconds", 0.0)), 2),
        "settings": origin.get("settings", {}),
    }


def vectors_fresh(folder: Path, state: CatalogState) -> bool:
    """Whether the saved index matches the catalog state, judged from the stamp and file size alone."""
    stamp = read_stamp(folder)
    if stamp is None:
        return False
    try:
        rows = stamp.get("rows_file")
        return (
            (stamp.get("catalog_id"), stamp.get("generation"), stamp.get("count")) == tuple(state)
            and (folder / index_file_name(state)).stat().st_size == stamp.get("bytes")
            and (not rows or (folder / rows).is_file())
        )
    except OSError:
        return False
