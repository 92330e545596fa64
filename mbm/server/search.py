"""/search: turn a request into an mbm Query, run it on the warm Engine, page the hits stably."""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from mbm.errors import MbmError
from mbm.retrieval.query import Query, Term
from mbm.retrieval.rerank import DEFAULT_RERANK_TOP
from mbm.server.collections import Served
from mbm.server.config import Limits
from mbm.server.errors import ApiError
from mbm.server.metrics import Metrics
from mbm.server.schemas import HitOut, SearchRequest, SearchResponse, TagOut, TermIn

_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "HEIF": ".heic",
    "AVIF": ".avif",
}
SOURCES = ("text", "query", "image", "embedding", "like", "terms")


def check_bounds(req: SearchRequest, limits: Limits) -> int | None:
    """Validate k, offset, rerank and query length; return the number of candidates to re-rank (None: the
    collection's default, ``Engine.default_rerank``)."""
    if not 1 <= req.k <= limits.max_k:
        raise ApiError(400, f"k={req.k} is out of range — give 1 to {limits.max_k}")
    if not 0 <= req.offset <= limits.max_offset:
        raise ApiError(400, f"offset={req.offset} is out of range — give 0 to {limits.max_offset}")
    top = DEFAULT_RERANK_TOP if req.rerank is True else None if req.rerank is None else int(req.rerank)
    if top is not None and not 0 <= top <= limits.max_rerank:
        raise ApiError(400, f"rerank={req.rerank} is out of range — give true/false or 1 to {limits.max_rerank}")
    for name in ("text", "query"):
        value = getattr(req, name)
        if value is not None and len(value) > limits.max_query_chars:
            raise ApiError(400, f"{name} is {len(value)} characters long — the limit is {limits.max_query_chars}")
    if req.terms is not None and len(req.terms) > limits.max_terms:
        raise ApiError(400, f"terms has {len(req.terms)} entries — the limit is {limits.max_terms}")
    given = [s for s in SOURCES if getattr(req, s) is not None]
    if len(given) != 1:
        raise ApiError(
            400,
            "give exactly one of text, query, image, embedding, like, terms"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    return top


def image_file(data_b64: str, limits: Limits, stack: ExitStack, field: str = "image") -> Path:
    """A base64 image checked (size, format, pixels) and written to a temp file that ``stack`` removes."""
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field} is not valid base64 — send the image file's bytes base64-encoded") from None
    return checked_image(data, limits, stack, field)


def checked_image(data: bytes, limits: Limits, stack: ExitStack, field: str = "image") -> Path:
    from PIL import Image, UnidentifiedImageError

    from mbm.indexer.decode import allowed_formats

    if not data:
        raise ApiError(400, f"{field} is empty — send an image file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(415, f"{field} is not an image mbm can read — send {', '.join(allowed_formats())}") from None
    if fmt not in allowed_formats():
        raise ApiError(415, f"{field} is a {fmt} image — send one of {', '.join(allowed_formats())}")
    if w * h > limits.max_image_pixels:
        raise ApiError(413, f"{field} is {w}x{h} = {w * h} pixels — the limit is {limits.max_image_pixels}")
    fd, name = tempfile.mkstemp(prefix="mbm-query-", suffix=_EXTENSIONS.get(fmt or "", ".img"))
    stack.callback(os.unlink, name)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def build_query(req: SearchRequest, served: Served, limits: Limits, stack: ExitStack) -> Any:
    if req.text is not None:
        return Query.text(req.text)
    if req.query is not None:
        refused = ApiError(
            400,
            "query names an image path — paths are never read from a client; send the image "
            "itself in `image` or `terms`, or an item id in `like`",
        )
        try:
            q = Query.parse(req.query)
        except MbmError as e:  # the same answer whether the file exists or not: no probing of the server's disk
            if str(e).startswith("query image"):
                raise refused from None
            raise
        if any(t.kind == "image" for t in q):
            raise refused
        return q
    if req.image is not None:
        return Query.image(image_file(req.image, limits, stack))
    if req.embedding is not None:
        return Query.vector(np.asarray(req.embedding, np.float32))
    if req.like is not None:
        return Query.vector(like_vector(served, req.like))
    assert req.terms is not None
    return Query([_term(t, served, limits, stack) for t in req.terms])


def _term(t: TermIn, served: Served, limits: Limits, stack: ExitStack) -> Term:
    given = [f for f in ("text", "image", "embedding", "like") if getattr(t, f) is not None]
    if len(given) != 1:
        raise ApiError(
            400,
            "each term needs exactly one of text, image, embedding, like"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if t.text is not None:
        if len(t.text) > limits.max_query_chars:
            raise ApiError(400, f"a term's text is {len(t.text)} characters — the limit is {limits.max_query_chars}")
        return Term(t.weight, "text", t.text)
    if t.image is not None:
        return Term(t.weight, "image", str(image_file(t.image, limits, stack, "a term's image")))
    if t.embedding is not None:
        return Term(t.weight, "vector", np.asarray(t.embedding, np.float32))
    return Term(t.weight, "vector", like_vector(served, int(t.like)))  # type: ignore[arg-type]


def like_vector(served: Served, item_id: int) -> np.ndarray:
    vector = served.engine.item_vector(item_id)
    if vector is None:
        raise ApiError(404, f"no item {item_id} in collection {served.name!r} (like={item_id})")
    return vector


def page(hits: list[Any], offset: int, k: int, resort: bool) -> list[Any]:
    """One page of a stable order: ``resort`` puts hits in score-then-id order first (the micro-batched
    path); the Engine's own answers are in their final order already (by score then id, by the sort
    key, the re-ranker's or the hybrid ranking's)."""
    ordered = sorted(hits, key=lambda h: (-h.score, h.id)) if resort else hits
    return ordered[offset : offset + k]


async def run_search(req: SearchRequest, served: Served, limits: Limits, metrics: Metrics) -> SearchResponse:
    top = check_bounds(req, limits)
    engine = served.engine
    reranks = top
    if top is None and req.text is not None:  # the collection's default
        reranks = await run_in_threadpool(engine.default_rerank, req.text, req.mode, req.sort)
    want = req.offset + req.k
    filtered = req.under or req.after or req.before or req.camera or req.sort != "score" or req.min_score == "auto"
    filtered = filtered or req.tag is not None or req.mode != "vector"
    batched = req.text is not None and not filtered and not req.return_embeddings
    plain = batched and not reranks
    default_ranked = batched and bool(reranks) and top is None  # re-ranked as the collection does by default
    query_vector = None
    if plain:  # micro-batched with concurrent text queries; the generation comes with the hits
        hits, (catalog_id, generation) = await served.batcher.search(req.text, want, req.min_score)  # type: ignore[arg-type]
    elif default_ranked:  # their encoding batched too; the Engine searches, re-ranks and pages each
        hits, (catalog_id, generation) = await served.batcher.search(
            req.text,  # type: ignore[arg-type]
            req.k,
            req.min_score,  # type: ignore[arg-type]
            reranked=True,
            offset=req.offset,
        )
    else:
        hits, query_vector, (catalog_id, generation) = await run_in_threadpool(
            _search_blocking, req, served, limits, metrics, top
        )
    rows = page(hits, req.offset, req.k, resort=True) if plain else hits  # the Engine paged its own answer
    out = [_hit_out(h, req.offset + i + 1) for i, h in enumerate(rows)]
    if req.return_embeddings:
        for h in out:
            vec = engine.item_vector(h.id)
            h.embedding = None if vec is None else [round(float(x), 6) for x in vec]
    return SearchResponse(
        collection=served.name,
        generation=generation,
        catalog_id=catalog_id,
        offset=req.offset,
        k=req.k,
        hits=out,
        query_embedding=query_vector,
    )


def _search_blocking(
    req: SearchRequest, served: Served, limits: Limits, metrics: Metrics, top: int | None
) -> tuple[list[Any], list[float] | None, tuple[str, int]]:
    engine = served.engine
    version = engine.generation()  # read first: a change during the search shows as a new generation next time
    with ExitStack() as stack:
        query = build_query(req, served, limits, stack)
        hits = engine.search(
            query,
            k=req.k,
            offset=req.offset,
            min_score=req.min_score,
            under=req.under,
            rerank=top,
            after=req.after,
            before=req.before,
            camera=req.camera,
            sort=req.sort,
            tag=req.tag,
            mode=req.mode,
        )
        timings = dict(engine.timings)
        vector = None
        if req.return_embeddings:
            vector = [round(float(x), 6) for x in engine.searcher().query_vector(query)]
    metrics.observe_search(served.name, timings)
    return hits, vector, version


def _hit_out(h: Any, rank: int) -> HitOut:
    from mbm.indexer.scan import display_path

    return HitOut(
        id=h.id,
        rank=rank,
        score=h.score,
        path=display_path(h.path),
        text=h.text,
        part=h.part,
        match=h.match,
        width=h.width,
        height=h.height,
        taken_at=h.taken_at,
        tags=None if getattr(h, "tags", None) is None else [TagOut(tag=t, score=s) for t, s in h.tags],
    )


__all__ = ["MbmError", "run_search", "checked_image", "build_query"]
