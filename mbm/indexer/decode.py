"""Safe, bounded image loading: a format allowlist, size limits, JPEG draft mode, EXIF, odd modes.

``read_file`` reads the bytes once (hashing them for move/duplicate detection) and
``decode`` turns them into an RGB image no smaller than the model needs. Every
failure is a ``DecodeError`` whose message is the one-line reason shown to users.

Nothing here changes Pillow's globals (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``,
warning filters): mbm is also a library inside other programs. mbm's own pixel limit
is checked from the header, and files are opened by the allowlisted format plugins
directly, so Pillow's open-time bomb check (which reads the global) does not apply.
Memory per image is bounded: JPEGs decode at reduced DCT scale, other formats are
reduced strip by strip before any mode conversion, extreme aspect ratios are cropped,
and a shared :class:`PixelBudget` caps the full-size pixels decoding at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from mbm.indexer.scan import IMAGE_EXTENSIONS, SizeLimit, Unreadable, open_regular

DEFAULT_MAX_PIXELS = 180_000_000  # 180 MP: larger than any camera, smaller than a bomb
MAX_FILE_BYTES = 512 * 1024 * 1024
IMAGE_LIMIT = SizeLimit(MAX_FILE_BYTES, "an image", "re-encode it smaller or split it")
MAX_ASPECT = 20  # long side : short side; beyond it the centre is kept (see _aspect_box)
IN_FLIGHT_PIXELS = 256_000_000  # full-size pixels decoding at once across threads (~1 GiB)
_STRIP_PIXELS = 1 << 20  # pixels converted per step while reducing
DECODER_BLOCK = 1 << 24  # bytes handed to a decoder per call (see decode)

_EXIF_IFD = 0x8769
_ORIENTATION, _DATETIME_ORIGINAL, _DATETIME, _MAKE, _MODEL = 0x0112, 36867, 306, 271, 272
_EXIF_DATE_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce averages correctly; the others are converted (per strip) first.
_REDUCIBLE = frozenset("L LA La RGB RGBA RGBa CMYK YCbCr LAB HSV I F".split())
# Decoders that run external programs (Ghostscript) or are not images: never in the allowlist.
_NEVER = frozenset({"EPS", "PDF"})
_FOREIGN = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "PostScript/EPS"), (b"%PDF", "a PDF document"))

_formats_lock = threading.Lock()
_formats: tuple[str, ...] | None = None


class DecodeError(Exception):
    """A file that cannot be used as an image; the message says why."""


@dataclass
class ImageFacts:
    width: int
    height: int
    taken_at: str | None = None
    camera: str | None = None


class PixelBudget:
    """Full-size pixels held by decoding threads: ``hold(n)`` waits until ``n`` more fit.

    An image larger than the whole budget still decodes, alone, so nothing waits forever."""

    def __init__(self, capacity: int = IN_FLIGHT_PIXELS):
        self.capacity = capacity
        self.in_use = 0
        self.waiting = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            self.waiting += 1
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.capacity)
            self.waiting -= 1
            self.in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


def allowed_formats() -> tuple[str, ...]:
    """Pillow format names mbm decodes: those of IMAGE_EXTENSIONS (HEIF/AVIF when a plugin provides them)."""
    global _formats
    with _formats_lock:
        if _formats is None:
            _register_optional_plugins()
            Image.init()
            by_extension = Image.registered_extensions()
            names = {by_extension[e] for e in IMAGE_EXTENSIONS if e in by_extension} - _NEVER
            _formats = tuple(f for f in Image.ID if f in names)  # Pillow's own probing order
        return _formats


def _register_optional_plugins() -> None:
    # Registering an opener changes Pillow's registry for the whole process, so it waits
    # until mbm first decodes (a program that imports mbm without decoding keeps its Pillow).
    try:
        import pillow_heif
    except ImportError:
        return
    pillow_heif.register_heif_opener()
    if "AVIF" not in Image.registered_extensions().values() and hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()


def read_file(path: str) -> tuple[bytes, str]:
    """The file's bytes and their content hash."""
    try:
        with open_regular(path, IMAGE_LIMIT) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except Unreadable as e:
        raise DecodeError(str(e)) from None
    except OSError as e:
        raise DecodeError(f"cannot read ({e.strerror or e})") from None
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise DecodeError(IMAGE_LIMIT.problem(len(data)) or "file grew while it was read")
    return data, content_hash(data)


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode(
    data: bytes, min_side: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, budget: PixelBudget | None = None
) -> tuple[Image.Image, ImageFacts]:
    """Decode to RGB, upright, with the short side reduced to no less than ``min_side`` where cheap.

    ``budget`` is shared by the threads of one run to bound the full-size pixels in memory."""
    try:
        img = _open(data)
        # Feed the decoder up to 16 MiB per call, not Pillow's 64 KiB: every call releases and retakes the GIL,
        # and a thread that retakes it behind a busy one (a model importing torch) waits a switch interval
        # each time; a 1 MB JPEG decoded 57 -> 30 ms beside a torch import (the same pixels)
        if isinstance(img, ImageFile.ImageFile):
            img.decodermaxblock = max(img.decodermaxblock, min(len(data), DECODER_BLOCK))
        width, height = img.size
        if width * height > max_pixels:
            raise DecodeError(_over_limit(width, height, max_pixels))
        if img.format in ("JPEG", "MPO"):  # MPO: multi-picture JPEGs (many phone photos)
            # DCT scaling: decode at 1/2, 1/4 or 1/8 size directly (4-5x faster for photos).
            img.draft("RGB", _draft_target(img.size, max(1, min_side)))
        # After draft: the pixels the decoder really allocates. Held from here on, since
        # reading a PNG's EXIF may already decode the whole image.
        with budget.hold(img.width * img.height) if budget else contextlib.nullcontext():
            facts, orientation = _facts(img, width, height)
            img = _reduced(img, max(1, min_side))
        if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: report the upright size
            facts.width, facts.height = height, width
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        return _to_rgb(img), facts
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(_unidentified(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(
            f"over Pillow's own size limit for this format ({e}) — convert it to PNG or JPEG, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS in the program that runs mbm"
        ) from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, struct.error, Warning) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        raise DecodeError(f"cannot decode: {msg}") from None


def jpeg_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageFacts, int] | None:
    """Facts and EXIF orientation of a plain JPEG from its header alone (no pixels decoded), for decoders
    elsewhere (``mbm.indexer.device_decode``); None for anything else (other formats, MPO, CMYK), which
    :func:`decode` handles. Over ``max_pixels`` is the same :class:`DecodeError` as :func:`decode` gives."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        img = _open(data)
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        width, height = img.size
        if width * height > max_pixels:
            raise DecodeError(_over_limit(width, height, max_pixels))
        facts, orientation = _facts(img, width, height)
    except DecodeError:
        raise
    except Exception:  # noqa: BLE001 - let the full decoder give the file's own error
        return None
    if orientation in (5, 6, 7, 8):
        facts.width, facts.height = height, width
    return facts, orientation


def _over_limit(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
        f"{max_pixels / 1e6:.0f} MP limit (raise it with --max-pixels if it is genuine)"
    )


def _open(data: bytes) -> Image.Image:
    """Identify ``data`` with the allowlisted plugins only, as ``Image.open`` does minus its global bomb check."""
    fp, prefix = io.BytesIO(data), data[:16]
    for name in allowed_formats():
        factory, accept = Image.OPEN[name]
        accepted = not accept or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "almost this format"
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all, as Image.open treats it
    raise UnidentifiedImageError


def _unidentified(data: bytes) -> str:
    supported = ", ".join(allowed_formats())
    for magic, kind in _FOREIGN:
        if data[:1024].lstrip()[: len(magic)] == magic:
            return f"is {kind}, not an image format mbm decodes ({supported}) — convert it to PNG or JPEG"
    return f"not an image (or a format mbm does not decode; it reads {supported})"


def _reduced(img: Image.Image, min_side: int) -> Image.Image:
    """The loaded image cropped to MAX_ASPECT, in a mode that reduces, with the short side near ``min_side``."""
    img.load()
    width, height = img.size
    box = _aspect_box(width, height)
    factor = max(1, min(width, height) // min_side)
    mode = _working_mode(img)
    if factor > 1 or mode != img.mode or box != (0, 0, width, height):
        return _shrink(img, box, factor, mode)
    return img


def _draft_target(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    # draft keeps both sides >= the request; ask for the short side so the crop keeps full resolution
    w, h = size
    scale = min_side / max(1, min(w, h))
    return max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))


def _aspect_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centre of an image longer than MAX_ASPECT:1, else the whole image.

    The model sees a centre square (preprocessing scales the short side and crops), so the
    cut-off ends were never seen; keeping them would make the scaled intermediate huge
    (100000x10 becomes 2240000x224). Panoramas up to 20:1 are kept whole."""
    if width > height * MAX_ASPECT:
        keep = height * MAX_ASPECT
        return (width - keep) // 2, 0, (width - keep) // 2 + keep, height
    if height > width * MAX_ASPECT:
        keep = width * MAX_ASPECT
        return 0, (height - keep) // 2, width, (height - keep) // 2 + keep
    return 0, 0, width, height


def _working_mode(img: Image.Image) -> str:
    """The mode to reduce in: palette and bit images are expanded, 16-bit widened to 32-bit."""
    mode = img.mode
    if mode in _REDUCIBLE:
        return mode
    if mode == "1":
        return "L"
    if mode.startswith("I;16"):
        return "I"
    if mode == "PA" or "transparency" in img.info:
        return "RGBA"
    return "RGB"


def _shrink(img: Image.Image, box: tuple[int, int, int, int], factor: int, mode: str) -> Image.Image:
    """Crop ``box``, convert to ``mode`` and reduce by ``factor``, a strip of rows at a time.

    Only the small result and one strip exist beside the decoded image: converting a
    180 MP RGBA PNG whole (then compositing it on white) would cost several GiB."""
    left, top, right, bottom = box
    rows = max(1, _STRIP_PIXELS // max(1, right - left) // factor) * factor
    out = Image.new(mode, (-(-(right - left) // factor), -(-(bottom - top) // factor)))
    for y in range(top, bottom, rows):
        strip = img.crop((left, y, right, min(y + rows, bottom)))
        if strip.mode != mode:
            strip = strip.convert(mode)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, (y - top) // factor))
    return out


def _facts(img: Image.Image, width: int, height: int) -> tuple[ImageFacts, int]:
    """Header size, capture date and camera from EXIF, and the EXIF orientation (1 if unusable)."""
    facts = ImageFacts(width, height)
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not make a good image unreadable
        return facts, 1
    with contextlib.suppress(Exception):
        facts.taken_at = _exif_date(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME))
    with contextlib.suppress(Exception):
        make, model = (str(exif.get(t, "")).strip("\x00 ") for t in (_MAKE, _MODEL))
        facts.camera = (model if make and model.startswith(make) else f"{make} {model}".strip()) or None
    orientation = exif.get(_ORIENTATION, 1)
    return facts, orientation if isinstance(orientation, int) and orientation in _TRANSPOSE else 1


def _exif_date(value: Any) -> str | None:
    """ISO 8601 from an EXIF date, or None for the placeholders cameras write ("0000:00:00 00:00:00")."""
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ")[:19]
    for fmt in _EXIF_DATE_FORMATS:
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).isoformat()
    return None


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
