"""What ``mbm info`` and ``Engine.info()`` report of a collection, read from its catalog and the stamp
beside its vector index (nothing is loaded)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mbm.config import CATALOG_FILE
from mbm.retrieval.rerank import calibrated_top
from mbm.scale import backend as scale_backend
from mbm.store.catalog import Catalog
from mbm.store.stamp import describe, read_stamp
from mbm.store.tokens import FUSION_KEY, token_stats


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    folder: str
    kind: str  # "image" or "text"
    model: str
    fingerprint: str
    dim: int
    items: int
    index_type: str
    catalog_bytes: int
    vectors_bytes: int
    created_at: str
    precision: str = ""
    fusion: bool | None = None  # whether the model has a fusion head (None: not known until an index run loads it)
    token_bytes_per_item: int = 0  # fusion tokens stored for re-ranking
    token_bytes: int = 0
    items_without_tokens: int = 0
    index: dict[str, Any] = field(default_factory=dict)  # type, settings, recall@10, memory (store.vectors.describe)
    rerank_default: int = 0  # candidates a text query re-ranks unless told otherwise (0: none)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else 0


def collection_info(name: str, folder: Path, catalog: Catalog) -> CollectionInfo:
    """The :class:`CollectionInfo` of collection ``name`` in ``folder``, whose catalog is ``catalog``."""
    meta = catalog.meta()
    stamp = read_stamp(folder) or {}
    current = stamp.get("catalog_id") == catalog.catalog_id
    index_type = stamp.get("kind", "Flat") if current else "not built"
    catalog_bytes = sum(_size(folder / (CATALOG_FILE + s)) for s in ("", "-wal", "-shm"))
    vectors_bytes = _size(folder / stamp["file"]) if current and stamp.get("file") else 0
    tokens = token_stats(catalog)
    fusion = {"1": True, "0": False}.get(meta.get(FUSION_KEY, ""))
    return CollectionInfo(
        name,
        str(folder),
        meta.get("kind", "?"),
        meta.get("model", "?"),
        meta.get("fingerprint", "?"),
        int(meta.get("dim", 0)),
        catalog.count(),
        index_type,
        catalog_bytes,
        vectors_bytes,
        meta.get("created_at", ""),
        meta.get("precision", ""),
        fusion,
        tokens.bytes_per_item,
        tokens.total_bytes,
        tokens.items_without,
        describe(folder, catalog.catalog_id) | scale_backend.describe_backend(meta),
        calibrated_top(meta, meta.get("model")),
    )
