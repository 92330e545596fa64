"""clip-retrieval compatibility: ``POST /knn-service`` and ``GET /indices-list`` as `clip back` speaks them,
so clip-retrieval's ``ClipClient(url="http://HOST:PORT/knn-service", indice_name=COLLECTION)`` works unchanged.

An indice is a collection. Options mbm has no model for (mclip, safety, violence, aesthetic
embeddings) are accepted and ignored, as clip back does when it was started without them;
``deduplicate`` drops results with the same file content; ``image_url`` is fetched only when
the server runs with ``--allow-image-urls``, and then from public addresses only unless
``--allow-private-image-urls`` (mbm/server/fetch.py).
"""

from __future__ import annotations

import base64
import os
from contextlib import ExitStack
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from mbm.retrieval.query import Query
from mbm.server.collections import Collections, Served
from mbm.server.config import ServerConfig
from mbm.server.errors import ApiError
from mbm.server.fetch import download
from mbm.server.metrics import Metrics
from mbm.server.schemas import KnnRequest, KnnResult
from mbm.server.search import checked_image, image_file


def register(app: FastAPI, config: ServerConfig, collections: Collections, metrics: Metrics) -> None:
    limits = config.limits

    @app.get("/indices-list", response_model=list[str], summary="clip back: the indices (collections) served")
    async def indices_list() -> list[str]:
        return list(collections.served)

    # ClipClient posts json.dumps(...) as raw data, with no Content-Type: the body is read as JSON whatever it says
    body_schema = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": KnnRequest.model_json_schema()}}}
    }

    @app.post(
        "/knn-service",
        response_model=list[KnnResult],
        summary="clip back: nearest neighbours",
        openapi_extra=body_schema,
    )
    async def knn_service(request: Request) -> list[dict[str, Any]]:
        req = _parse(await request.body())
        served = collections.get(req.indice_name)
        wanted = req.num_result_ids if req.num_result_ids is not None else req.num_images
        for name, value in (("num_images", req.num_images), ("num_result_ids", wanted)):
            if not 1 <= value <= limits.max_k:
                raise ApiError(400, f"{name}={value} is out of range — give 1 to {limits.max_k}")
        if req.text is not None and len(req.text) > limits.max_query_chars:
            raise ApiError(400, f"text is {len(req.text)} characters long — the limit is {limits.max_query_chars}")
        if req.image_url and not config.allow_image_urls:
            raise ApiError(
                400,
                "image_url queries are off on this server (it would fetch URLs for clients) — "
                "send the image base64-encoded in `image`, or start `mbm serve --allow-image-urls`",
            )
        base = str(request.base_url).rstrip("/")
        if req.text:  # clip back: text first, then image, then embedding (an empty text counts as none)
            hits, _ = await served.batcher.search(req.text, wanted)
        else:
            hits = await run_in_threadpool(_search, req, served, config, wanted)
        return await run_in_threadpool(_results, hits, req, served, base)


def _parse(raw: bytes) -> KnnRequest:
    from pydantic import ValidationError

    try:
        return KnnRequest.model_validate_json(raw or b"{}")
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "body"
        raise ApiError(400, f"bad knn-service request — {where}: {err.get('msg')}") from None


def _search(req: KnnRequest, served: Served, config: ServerConfig, wanted: int) -> list[Any]:
    with ExitStack() as stack:
        if req.image is not None:
            query: Any = Query.image(image_file(req.image, config.limits, stack))
        elif req.image_url:
            query = Query.image(
                checked_image(
                    download(
                        req.image_url, config.limits.max_body_bytes, allow_private=config.allow_private_image_urls
                    ),
                    config.limits,
                    stack,
                    "image_url",
                )
            )
        elif req.embedding_input is not None:
            query = Query.vector(np.asarray(req.embedding_input, np.float32))
        else:
            raise ApiError(400, "must fill one of text, image, image_url and embedding_input")
        return served.engine.search(query, k=wanted)


def _results(hits: list[Any], req: KnnRequest, served: Served, base: str) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for h in hits:
        if req.deduplicate:
            digest = (served.engine.item(h.id) or {}).get("hash", str(h.id))
            if digest in seen:
                continue
            seen.add(digest)
        is_text = h.text is not None
        out.append(
            {
                "id": h.id,
                "similarity": h.score,
                "url": None if is_text else f"{base}/items/{h.id}/thumbnail?size=1024&collection={served.name}",
                "caption": h.text if is_text else os.path.basename(h.path),
                "image_path": None if is_text else h.path,
            }
        )
        if len(out) >= req.num_images:
            break
    return out


__all__ = ["register", "base64"]
