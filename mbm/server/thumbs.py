"""Thumbnails of indexed items, addressed by item id only, cached on disk beside the collection.

The file read is the item's catalog path, and only when it resolves (symlinks followed) inside
the collection's roots; the cache key holds the content hash, so a changed file gets a new
thumbnail and a new ETag.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from mbm.atomic import write_bytes
from mbm.server.collections import Served, thumbnail_dir
from mbm.server.config import THUMBNAIL_SIZES
from mbm.server.errors import ApiError


def bucket(size: int) -> int:
    """The cached size serving ``size``: the next of THUMBNAIL_SIZES (so the cache stays bounded)."""
    if not 1 <= size <= THUMBNAIL_SIZES[-1]:
        raise ApiError(400, f"size={size} is out of range — give 1 to {THUMBNAIL_SIZES[-1]}")
    return next(s for s in THUMBNAIL_SIZES if s >= size)


def inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def source_file(served: Served, row: dict[str, Any]) -> str:
    """The real file behind an item, refused when it is gone or resolves outside the indexed roots."""
    item_id = row["id"]
    if row.get("text") is not None:
        raise ApiError(404, f"item {item_id} is a text, it has no thumbnail")
    real = os.path.realpath(row["path"])
    if not inside(real, served.roots()):
        raise ApiError(403, f"item {item_id}'s file resolves outside the collection's indexed folders — not served")
    if not os.path.isfile(real):
        raise ApiError(404, f"item {item_id}'s file is gone (re-run `mbm index` to drop it)")
    return real


def thumbnail(served: Served, row: dict[str, Any], size: int) -> tuple[Path, str]:
    """``(cached JPEG, ETag)`` for one item at one bucket size; made on first request."""
    size = bucket(size)
    real = source_file(served, row)
    etag = hashlib.sha256(f"{row['hash']}:{size}".encode()).hexdigest()[:20]
    target = thumbnail_dir(served.engine) / f"{row['id']}-{size}-{etag}.jpg"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, _render(real, size))
    return target, f'"{etag}"'


def _render(path: str, size: int) -> bytes:
    import io

    from PIL import Image, ImageOps

    from mbm.indexer.decode import DEFAULT_MAX_PIXELS

    try:
        with Image.open(path) as img:
            if img.width * img.height > DEFAULT_MAX_PIXELS:
                raise ApiError(422, "the item's file has more pixels than mbm decodes")
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=85)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(
            422, f"the item's file cannot be decoded ({e.__class__.__name__}) — re-run `mbm index`"
        ) from None
