"""What a server serves and the limits it enforces (plain data, importable without the extra)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from mbm.errors import UsageError

THUMBNAIL_SIZES = (64, 128, 256, 512, 1024)  # a requested size is rounded up to one of these (bounded cache)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_query_chars: int = 1000
    max_terms: int = 16
    max_k: int = 200
    max_offset: int = 10_000
    max_rerank: int = 500
    batch_window_s: float = 0.002  # how long the first query of a batch waits for company
    max_batch: int = 32


@dataclass(frozen=True)
class ServerConfig:
    store: Path
    collections: list[str] = field(default_factory=list)  # empty: every collection in the store
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allow_image_urls: bool = False  # /knn-service may fetch image_url queries ...
    allow_private_image_urls: bool = False  # ... from loopback and private networks too (else public hosts only)
    roots: list[str] = field(default_factory=list)  # folders thumbnails may be read from (default: per collection)
    limits: Limits = field(default_factory=Limits)

    def check(self) -> None:
        """Refuse to listen beyond loopback without an API key."""
        if not is_loopback(self.host) and not self.api_key:
            raise UsageError(
                f"--host {self.host} is reachable from other machines — give an --api-key "
                "(or set MBM_API_KEY), or bind to 127.0.0.1"
            )
        if self.api_key is not None and len(self.api_key) < 8:
            raise UsageError(
                "the API key is shorter than 8 characters — use a long random one "
                "(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
