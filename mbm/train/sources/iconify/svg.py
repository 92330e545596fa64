"""One icon: its standalone SVG, its colour (for sets drawn in ``currentColor``), and its rendering with resvg."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field

from PIL import Image

from ..common import is_blank, pad_square

MARGIN = 0.06  # as the Noto/Symbola emoji

DEFAULT_VIEWBOX = 16  # Iconify's default width/height

# mono sets draw with currentColor: mostly black, some dark colours (chosen per icon by hash)
DARK_COLOURS = ("#000000",) * 7 + ("#1f2a44", "#5a1a1a", "#1b4332", "#3b2a1a", "#333333")


@dataclass
class Icon:
    prefix: str
    name: str
    svg: str
    licence: str
    kind: str  # "emoji" | "pictogram"
    captions: list[str]
    group: str
    label: str | None = None
    colour: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return content_key(self.svg)


def icon_svg(icon: dict, iconset: dict) -> tuple[str, bool]:
    """The standalone SVG of one icon; (svg, uses currentColor).

    viewBox = icon's (else the set's) left/top/width/height, default 0 0 16 16; transforms
    (rotate/hFlip/vFlip) are only found on aliases, which are not used. The pixel size is
    set at render time (:func:`render_svg`).
    """
    left = icon.get("left", iconset.get("left", 0))
    top = icon.get("top", iconset.get("top", 0))
    w = icon.get("width", iconset.get("width", DEFAULT_VIEWBOX)) or DEFAULT_VIEWBOX
    h = icon.get("height", iconset.get("height", DEFAULT_VIEWBOX)) or DEFAULT_VIEWBOX
    body = icon["body"]
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{body}</svg>'
    )
    return svg, "currentColor" in body


_ROOT_BOX = re.compile(r'viewBox="([^"]*)" width="[^"]*" height="[^"]*"')

PROBE_PX = 64  # a small first render finds the drawing's extent


def _with_box(svg: str, box: tuple[float, float, float, float], wpx: int, hpx: int) -> str:
    left, top, w, h = box
    return _ROOT_BOX.sub(f'viewBox="{left:.6g} {top:.6g} {w:.6g} {h:.6g}" width="{wpx}" height="{hpx}"', svg, count=1)


def _resvg(svg: str) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", skip_system_fonts=True)
    img = Image.open(io.BytesIO(bytes(png)))
    img.load()
    return img.convert("RGB")


def render_svg(svg: str, size: int, margin: float = MARGIN) -> Image.Image | None:
    """resvg-py: SVG text -> RGB ``size`` square on white, the drawing centred with ``margin``;
    None when it renders blank. Raises ValueError on a bad SVG.

    Two renders: a 64 px probe finds the drawing's bounding box, then the viewBox is set to a
    square around it and the icon is drawn once at the final size (crisp, no resampling).
    """
    m = _ROOT_BOX.search(svg)
    if m is None:
        raise ValueError("the SVG has no root viewBox, width and height (make it with icon_svg)")
    left, top, w, h = (float(v) for v in m.group(1).split())
    scale = PROBE_PX / max(w, h)
    probe = _resvg(_with_box(svg, (left, top, w, h), max(1, round(w * scale)), max(1, round(h * scale))))
    box = crop_box(probe)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    x0, y0, x1, y1 = (max(0, x0 - 1), max(0, y0 - 1), min(probe.width, x1 + 1), min(probe.height, y1 + 1))
    bw, bh = (x1 - x0) / scale, (y1 - y0) / scale
    cx, cy = left + (x0 + x1) / 2 / scale, top + (y0 + y1) / 2 / scale
    side = max(bw, bh) / (1 - 2 * margin)
    img = _resvg(_with_box(svg, (cx - side / 2, cy - side / 2, side, side), size, size))
    if img.size != (size, size):
        img = pad_square(img, size)
    return None if is_blank(img) else img


def crop_box(img: Image.Image, threshold: int = 250) -> tuple[int, int, int, int] | None:
    return img.convert("L").point(lambda v: 255 if v < threshold else 0).getbbox()


def pick_colour(prefix: str, name: str) -> str:
    """A dark colour for currentColor, fixed per icon (black for 7 icons in 12)."""
    h = int(hashlib.sha256(f"{prefix}/{name}".encode()).hexdigest()[:8], 16)
    return DARK_COLOURS[h % len(DARK_COLOURS)]


def content_key(svg: str) -> str:
    return hashlib.sha256(svg.encode("utf-8")).hexdigest()
