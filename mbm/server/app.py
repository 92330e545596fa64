"""The FastAPI app: middleware (body size, auth, metrics), error rendering, and the routes."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi import Query as Q
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from mbm.errors import MbmError
from mbm.server import clip_compat, thumbs
from mbm.server.collections import Collections
from mbm.server.config import ServerConfig
from mbm.server.errors import ApiError
from mbm.server.metrics import Metrics
from mbm.server.schemas import CollectionOut, ErrorOut, ItemOut, SearchRequest, SearchResponse
from mbm.server.search import run_search

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/healthz", "/", "/static/")  # the page and its assets hold no data; everything else needs the key
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (400, 401, 404, 413, 415, 503)}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def build_app(config: ServerConfig, engines: dict[str, Any] | None = None) -> FastAPI:
    config.check()
    metrics = Metrics()
    collections = Collections(config, metrics, engines)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        collections.start_warming()
        yield
        collections.close()

    app = FastAPI(title="mbm", summary="Cross-modal image/text search", lifespan=lifespan, responses=ERRORS)
    app.state.collections, app.state.metrics, app.state.config = collections, metrics, config
    _middleware(app, config, metrics)
    _handlers(app)
    _routes(app, config, collections, metrics)
    clip_compat.register(app, config, collections, metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _authorized(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or request.cookies.get("mbm_key") or ""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _middleware(app: FastAPI, config: ServerConfig, metrics: Metrics) -> None:
    limit = config.limits.max_body_bytes

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        path = request.url.path
        if (
            config.api_key
            and not (path in OPEN_PATHS or path.startswith("/static/"))
            and not _authorized(request, config.api_key)
        ):
            response: Response = error(
                401, "missing or wrong API key — send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
            )
        else:
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                response = error(413, f"request body of {length} bytes is over the limit of {limit} bytes")
            elif length is None and "chunked" in request.headers.get("transfer-encoding", "").lower():
                # a body of unknown size would be read whole before any limit applies
                response = error(411, "a request body needs a Content-Length header (chunked bodies are not accepted)")
            else:
                try:
                    response = await call_next(request)
                except Exception:  # noqa: BLE001 - never a traceback to the client, never a dead process
                    log.exception("unhandled error on %s", path)
                    response = error(500, "internal error — see the server's log")
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or ("/static" if path.startswith("/static/") else "other")
        status = str(response.status_code)
        metrics.requests.labels(endpoint, status).inc()
        metrics.latency.labels(endpoint, status).observe(time.perf_counter() - started)
        return response


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return error(e.status, e.message)

    @app.exception_handler(MbmError)
    async def mbm_error(_: Request, e: MbmError) -> JSONResponse:
        return error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}" + (f" (got {err['input']!r:.60})" if "input" in err else ""))
        return error(400, "bad request — " + "; ".join(parts))


def _routes(app: FastAPI, config: ServerConfig, collections: Collections, metrics: Metrics) -> None:
    limits = config.limits

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: every collection's model and index are loaded (503 until then)")
    async def readyz() -> JSONResponse:
        states = {n: ("ready" if s.ready else (s.error or "loading")) for n, s in collections.served.items()}
        return JSONResponse(
            {"ready": collections.ready, "collections": states}, status_code=200 if collections.ready else 503
        )

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics_text() -> Response:
        for name, s in collections.served.items():
            if s.ready:
                metrics.items.labels(name).set(s.engine.info().items)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/collections", response_model=list[CollectionOut], summary="The collections served")
    async def list_collections() -> list[CollectionOut]:
        return await run_in_threadpool(_collections, collections)

    @app.post(
        "/search", response_model=SearchResponse, summary="Search with text, an image, a vector, an item or terms"
    )
    async def search(req: SearchRequest) -> SearchResponse:
        return await run_search(req, collections.get(req.collection), limits, metrics)

    @app.post("/search/image", response_model=SearchResponse, summary="Search with an uploaded image file (multipart)")
    async def search_image(
        file: UploadFile = File(...),
        k: int = Form(10),
        offset: int = Form(0),
        min_score: str | None = Form(None, description='a cosine, or "auto"'),
        under: str | None = Form(None),
        after: str | None = Form(None),
        before: str | None = Form(None),
        camera: str | None = Form(None),
        sort: str = Form("score"),
        rerank: int = Form(0),  # image queries re-rank only when asked (against a text collection)
        collection: str | None = Form(None),
    ) -> SearchResponse:
        import base64

        data = await file.read(limits.max_body_bytes + 1)
        try:
            req = SearchRequest(
                image=base64.b64encode(data).decode(),
                k=k,
                offset=offset,
                min_score=min_score,
                under=under,
                after=after,
                before=before,
                camera=camera,
                sort=sort,
                rerank=rerank,
                collection=collection,
            )
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err.get("loc", ())) or "form"
            raise ApiError(400, f"bad search form — {where}: {err.get('msg')}") from None
        return await run_search(req, collections.get(collection), limits, metrics)

    @app.get("/items/{item_id}", response_model=ItemOut, summary="One item's metadata")
    async def item(item_id: int, collection: str | None = None) -> ItemOut:
        served = collections.get(collection)
        row = await run_in_threadpool(served.engine.item, item_id)
        if row is None:
            raise ApiError(404, f"no item {item_id} in collection {served.name!r}")
        from mbm.indexer.scan import display_path

        fields = {k: row.get(k) for k in ItemOut.model_fields if k not in ("path", "thumbnail")}
        thumb = None if row.get("text") is not None else f"/items/{item_id}/thumbnail?collection={served.name}"
        return ItemOut(**fields, path=display_path(row["path"]), thumbnail=thumb)

    @app.get(
        "/items/{item_id}/thumbnail",
        summary="A JPEG thumbnail of an indexed image (by id only)",
        response_class=FileResponse,
    )
    async def thumbnail(
        request: Request,
        item_id: int,
        size: int = Q(256, description="long side in pixels (up to 1024)"),
        collection: str | None = None,
    ) -> Response:
        served = collections.get(collection)
        row = await run_in_threadpool(served.engine.item, item_id)
        if row is None:
            raise ApiError(404, f"no item {item_id} in collection {served.name!r}")
        path, etag = await run_in_threadpool(thumbs.thumbnail, served, row, size)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type="image/jpeg", headers=headers)


def _collections(collections: Collections) -> list[CollectionOut]:
    out = []
    for name, s in collections.served.items():
        try:
            info = s.engine.info()
            generation = s.engine.generation()[1]
            out.append(
                CollectionOut(
                    name=name,
                    kind=info.kind,
                    model=info.model,
                    dim=info.dim,
                    items=info.items,
                    generation=generation,
                    ready=s.ready,
                    error=s.error,
                    rerank_default=info.rerank_default,
                )
            )
        except MbmError as e:
            out.append(
                CollectionOut(name=name, kind="?", model="?", dim=0, items=0, generation=0, ready=False, error=str(e))
            )
    return out
