"""CollectionHandle: one collection in one store as the Engine holds it open: its catalog (opened
read-only until a write needs it, reopened when the file is replaced), its model (loaded once, checked
against the recorded spec and fingerprint), the torch-free text encoder exported beside it, and what
``mbm info`` reports, and which fusion re-ranker its searches use (the exported one for text queries when
there is one) and when. Indexing and searching are the Engine's (``mbm.engine``), on top of this."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mbm.collection.checks import check_model_spec
from mbm.collection.info import CollectionInfo, collection_info
from mbm.collection.model import check_fingerprint
from mbm.config import CATALOG_FILE, DEFAULT_COLLECTION, collection_dir, ensure_store, resolve_store
from mbm.errors import CollectionError, UsageError
from mbm.models.factory import Encoder, load_model, no_fusion_head, normalize_spec
from mbm.models.query_encoder import QUERY_ENCODER_DIR, export_query_encoder, load_query_encoder, load_query_fusion
from mbm.retrieval.query import Term
from mbm.retrieval.rerank import (
    DEFAULT_RERANK_TOP,
    FusionReranker,
    OnnxScorer,
    TorchScorer,
    calibrated_top,
    rerank_term,
)
from mbm.retrieval.searcher import Searcher
from mbm.store.catalog import Catalog, CatalogState
from mbm.store.lock import CollectionLock
from mbm.store.tokens import FUSION_KEY

H = TypeVar("H", bound="CollectionHandle")


class CollectionHandle:
    """A collection opened lazily: nothing is read until first use; the catalog and the model stay open."""

    def __init__(
        self,
        store: Path,
        collection: str = DEFAULT_COLLECTION,
        *,
        model: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        encoder: Encoder | None = None,
    ):
        self.store = store
        self.name = collection
        self.folder = collection_dir(store, collection)
        self.model_spec = normalize_spec(model) if model else None
        self.device = device
        self.precision = precision
        self._encoder = encoder
        self._catalog: Catalog | None = None
        self._catalog_inode: tuple[int, int] | None = None
        self._lock = CollectionLock(self.folder, collection)
        self._vectors: Any = None  # a VectorIndex, or a MilvusIndex (mbm.scale.milvus: the same search interface)
        self._searcher: Searcher | None = None
        self._exports: dict[str, tuple[str, Any]] = {}  # part of the query-encoder export -> (fingerprint, it)
        self._refresh = threading.RLock()
        self._unaccounted_load = 0.0
        self.timings: dict[str, float] = {}  # seconds per phase of the last search (imports, model, encode, ...)

    @classmethod
    def open(
        cls: type[H], store: str | os.PathLike[str] | None = None, collection: str = DEFAULT_COLLECTION, **kwargs: Any
    ) -> H:
        """Open (lazily) ``collection`` in ``store`` (default: $MBM_HOME or the XDG data folder)."""
        return cls(resolve_store(store), collection, **kwargs)

    def __enter__(self: H) -> H:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self._drop_catalog()

    def _drop_catalog(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        self._catalog, self._catalog_inode, self._vectors, self._searcher = None, None, None, None

    # -- collection ---------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.folder / CATALOG_FILE).is_file()

    def catalog(self, *, create: bool = False, write: bool = False) -> Catalog:
        """The catalog, opened read-only unless ``write``/``create`` (then reopened for writing)."""
        path = self.folder / CATALOG_FILE
        if self._catalog is not None:
            try:
                st = path.stat()
                replaced = (st.st_dev, st.st_ino) != self._catalog_inode
            except OSError:
                replaced = True
            if replaced or ((write or create) and self._catalog.readonly):
                self._drop_catalog()  # another file now (replaced or removed), or we need to write
        if self._catalog is None:
            if not create and not self.exists:
                raise CollectionError(self._missing_message())
            if create:
                ensure_store(self.store)
                self.folder.mkdir(parents=True, exist_ok=True)
            self._catalog = Catalog.open(path, create=create, readonly=not (write or create))
            st = path.stat()
            self._catalog_inode = (st.st_dev, st.st_ino)
        return self._catalog

    def _meta(self) -> dict[str, str]:
        return self.catalog().meta() if self.exists else {}

    def _missing_message(self) -> str:
        others = [c.name for c in type(self).collections(self.store)]
        hint = f" (collections here: {', '.join(others)})" if others else ""
        return (
            f"no collection {self.name!r} in {self.store}{hint} — run `mbm index PATH"
            f"{'' if self.name == DEFAULT_COLLECTION else ' --collection ' + self.name}` first"
        )

    def encoder(self) -> Encoder:
        """The collection's model (or the requested one for a new collection), loaded once."""
        if self._encoder is None:
            recorded = self._check_model_spec()
            self._encoder = load_model(self.model_spec or recorded, device=self.device, precision=self.precision)
            self.timings.update(self._encoder.load_seconds)
            self._unaccounted_load = sum(self._encoder.load_seconds.values())
        enc = self._encoder
        if check_fingerprint(self.name, self._meta(), enc):
            if self._catalog is not None and not self._catalog.readonly:  # an index run: record the full one
                self._catalog.set_meta(fingerprint=enc.fingerprint)
        return enc

    def _check_model_spec(self, meta: dict[str, str] | None = None) -> str | None:
        return check_model_spec(self.name, self._meta() if meta is None else meta, self.model_spec)

    def _export_query_encoder(self) -> None:
        """Export the text tower for torch-free queries (only by the lock holder, once per fingerprint)."""
        if self._encoder is None or os.environ.get("MBM_NO_FAST_TEXT") or self._fast_text() is not None:
            return
        with self._lock.attempt() as holder:
            if holder:
                export_query_encoder(self._encoder, self.folder / QUERY_ENCODER_DIR, self._meta().get("fingerprint"))

    def _fast_text(self) -> Any:
        """The torch-free text encoder exported for this collection's weights, if there is one (loaded once)."""
        return self._exported("text", load_query_encoder)

    def _fast_fusion(self) -> Any:
        """The torch-free fusion head exported beside the text tower for these weights, if there is one."""
        return self._exported("fusion", load_query_fusion)

    def _exported(self, part: str, load: Callable[[Path, str], Any]) -> Any:
        """A part of the collection's query-encoder export, loaded once per recorded fingerprint (None: none usable,
        or ``MBM_NO_FAST_TEXT`` set)."""
        if os.environ.get("MBM_NO_FAST_TEXT"):
            return None
        fingerprint = self._meta().get("fingerprint", "")
        held = self._exports.get(part)
        if held is None or held[0] != fingerprint:
            value = load(self.folder / QUERY_ENCODER_DIR, fingerprint)
            if value is None:
                return None
            self._exports[part] = held = (fingerprint, value)
        return held[1]

    # -- re-ranking: which head, and whether a search re-ranks unless told ---------------------
    def _reranker(self, kind: str) -> FusionReranker:
        """The re-ranker for a query of ``kind``: torch-free for text when the collection's query-encoder export has
        the fusion head (``mbm.models.fusion_onnx``), else the model's own head."""
        meta = self._meta()
        if meta.get(FUSION_KEY) == "0":  # known without loading the model
            raise no_fusion_head(meta.get("model", "?"))
        if kind == "text":
            text, fusion = self._fast_text(), self._fast_fusion()
            if text is not None and fusion is not None:
                return FusionReranker(OnnxScorer(text, fusion), self.model_spec or meta.get("model"), self.name)
        encoder = self.encoder()
        return FusionReranker(TorchScorer(encoder), encoder.spec, self.name)

    def default_rerank(self, query: Any, mode: str = "vector", sort: str = "score") -> int:
        """How many candidates :meth:`search` re-ranks for ``query`` unless told (``rerank=None``): DEFAULT_RERANK_TOP
        where re-ranking was measured to help (a text query over pictures with stored tokens, a model whose folder
        holds a re-ranking calibration: the bundled model, see its MODEL_CARD.md; vector mode, sorted by score),
        else 0. Reads the collection's records only; loads no model."""
        return DEFAULT_RERANK_TOP if self._default_term(query, mode, sort) is not None else 0

    def _default_term(self, query: Any, mode: str, sort: str) -> Term | None:
        """The text term a search re-ranks with unless told (see :meth:`default_rerank`), or None."""
        meta = self._meta()
        if mode != "vector" or sort != "score" or not calibrated_top(meta, self.model_spec or meta.get("model")):
            return None
        try:
            return rerank_term(query, text_collection=False)
        except UsageError:  # images, several texts, a raw vector: searched as they are
            return None

    def _auto_reranker(self, query: Any, mode: str, sort: str) -> tuple[FusionReranker | None, Term | None]:
        """The re-ranker and term of a search left to :meth:`default_rerank`, or ``(None, None)``."""
        term = self._default_term(query, mode, sort)
        return (None, None) if term is None else (self._reranker("text"), term)

    # -- information --------------------------------------------------------------------------
    def info(self) -> CollectionInfo:
        return collection_info(self.name, self.folder, self.catalog())

    def state(self) -> CatalogState:
        return self.catalog().state()

    @classmethod
    def collections(cls, store: str | os.PathLike[str] | Path | None = None) -> list[CollectionInfo]:
        """What ``info`` reports of every collection in ``store``, by name."""
        root = resolve_store(store) / "collections"
        if not root.is_dir():
            return []
        out = []
        for folder in sorted(root.iterdir()):
            if (folder / CATALOG_FILE).is_file():
                with cls(root.parent, folder.name) as eng:
                    out.append(eng.info())
        return out
