"""Searcher: query -> vector -> FAISS top-N -> catalog rows -> filters -> hits."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mbm.errors import UsageError
from mbm.indexer.scan import display_path
from mbm.retrieval.query import QueryLike, as_query, check_dimension, combine
from mbm.store.catalog import Catalog
from mbm.store.vectors import VectorIndex

EncodeFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Hit:
    """One result. ``text`` and ``part`` (line number) are set for text collections."""

    rank: int
    score: float
    id: int
    path: str
    part: int = 0
    text: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    modified: str | None = None
    taken_at: str | None = None
    camera: str | None = None
    match: float | None = None  # fusion re-ranker's match probability, when re-ranked

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = display_path(self.path)
        return d


class Searcher:
    """Wired from parts so tests can pass small real ones: ``Searcher(catalog, vectors, enc_text, enc_image)``."""

    def __init__(self, catalog: Catalog, vectors: VectorIndex, encode_text: EncodeFn, encode_image: EncodeFn):
        self.catalog = catalog
        self.vectors = vectors
        self.encode_text = encode_text
        self.encode_image = encode_image

    def query_vector(self, query: QueryLike) -> np.ndarray:
        """The normalized vector searched for a query: str (literal text), Path (image), ndarray, or Query."""
        q = as_query(query)
        check_dimension(q, self.vectors.dim)
        return combine(q, self.encode_text, self.encode_image)

    def search(
        self, query: QueryLike, *, k: int = 10, min_score: float | None = None, under: str | None = None
    ) -> list[Hit]:
        """Top-``k`` hits for ``query`` (anything :meth:`query_vector` takes, or a ready vector)."""
        if k <= 0:
            raise UsageError(f"-k/--top must be at least 1, not {k}")
        vector = self.query_vector(query)
        allowed = None
        if under is not None:
            folder = os.path.abspath(os.path.expanduser(under))
            allowed = self.catalog.ids_under(folder)
            if len(allowed) == 0:
                return []
        scores, ids = self.vectors.search(vector[None, :], k, allowed)
        pairs = [
            (float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and (min_score is None or s >= min_score)
        ]
        rows = self.catalog.rows([i for _, i in pairs])
        hits: list[Hit] = []
        for score, item_id in pairs:
            row = rows.get(item_id)
            if row is None:  # removed after the index was built
                continue
            hits.append(_hit(len(hits) + 1, score, row))
        return hits

    def search_many(self, vectors: np.ndarray, *, k: int = 10, min_score: float | None = None) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``vectors`` (already normalized) in one FAISS call: many
        queries share one pass over the index, which is what lets a server batch concurrent requests."""
        if k <= 0:
            raise UsageError(f"-k/--top must be at least 1, not {k}")
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        if vectors.shape[1] != self.vectors.dim:
            raise UsageError(
                f"query vectors have {vectors.shape[1]} dimensions but this collection's vectors have "
                f"{self.vectors.dim} — embed the query with the collection's model"
            )
        scores, ids = self.vectors.search(vectors, k)
        wanted = [int(i) for i in ids.ravel() if i >= 0]
        rows = self.catalog.rows(list(dict.fromkeys(wanted)))
        out: list[list[Hit]] = []
        for srow, irow in zip(scores, ids):
            hits: list[Hit] = []
            for s, i in zip(srow, irow):
                row = rows.get(int(i)) if i >= 0 else None
                if row is not None and (min_score is None or s >= min_score):
                    hits.append(_hit(len(hits) + 1, float(s), row))
            out.append(hits)
        return out


def _hit(rank: int, score: float, row: dict[str, Any]) -> Hit:
    modified = None
    if row.get("mtime_ns"):
        modified = dt.datetime.fromtimestamp(row["mtime_ns"] / 1e9, dt.timezone.utc).isoformat(timespec="seconds")
    return Hit(
        rank,
        round(score, 6),
        row["id"],
        row["path"],
        row["part"],
        row["text"],
        row["width"],
        row["height"],
        row["size"],
        modified,
        row["taken_at"],
        row["camera"],
    )


def decode_query_image(path: str, min_side: int, max_pixels: int | None = None) -> Any:
    """A query picture decoded exactly as the indexer decodes images; UsageError naming it when it cannot be."""
    from mbm.indexer.decode import DEFAULT_MAX_PIXELS, DecodeError, decode, read_file

    try:
        data, _ = read_file(path)
        return decode(data, min_side, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)[0]
    except DecodeError as e:
        raise UsageError(f"query image {display_path(path)} cannot be used: {e}") from None


def image_paths_encoder(encoder: Any, max_pixels: int | None = None) -> EncodeFn:
    """Encode image files (decoded exactly as the indexer decodes them) for image queries."""

    def encode(paths: Sequence[str]) -> np.ndarray:
        return encoder.encode_images([decode_query_image(p, encoder.image_size, max_pixels) for p in paths])

    return encode
