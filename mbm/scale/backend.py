"""The Engine's side of the vector backend: which index a collection searches, recorded in its meta.

``faiss`` (the default): :mod:`mbm.store.vectors`, a file beside the catalog. ``milvus``:
:mod:`mbm.scale.milvus`, a Milvus collection kept in step with the catalog. Nothing from the scale
extra is imported until a collection uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbm.errors import UsageError
from mbm.scale import BACKEND_KEY, check_backend, check_engine, require
from mbm.store.catalog import Catalog
from mbm.store.lock import CollectionLock
from mbm.store.vectors import ensure_saved, open_vectors


def check_run(engine: str, backend: str | None, uri: str | None, kind: str, meta: dict[str, str]) -> None:
    """Fail fast, before a model loads or the lock is waited for, on a scale choice that cannot work
    (``meta``: the collection's as it is now, empty for a new one)."""
    check_engine(engine)
    check_backend(backend, uri)
    if engine == "ray":
        if kind == "text":
            raise UsageError("--engine ray embeds images; index a text collection without --engine ray")
        from mbm.scale.ray_index import check_ray

        check_ray()
    if backend == "milvus":
        from mbm.scale.milvus import URI_KEY, check_uri

        if uri is not None:
            check_uri(uri)
        elif not meta.get(URI_KEY):
            raise _no_uri()
        require("pymilvus", "--backend milvus")


def uses_milvus(meta: dict[str, str]) -> bool:
    return meta.get(BACKEND_KEY) == "milvus"


def record_backend(catalog: Catalog, name: str, backend: str | None, uri: str | None) -> None:
    """Keep ``--backend`` / ``--uri`` for the collection (None keeps what is recorded). A collection on
    Milvus reaches its server now, so a wrong URI or a busy milvus-lite file fails before anything is embedded."""
    from mbm.scale.milvus import URI_KEY, backend_meta, client_for

    if backend == "faiss":
        catalog.set_meta(**{BACKEND_KEY: "faiss"})
    elif backend == "milvus" or uri is not None:
        uri = uri or catalog.meta().get(URI_KEY)
        if not uri:
            raise _no_uri()
        catalog.set_meta(**{BACKEND_KEY: "milvus"}, **backend_meta(uri, name, catalog.catalog_id))
    meta = catalog.meta()
    if uses_milvus(meta):
        client_for(meta[URI_KEY])


def save_index(catalog: Catalog, folder: Path) -> str:
    """After a write (the lock held): bring the index the collection searches to the catalog's state, and
    only that one. FAISS: the saved index beside the catalog (``ensure_saved``). Milvus: its copy, synced by
    the change log; no FAISS index is built, and the log is pruned up to what Milvus now holds. Returns what
    was done ("saved", "current", "caught up", "rebuilt")."""
    if not uses_milvus(catalog.meta()):
        return "saved" if ensure_saved(catalog, folder) else "current"
    from mbm.scale.milvus import MilvusIndex, MilvusSettings

    index = MilvusIndex(MilvusSettings.from_meta(catalog.meta()))
    done = index.sync(catalog)
    if index.state is not None and index.state.catalog_id == catalog.catalog_id and not catalog.readonly:
        catalog.prune_changes(index.state.generation)
    return done


def open_index(catalog: Catalog, folder: Path, lock: CollectionLock, previous: Any = None) -> Any:
    """The collection's vector index, current with the catalog: FAISS or Milvus, as its meta says."""
    if uses_milvus(catalog.meta()):
        from mbm.scale.milvus import open_milvus

        return open_milvus(catalog, lock, previous)
    from mbm.store.vectors import VectorIndex

    return open_vectors(catalog, folder, lock, previous if isinstance(previous, VectorIndex) else None)


def describe_backend(meta: dict[str, str]) -> dict[str, Any]:
    """What ``mbm info`` adds about a Milvus backend (nothing for FAISS)."""
    if not uses_milvus(meta):
        return {}
    from mbm.scale.milvus import COLLECTION_KEY, DEFAULT_INDEX, INDEX_KEY, URI_KEY

    return {
        "backend": "milvus",
        "milvus": {
            "uri": meta.get(URI_KEY),
            "collection": meta.get(COLLECTION_KEY),
            "index": meta.get(INDEX_KEY, DEFAULT_INDEX),
        },
    }


def _no_uri() -> UsageError:
    return UsageError(
        "--backend milvus needs --uri: a milvus-lite file (--uri ./milvus.db) or a Milvus server "
        "(--uri http://HOST:19530)"
    )
