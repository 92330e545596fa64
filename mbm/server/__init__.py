"""HTTP API (ASGI, FastAPI) and web page over warm Engines; needs the ``server`` extra.

>>> from mbm.server import ServerConfig, create_app   # doctest: +SKIP
>>> app = create_app(ServerConfig(store=Path("~/.local/share/mbm"), collections=["photos"]))
"""

from __future__ import annotations

from typing import Any

from mbm.errors import MissingExtra
from mbm.server.config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "create_app", "require_extra"]


def require_extra() -> None:
    """Raise MissingExtra (naming ``pip install 'mbm[server]'``) when a server dependency is absent."""
    import importlib.util

    for module, package in (
        ("fastapi", "fastapi"),
        ("uvicorn", "uvicorn"),
        ("python_multipart", "python-multipart"),
        ("prometheus_client", "prometheus-client"),
    ):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra("`mbm serve`", "server", package)


def create_app(config: ServerConfig, engines: dict[str, Any] | None = None) -> Any:
    """The ASGI app; ``engines`` (name -> Engine) replaces opening them from ``config.store``."""
    require_extra()
    from mbm.server.app import build_app

    return build_app(config, engines)
