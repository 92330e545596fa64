"""Searcher: query -> vector -> FAISS top-N -> catalog rows -> filters -> hits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mbm.errors import UsageError
from mbm.indexer.scan import display_path
from mbm.retrieval.query import QueryLike, as_query, check_dimension, combine
from mbm.store.catalog import Catalog
from mbm.store.filters import ItemFilter, item_when
from mbm.store.vectors import VectorIndex

EncodeFn = Callable[[list[str]], np.ndarray]

SORTS = ("score", "date", "path")
MAX_SORTED = 10_000  # hits a date or path sort orders at most (the best-scoring ones above the cutoff)
BACKGROUND_SAMPLE = 2_000  # items whose scores give the background of --min-score auto
AUTO_SIGMAS = 2.5  # robust std above the background median: the best F1 in benchmarks/min_score_auto.py


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
        self._background: tuple[Any, np.ndarray] | None = None  # (catalog version, sampled vectors)

    def query_vector(self, query: QueryLike) -> np.ndarray:
        """The normalized vector searched for a query: str (literal text), Path (image), ndarray, or Query."""
        q = as_query(query)
        check_dimension(q, self.vectors.dim)
        return combine(q, self.encode_text, self.encode_image)

    def search(
        self,
        query: QueryLike,
        *,
        k: int = 10,
        min_score: float | str | None = None,
        under: str | None = None,
        where: ItemFilter | None = None,
        sort: str = "score",
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> list[Hit]:
        """Top-``k`` hits for ``query`` (anything :meth:`query_vector` takes, or a ready vector) among the
        items ``where`` (and ``under``) allows, the filter applied inside the vector search.

        ``min_score="auto"`` drops hits no closer than the collection's background (:meth:`auto_cutoff`).
        ``sort="date"`` or ``"path"``: every hit above the cutoff (``"auto"`` unless given; at most
        :data:`MAX_SORTED`) ordered by that key, then id; ``k`` is not applied, the caller pages.
        ``nprobe`` / ``ef`` override the ANN index's tuned IVF / HNSW settings for this search."""
        if k <= 0:
            raise UsageError(f"-k/--top must be at least 1, not {k}")
        if sort not in SORTS:
            raise UsageError(f"--sort {sort!r} is not one of {', '.join(SORTS)}")
        vector = self.query_vector(query)
        where = where or ItemFilter()
        if under is not None:
            where = ItemFilter.of([*where.under, under], where.after, where.before, where.camera)
        allowed = where.ids(self.catalog.conn) if where else None
        if allowed is not None and len(allowed) == 0:
            return []
        cutoff = self.cutoff(vector, "auto" if min_score is None and sort != "score" else min_score)
        wanted = k if sort == "score" else MAX_SORTED
        scores, ids = self.vectors.search(vector[None, :], wanted, allowed, nprobe=nprobe, ef=ef)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and (cutoff is None or s >= cutoff)]
        rows = self.catalog.rows([i for _, i in pairs])
        found = [(score, rows[i]) for score, i in pairs if i in rows]  # a missing row: removed after the build
        if sort == "score":
            found.sort(key=lambda p: (-p[0], p[1]["id"]))  # ties in a stable order, page after page
        elif sort == "date":  # undated items last
            found.sort(key=lambda p: (item_when(p[1]["taken_at"], p[1]["mtime_ns"]) or "~", p[1]["id"]))
        else:
            found.sort(key=lambda p: (p[1]["path"], p[1]["part"], p[1]["id"]))
        return [hit_from_row(rank, score, row) for rank, (score, row) in enumerate(found, 1)]

    def cutoff(self, vector: np.ndarray, min_score: float | str | None) -> float | None:
        """A score threshold: ``min_score`` itself, or for ``"auto"`` :meth:`auto_cutoff`."""
        if min_score is None or not isinstance(min_score, str):
            return min_score
        if min_score.strip().lower() != "auto":
            raise UsageError(f"--min-score {min_score!r} is not a number or 'auto' — e.g. --min-score 0.25")
        return self.auto_cutoff(vector)

    def auto_cutoff(self, vector: np.ndarray) -> float:
        """The score above which a hit stands out from the collection's background for this query.

        The background is the query's scores against a fixed random sample of the collection
        (:data:`BACKGROUND_SAMPLE` items, drawn once per generation); the cutoff is its median plus
        :data:`AUTO_SIGMAS` robust standard deviations (1.4826 x the median absolute deviation), so
        the few items that do match the query do not widen the background they must stand out from."""
        scores = self.background_scores(vector)
        if len(scores) < 2:
            return -1.0
        median = float(np.median(scores))
        spread = 1.4826 * float(np.median(np.abs(scores - median)))
        return median + AUTO_SIGMAS * spread

    def background_scores(self, vector: np.ndarray) -> np.ndarray:
        """The query's scores against the background sample (see :meth:`auto_cutoff`)."""
        sample = self._background_sample()
        return sample @ np.asarray(vector, np.float32) if len(sample) else np.zeros(0, np.float32)

    def _background_sample(self) -> np.ndarray:
        version = self.catalog.version()
        if self._background is None or self._background[0] != version:
            from mbm.store.catalog import read_snapshot

            with read_snapshot(self.catalog):
                ids = ItemFilter().ids(self.catalog.conn)  # every item
                rng = np.random.default_rng(0)
                picked = np.sort(rng.choice(ids, min(len(ids), BACKGROUND_SAMPLE), replace=False)) if len(ids) else ids
                _, vectors = self.catalog.embeddings_of(picked.tolist())
            self._background = (version, np.ascontiguousarray(vectors, np.float32))
        return self._background[1]

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
                    hits.append(hit_from_row(len(hits) + 1, float(s), row))
            out.append(hits)
        return out


def hit_from_row(rank: int, score: float, row: dict[str, Any], cls: type[Hit] = Hit) -> Hit:
    """The ``cls`` (a :class:`Hit`, or a subclass such as ``TaggedHit``) for one ``Catalog.rows`` row."""
    modified = None
    if row.get("mtime_ns"):
        modified = dt.datetime.fromtimestamp(row["mtime_ns"] / 1e9, dt.timezone.utc).isoformat(timespec="seconds")
    return cls(
        rank,
        round(float(score), 6),
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
