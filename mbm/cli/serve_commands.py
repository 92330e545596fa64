"""``mbm serve``: checks the server settings and runs :func:`mbm.server.create_app` under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbm.cli import output
from mbm.cli.options import StoreOpt


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8000,
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection",
            "-c",
            help="Serve this collection (repeat for several; default: every collection in the store).",
            show_default=False,
        ),
    ] = None,
    store: StoreOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MBM_API_KEY",
            help="Require this key on every endpoint but /healthz (Authorization: Bearer KEY or X-API-Key).",
            show_default=False,
        ),
    ] = None,
    allow_image_urls: Annotated[
        bool,
        typer.Option(
            "--allow-image-urls",
            help="Let /knn-service fetch `image_url` queries from public hosts (the server makes requests for clients).",
        ),
    ] = False,
    allow_private_image_urls: Annotated[
        bool,
        typer.Option(
            "--allow-private-image-urls",
            help="With --allow-image-urls: also fetch from loopback and private networks (only on trusted networks).",
        ),
    ] = False,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root",
            help="Folders thumbnails may be read from (default: the folder holding each collection's files); repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve collections over HTTP: JSON search API, thumbnails, metrics and a web page.

    Example: mbm serve --collection photos --port 8000
    """
    from mbm.config import resolve_store
    from mbm.server import ServerConfig, create_app, require_extra

    require_extra()
    import uvicorn

    config = ServerConfig(
        store=resolve_store(store),
        collections=list(collection or []),
        host=host,
        port=port,
        api_key=api_key or None,
        allow_image_urls=allow_image_urls or allow_private_image_urls,
        allow_private_image_urls=allow_private_image_urls,
        roots=[str(r) for r in root or []],
    )
    config.check()
    app = create_app(config)
    output.err(f"mbm serving {', '.join(app.state.collections.served)} on http://{host}:{port}/ (API docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
