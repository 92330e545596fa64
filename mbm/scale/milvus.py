"""Milvus as a collection's vector backend: a derived copy of the catalog's embeddings, searched like FAISS.

``mbm index PATH --backend milvus --uri ./milvus.db`` (milvus-lite, embedded, one process at a time) or
``--uri http://HOST:19530`` (a Milvus server or cluster, same client API) records the backend in the
catalog's meta; from then on searches go to Milvus through :class:`MilvusIndex`, which has the search
interface of :class:`mbm.store.vector_index.VectorIndex` (``search(queries, k, allowed) -> (scores, ids)``,
``ntotal``, ``dim``, ``state``).

The catalog stays the source of truth. The Milvus collection records the catalog state it holds
(collection properties ``mbm_catalog_id`` / ``mbm_generation`` / ``mbm_count``, written after the data),
and is brought up to date like the FAISS index: the catalog's change log since that generation is
applied (``delete`` of removed ids, ``upsert`` of added and replaced ones; both idempotent, so a sync
cut short is simply applied again), or, when the log does not reach back or the catalog is another one,
rebuilt into a new physical collection that an alias switches to once it is complete, so searches never
see a half-built collection. Only the holder of the collection's lock writes to Milvus.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbm.errors import CollectionError, MbmError, UsageError
from mbm.scale import require
from mbm.scale.milvus_filter import MAX_EXPR_CHARS, id_filters
from mbm.store.catalog import Catalog, CatalogState, read_snapshot
from mbm.store.search_request import no_hits, search_request

log = logging.getLogger(__name__)

URI_KEY = "milvus_uri"
COLLECTION_KEY = "milvus_collection"
INDEX_KEY = "milvus_index"
INDEX_TYPES = ("HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX")
DEFAULT_INDEX = "HNSW"
DEFAULT_EF = 64  # HNSW efSearch when --ef is not given (raised to k when k is larger)
DEFAULT_NPROBE = 16
MAX_TOPK = 16_384  # Milvus's limit on k
WRITE_BYTES = 8 * 2**20  # vectors per insert/upsert request: about this many bytes
READ_CHUNK = 20_000  # changed ids read from the catalog at a time
TOKEN_ENV = "MILVUS_TOKEN"  # "user:password" or an API key; never stored in the catalog
_clients: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class MilvusSettings:
    """Where a collection's vectors live in Milvus: the server (or .db file), the alias searched, the index type."""

    uri: str
    collection: str  # the alias; physical collections are "<alias>_g<generation>"
    dim: int
    index_type: str = DEFAULT_INDEX

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> MilvusSettings:
        if not meta.get(URI_KEY) or not meta.get(COLLECTION_KEY):
            raise CollectionError("the collection's Milvus backend has no URI recorded — index it with --uri URI")
        return cls(meta[URI_KEY], meta[COLLECTION_KEY], int(meta.get("dim", 0)), meta.get(INDEX_KEY, DEFAULT_INDEX))


def check_uri(uri: str) -> str:
    """A server address as it is, a milvus-lite file as an absolute path; anything else a UsageError."""
    if re.match(r"^(https?|tcp|grpc|unix)://", uri):
        return uri
    if uri.endswith(".db"):
        return str(Path(uri).expanduser().absolute())
    raise UsageError(
        f"--uri {uri!r} is neither a Milvus server (http://HOST:19530) nor a milvus-lite file ending in .db — "
        "e.g. --uri ./milvus.db"
    )


def check_index_type(index_type: str) -> str:
    if index_type.upper() not in INDEX_TYPES:
        raise UsageError(f"Milvus index type {index_type!r} is not supported — use one of {', '.join(INDEX_TYPES)}")
    return index_type.upper()


def backend_meta(uri: str, name: str, catalog_id: str, index_type: str | None = None) -> dict[str, str]:
    """The catalog meta that makes ``name`` search Milvus at ``uri`` (the alias is unique per catalog)."""
    alias = "mbm_" + re.sub(r"[^A-Za-z0-9_]", "_", name) + "_" + re.sub(r"[^A-Za-z0-9_]", "_", catalog_id)
    values = {URI_KEY: check_uri(uri), COLLECTION_KEY: alias}
    if index_type is not None:
        values[INDEX_KEY] = check_index_type(index_type)
    return values


def client_for(uri: str) -> Any:
    """One MilvusClient per server and process (a milvus-lite file starts its server on first use)."""
    pymilvus = require("pymilvus", "--backend milvus")
    token = os.environ.get(TOKEN_ENV, "")
    key = (uri, token)
    if key not in _clients:
        try:
            _clients[key] = pymilvus.MilvusClient(uri=uri, token=token, timeout=30)
        except pymilvus.exceptions.MilvusException as e:
            raise _connect_error(uri, e) from None
    return _clients[key]


def _connect_error(uri: str, e: Exception) -> MbmError:
    if uri.endswith(".db"):
        require("milvus_lite", "a milvus-lite file (--uri *.db)")
        return MbmError(
            f"milvus-lite file {uri} cannot be opened ({type(e).__name__}) — milvus-lite serves one process at a "
            "time: stop the other one (`mbm serve`?), or run a Milvus server and use --uri http://HOST:19530"
        )
    return MbmError(f"cannot reach Milvus at {uri} ({e}) — start it, or check --uri (http://HOST:19530)")


class MilvusIndex:
    """Inner-product search over the collection's vectors held in Milvus, keyed by catalog item id."""

    max_filter_chars = MAX_EXPR_CHARS  # the longest filter expression sent in one search (``allowed`` is chunked)

    def __init__(self, settings: MilvusSettings, client: Any | None = None):
        self.settings = settings
        self.client = client if client is not None else client_for(settings.uri)
        self.state: CatalogState | None = None  # the catalog state Milvus holds (None: nothing complete yet)
        self.refresh()

    @property
    def ntotal(self) -> int:
        return self.state.count if self.state is not None else 0

    @property
    def dim(self) -> int:
        return self.settings.dim

    @property
    def generation(self) -> int:
        return self.state.generation if self.state is not None else -1

    def refresh(self) -> None:
        """Read the state the Milvus collection holds (another process may have synced it)."""
        alias = self.settings.collection
        if not self.client.has_collection(alias):
            self.state = None
            return
        info = self.client.describe_collection(alias)
        props = info.get("properties") or {}
        try:
            self.state = CatalogState(props["mbm_catalog_id"], int(props["mbm_generation"]), int(props["mbm_count"]))
        except (KeyError, ValueError):
            self.state = None
        if props.get("mbm_index", DEFAULT_INDEX) != self.settings.index_type:
            self.state = None  # built with another index type: rebuilt by the next sync
        loaded = self.client.get_load_state(alias).get("state")
        if self.state is not None and getattr(loaded, "name", str(loaded)) != "Loaded":
            self.client.load_collection(alias)  # a server keeps collections released until asked

    # -- searching ----------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)`` per query row, ids -1 where fewer exist; ``allowed`` restricts the items
        (sent as ``id in [...]`` / id-range filter expressions, chunked; each chunk searched, the best k kept)."""
        queries, k = search_request(queries, k, self.ntotal, nprobe=nprobe, ef=ef, max_k=MAX_TOPK)
        scores, ids = no_hits(len(queries), k)
        if self.ntotal == 0 or len(queries) == 0:
            return scores, ids
        if allowed is None:
            return self._search(queries, k, "", nprobe, ef)
        allowed = np.unique(np.asarray(allowed, np.int64))
        for expr, n in id_filters(allowed, self.max_filter_chars):
            s, i = self._search(queries, min(k, n), expr, nprobe, ef)
            scores, ids = _merge(scores, ids, s, i, k)
        return scores, ids

    def _search(
        self, queries: np.ndarray, k: int, expr: str, nprobe: int | None, ef: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        params: dict[str, Any] = {"metric_type": "IP", "params": self._search_params(k, nprobe, ef)}
        result = self.client.search(
            self.settings.collection,
            data=queries,
            filter=expr,
            limit=k,
            output_fields=["id"],
            search_params=params,
        )
        scores, ids = no_hits(len(queries), k)
        for row, hits in enumerate(result):
            for col, hit in enumerate(list(hits)[:k]):
                scores[row, col], ids[row, col] = float(hit["distance"]), int(hit["id"])
        return scores, ids

    def _search_params(self, k: int, nprobe: int | None, ef: int | None) -> dict[str, Any]:
        kind = self.settings.index_type
        if kind == "HNSW" or (kind == "AUTOINDEX" and ef is not None):
            return {"ef": max(ef or DEFAULT_EF, k)}
        if kind == "IVF_FLAT":
            return {"nprobe": nprobe or DEFAULT_NPROBE}
        return {}

    # -- keeping up with the catalog -------------------------------------------------------------
    def sync(self, catalog: Catalog) -> str:
        """Bring Milvus to the catalog's state (the caller holds the collection's lock): "current",
        "caught up" (the change log applied) or "rebuilt"."""
        self.refresh()
        if self.state is not None and self.state == catalog.state():
            return "current"
        if self.catch_up(catalog):
            return "caught up"
        self.rebuild(catalog)
        return "rebuilt"

    def catch_up(self, catalog: Catalog) -> bool:
        """Apply the catalog's changes since the generation Milvus holds; False when a rebuild is needed."""
        if self.state is None:
            return False
        with read_snapshot(catalog):
            state = catalog.state()
            if state.catalog_id != self.state.catalog_id or state.generation < self.state.generation:
                return False
            changed = catalog.changed_since(self.state.generation)
            if changed is None:
                return False
            alias = self.settings.collection
            for start in range(0, len(changed), READ_CHUNK):
                part = changed[start : start + READ_CHUNK]
                ids, vecs = catalog.embeddings_of(part.tolist())
                gone = np.setdiff1d(part, ids)
                if len(gone):
                    self.client.delete(alias, ids=[int(i) for i in gone])
                self._write(alias, ids, vecs, upsert=True)
        self._finish(alias, state)
        return True

    def rebuild(self, catalog: Catalog) -> None:
        """Copy every embedding into a new physical collection, then point the alias at it and drop the old."""
        alias = self.settings.collection
        old = self._target(alias)
        if old is None and self.client.has_collection(alias):  # a real collection of that name: never ours to drop
            raise CollectionError(f"Milvus already has a collection named {alias!r} — drop or rename it")
        for name in self.client.list_collections():
            if name.startswith(alias + "_g") and name != old:
                self.client.drop_collection(name)  # left by a rebuild that was cut short
        with read_snapshot(catalog):
            state = catalog.state()
            physical = f"{alias}_g{state.generation}_{secrets.token_hex(3)}"
            self._create(physical, state.count)
            count = 0
            for ids, vecs in catalog.read_embeddings():
                self._write(physical, ids, vecs, upsert=False)
                count += len(ids)
        state = state._replace(count=count)  # rows with damaged embeddings are left out (`mbm check` reports them)
        self._finish(physical, state)
        if old is None:
            self.client.create_alias(physical, alias)
        else:
            self.client.alter_alias(physical, alias)
            self.client.drop_collection(old)
        self.refresh()

    def _target(self, alias: str) -> str | None:
        """The physical collection the alias points at, or None (asked per collection: no error logged)."""
        for name in self.client.list_collections():
            if name.startswith(alias + "_g") and alias in self.client.list_aliases(name).get("aliases", []):
                return str(name)
        return None

    def _create(self, name: str, count: int) -> None:
        pymilvus = require("pymilvus", "--backend milvus")
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.settings.dim)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector", index_type=self.settings.index_type, metric_type="IP", params=self._build_params(count)
        )
        self.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")

    def _build_params(self, count: int) -> dict[str, Any]:
        if self.settings.index_type == "HNSW":
            return {"M": 32, "efConstruction": 200}
        if self.settings.index_type == "IVF_FLAT":
            from mbm.store.ann import ivf_lists

            return {"nlist": max(1, ivf_lists(max(count, 1)))}
        return {}

    def _write(self, name: str, ids: np.ndarray, vecs: np.ndarray, *, upsert: bool) -> None:
        step = max(1, WRITE_BYTES // max(1, 4 * self.settings.dim))
        for start in range(0, len(ids), step):
            rows = [{"id": int(i), "vector": v} for i, v in zip(ids[start : start + step], vecs[start : start + step])]
            (self.client.upsert if upsert else self.client.insert)(name, rows)

    def _finish(self, name: str, state: CatalogState) -> None:
        """Record the state the data now matches (after the data: a cut-short write leaves the older state)."""
        self.client.flush(name)
        props = {
            "mbm_catalog_id": state.catalog_id,
            "mbm_generation": str(state.generation),
            "mbm_count": str(state.count),
            "mbm_index": self.settings.index_type,
        }
        self.client.alter_collection_properties(name, properties=props)
        self.state = state


def _merge(
    scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two result sets per row (chunks hold disjoint ids)."""
    s = np.concatenate([scores, more_scores], axis=1)
    i = np.concatenate([ids, more_ids], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def open_milvus(catalog: Catalog, lock: Any, previous: Any = None) -> MilvusIndex:
    """The collection's Milvus index, synced with the catalog when this process holds (or can take) the lock;
    otherwise as Milvus holds it (an index run is writing, and syncs it when it ends)."""
    settings = MilvusSettings.from_meta(catalog.meta())
    index = previous if isinstance(previous, MilvusIndex) and previous.settings == settings else None
    index = index or MilvusIndex(settings)
    if index.state is not None and index.state == catalog.state():
        return index
    with lock.attempt() as holder:
        if holder:
            how = index.sync(catalog)
            log.info("Milvus collection %s %s (%d vectors)", settings.collection, how, index.ntotal)
            return index
    index.refresh()
    if index.state is None or index.state.catalog_id != catalog.catalog_id:
        raise CollectionError(
            f"Milvus collection {settings.collection!r} at {settings.uri} is not built yet — the index run writing "
            "this collection builds it when it ends; search again then"
        )
    return index
