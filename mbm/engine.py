"""Engine: the library's front door. Opens a collection, indexes, searches; never prints.

>>> from mbm import Engine
>>> eng = Engine.open()                    # default store, collection "default"
>>> report = eng.index(["./photos"])
>>> hits = eng.search("red car", k=10)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from mbm import __version__
from mbm.config import DEFAULT_BATCH_SIZE, DEFAULT_COLLECTION, collection_dir, resolve_store
from mbm.errors import CollectionError, UsageError
from mbm.indexer.decode import DEFAULT_MAX_PIXELS
from mbm.indexer.runner import IndexReport, Indexer, Progress
from mbm.indexer.scan import display_path, is_text_source
from mbm.models.factory import Encoder, load_model
from mbm.models.query_encoder import QUERY_ENCODER_DIR, export_query_encoder, load_query_encoder
from mbm.retrieval.rerank import FusionReranker
from mbm.retrieval.searcher import Hit, Searcher, image_paths_encoder
from mbm.store.catalog import Catalog
from mbm.store.vectors import INDEX_FILE, STAMP_FILE, open_vectors

CATALOG_FILE = "catalog.sqlite"


def check_index_args(paths: Sequence[str | os.PathLike[str]], batch_size: int = DEFAULT_BATCH_SIZE) -> None:
    """Fail fast, before any model loads, on arguments that cannot work."""
    if not paths:
        raise UsageError("no paths given — name at least one folder or file to index")
    if batch_size <= 0:
        raise UsageError(f"batch size must be at least 1, not {batch_size}")
    for p in paths:
        if not os.path.exists(os.path.expanduser(os.fspath(p))):
            raise UsageError(f"path {display_path(os.fspath(p))} does not exist — check the spelling")


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine:
    """One collection in one store. Heavy parts (model, vectors) load on first use."""

    def __init__(self, store: Path, collection: str = DEFAULT_COLLECTION, *, model: str | None = None,
                 device: str | None = None, precision: str | None = None, encoder: Encoder | None = None):
        self.store = store
        self.name = collection
        self.folder = collection_dir(store, collection)
        self.model_spec = model
        self.device = device
        self.precision = precision
        self._encoder = encoder
        self._catalog: Catalog | None = None
        self._unaccounted_load = 0.0
        self.timings: dict[str, float] = {}  # seconds per phase of the last search (imports, model, encode, ...)

    @classmethod
    def open(cls, store: str | os.PathLike[str] | None = None, collection: str = DEFAULT_COLLECTION, **kwargs: Any) -> Engine:
        """Open (lazily) ``collection`` in ``store`` (default: $MBM_HOME or the XDG data folder)."""
        return cls(resolve_store(store), collection, **kwargs)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    # -- collection ---------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.folder / CATALOG_FILE).is_file()

    def catalog(self, *, create: bool = False) -> Catalog:
        if self._catalog is None:
            if not create and not self.exists:
                raise CollectionError(self._missing_message())
            self._catalog = Catalog.open(self.folder / CATALOG_FILE, create=create)
        return self._catalog

    def _missing_message(self) -> str:
        others = [c.name for c in Engine.collections(self.store)]
        hint = f" (collections here: {', '.join(others)})" if others else ""
        return (f"no collection {self.name!r} in {self.store}{hint} — run `mbm index PATH"
                f"{'' if self.name == DEFAULT_COLLECTION else ' --collection ' + self.name}` first")

    def encoder(self) -> Encoder:
        """The collection's model (or the requested one for a new collection), loaded once."""
        if self._encoder is None:
            recorded = self._check_model_spec()
            self._encoder = load_model(self.model_spec or recorded, device=self.device, precision=self.precision)
            self.timings.update(self._encoder.load_seconds)
            self._unaccounted_load = sum(self._encoder.load_seconds.values())
        enc = self._encoder
        meta = self.catalog().meta() if self.exists else {}
        if meta.get("fingerprint") and meta["fingerprint"] != enc.fingerprint:
            raise CollectionError(
                f"the weights of model {enc.spec!r} changed since collection {self.name!r} was indexed "
                f"({meta['fingerprint']} -> {enc.fingerprint}) — re-index into a new --collection"
            )
        return enc

    def _check_model_spec(self) -> str | None:
        recorded = (self.catalog().meta() if self.exists else {}).get("model")
        if recorded and self.model_spec and self.model_spec != recorded:
            raise CollectionError(
                f"collection {self.name!r} was indexed with model {recorded!r}, not {self.model_spec!r} — "
                "omit --model, or index into another --collection"
            )
        return recorded

    # -- indexing -----------------------------------------------------------------------------
    def index(self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = DEFAULT_BATCH_SIZE,
              workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, progress: Progress | None = None,
              dtype: str = "float16") -> IndexReport:
        """Add new and changed files under ``paths``, reuse moved ones, drop deleted ones."""
        check_index_args(paths, batch_size)
        texts = all(is_text_source(p) for p in paths if os.path.isfile(os.path.expanduser(os.fspath(p))))
        texts = texts and any(os.path.isfile(os.path.expanduser(os.fspath(p))) for p in paths)
        kind = "text" if texts else "image"
        meta = self.catalog().meta() if self.exists else {}
        if meta.get("kind") and meta["kind"] != kind:
            raise CollectionError(
                f"collection {self.name!r} holds {meta['kind']}s; {', '.join(map(str, paths))} "
                f"{'are text files' if texts else 'are images'} — use another --collection"
            )
        self._check_model_spec()
        catalog = self.catalog(create=True)
        if not meta:
            encoder = self.encoder()
            catalog.set_meta(kind=kind, model=encoder.spec, fingerprint=encoder.fingerprint, dim=encoder.dim,
                             dtype=dtype, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             mbm_version=__version__)
        indexer = Indexer(self.encoder, catalog, self.folder, batch_size=batch_size, workers=workers,
                          max_pixels=max_pixels, progress=progress)
        report = indexer.index(paths, texts=texts)
        self.prepare_search()
        return report

    def prepare_search(self) -> None:
        """Leave what a fast cold search needs: a fresh vector index and, once the model has been
        loaded, its text tower exported for torch-free query encoding."""
        open_vectors(self.catalog(), self.folder)
        if self._encoder is not None and not os.environ.get("MBM_NO_FAST_TEXT") and self._fast_text() is None:
            export_query_encoder(self._encoder, self.folder / QUERY_ENCODER_DIR)

    def _fast_text(self) -> Any:
        """The torch-free text encoder exported for this collection's weights, if there is one."""
        if os.environ.get("MBM_NO_FAST_TEXT"):
            return None
        return load_query_encoder(self.folder / QUERY_ENCODER_DIR, self.catalog().meta().get("fingerprint", ""))

    # -- searching ----------------------------------------------------------------------------
    def searcher(self) -> Searcher:
        catalog = self.catalog()
        self._check_model_spec()
        if catalog.count() == 0:
            raise CollectionError(f"collection {self.name!r} is empty — run `mbm index PATH` to add files")
        vectors = open_vectors(catalog, self.folder)
        fast = self._fast_text()
        encode_text = fast.encode_texts if fast is not None else (lambda texts: self.encoder().encode_texts(texts))
        return Searcher(catalog, vectors, encode_text, lambda paths: image_paths_encoder(self.encoder())(paths))

    def search(self, query: str, *, k: int = 10, min_score: float | None = None, under: str | None = None,
               rerank: int = 0) -> list[Hit]:
        """Text, image path, or weighted ``"2:a + b.jpg - c"`` query against this collection.

        ``rerank=N`` re-scores the top N (at least k) with the model's fusion head."""
        if k <= 0:
            raise UsageError(f"-k/--top must be at least 1, not {k}")
        t0 = time.perf_counter()
        searcher = self.searcher()
        t1 = time.perf_counter()
        vector = searcher.query_vector(query)
        t2 = time.perf_counter()
        hits = searcher.search(vector, k=max(k, rerank), min_score=min_score, under=under)
        if rerank > 0:
            t3 = time.perf_counter()
            text_collection = self.catalog().meta().get("kind") == "text"
            hits = FusionReranker(self.encoder()).rerank(query, hits, text_collection)[:k]
            self.timings["rerank"] = time.perf_counter() - t3
        loading, self._unaccounted_load = self._unaccounted_load, 0.0
        self.timings.update(open=t1 - t0, encode=max(0.0, t2 - t1 - loading), search=time.perf_counter() - t2)
        if self._encoder is not None and not os.environ.get("MBM_NO_FAST_TEXT") and self._fast_text() is None:
            export_query_encoder(self._encoder, self.folder / QUERY_ENCODER_DIR)  # next cold search skips torch
        return hits

    # -- information --------------------------------------------------------------------------
    def info(self) -> CollectionInfo:
        catalog = self.catalog()
        meta = catalog.meta()
        stamp_path = self.folder / STAMP_FILE
        index_type = json.loads(stamp_path.read_text()).get("kind", "Flat") if stamp_path.is_file() else "not built"
        def size(p: Path) -> int:
            return p.stat().st_size if p.is_file() else 0
        catalog_bytes = sum(size(self.folder / (CATALOG_FILE + s)) for s in ("", "-wal", "-shm"))
        return CollectionInfo(self.name, str(self.folder), meta.get("kind", "?"), meta.get("model", "?"),
                              meta.get("fingerprint", "?"), int(meta.get("dim", 0)), catalog.count(), index_type,
                              catalog_bytes, size(self.folder / INDEX_FILE), meta.get("created_at", ""))

    @staticmethod
    def collections(store: str | os.PathLike[str] | Path | None = None) -> list[CollectionInfo]:
        root = resolve_store(store) / "collections"
        if not root.is_dir():
            return []
        out = []
        for folder in sorted(root.iterdir()):
            if (folder / CATALOG_FILE).is_file():
                with Engine(root.parent, folder.name) as eng:
                    out.append(eng.info())
        return out
