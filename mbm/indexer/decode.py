"""Fast, safe image loading: JPEG draft mode, EXIF orientation, size limits, odd modes.

``read_file`` reads the bytes once (hashing them for move/duplicate detection) and
``decode`` turns them into an RGB image no smaller than the model needs. Every
failure is a ``DecodeError`` whose message is the one-line reason shown to users.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow's own bomb check raises only at 2x its limit; we check the header ourselves.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False
DEFAULT_MAX_PIXELS = 180_000_000  # 180 MP: larger than any camera, smaller than a bomb
MAX_FILE_BYTES = 512 * 1024 * 1024

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL, _DATETIME, _MAKE, _MODEL = 36867, 306, 271, 272

try:  # optional formats: registered when their plugins are installed (mbm[heif])
    import pillow_heif

    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
except ImportError:
    pass


class DecodeError(Exception):
    """A file that cannot be used as an image; the message says why."""


@dataclass
class ImageFacts:
    width: int
    height: int
    taken_at: str | None = None
    camera: str | None = None


def read_file(path: str) -> tuple[bytes, str]:
    """The file's bytes and their content hash."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DecodeError("file vanished before it could be read") from None
    except IsADirectoryError:
        raise DecodeError("is a folder, not a file") from None
    except OSError as e:
        raise DecodeError(f"cannot read ({e.strerror})") from None
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise DecodeError(f"file is over {MAX_FILE_BYTES // 2**20} MiB")
    return data, content_hash(data)


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode(data: bytes, min_side: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, ImageFacts]:
    """Decode to RGB, upright, with the short side reduced to no less than ``min_side`` where cheap."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd chunks; we report real failures
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
                    f"{max_pixels / 1e6:.0f} MP limit (raise it with --max-pixels if it is genuine)"
                )
            facts, orientation = _facts(img)
            if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: report the upright size
                facts.width, facts.height = height, width
            if img.format == "JPEG":
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size directly (4-5x faster for photos).
                img.draft("RGB", _draft_target(img.size, min_side))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img), facts
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, struct_error()) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        raise DecodeError(f"cannot decode: {msg}") from None


def struct_error() -> type[Exception]:
    import struct

    return struct.error


def _draft_target(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    # draft keeps both sides >= the request; ask for the short side so the crop keeps full resolution
    w, h = size
    scale = min_side / max(1, min(w, h))
    return max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))


def _facts(img: Image.Image) -> tuple[ImageFacts, int]:
    """Size, capture date and camera from the header and EXIF, and the EXIF orientation."""
    facts, orientation = ImageFacts(*img.size), 1
    try:
        exif = img.getexif()
        orientation = int(exif.get(0x0112, 1))
        sub = exif.get_ifd(_EXIF_IFD)
        taken = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if isinstance(taken, str) and len(taken) >= 19 and taken[:4].isdigit():
            facts.taken_at = f"{taken[:4]}-{taken[5:7]}-{taken[8:10]}T{taken[11:19]}"
        make, model = (str(exif.get(t, "")).strip("\x00 ") for t in (_MAKE, _MODEL))
        camera = model if make and model.startswith(make) else f"{make} {model}".strip()
        facts.camera = camera or None
    except Exception:  # noqa: BLE001 - broken EXIF must not make a good image unreadable
        pass
    return facts, orientation


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; transparent pixels become white (icons, clip art)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # CMYK (Pillow handles Adobe's inverted JPEGs), L, 1, P, YCbCr...


def facts_dict(facts: ImageFacts) -> dict[str, Any]:
    return {"width": facts.width, "height": facts.height, "taken_at": facts.taken_at, "camera": facts.camera}
