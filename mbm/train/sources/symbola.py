"""Symbola (Debian ``fonts-symbola``): the emoji concepts again, as black line-art glyphs.

A second drawing style for the same concepts as Noto Color Emoji, for cross-style evaluation
(and style diversity in training). Each row's group id equals the Noto row's
(``emoji:<base codepoints>``), so the two renderings of one concept always share a split and
a test can pair them. Only single-codepoint emoji are drawn: Symbola has no ligatures for
ZWJ sequences, flags or keycaps, and skin-tone variants would add a colour-swatch box.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .common import LICENCES, BuildJob, crop_to_content, font_file, pad_square
from .emoji import MARGIN, base_codepoints, captions, concepts, file_stem, group_id, has_skin_tone

FONT = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
APT = "apt-get install -y fonts-symbola"
FONT_SIZE = 160  # drawn large, then cropped and scaled down: keeps thin strokes smooth
UNASSIGNED = "\u0378"  # never assigned in Unicode: whatever the font draws for it is .notdef


class SymbolaRenderer:
    """Draws one codepoint in black on white; None for an empty glyph or the .notdef box."""

    def __init__(self, font_path: Path = FONT):
        self.font = ImageFont.truetype(str(font_path), size=FONT_SIZE)
        self.notdef = self._draw(UNASSIGNED)

    def _draw(self, ch: str) -> Image.Image | None:
        # typed as floats; FreeType bounding boxes are whole pixels
        left, top, right, bottom = (int(v) for v in self.font.getbbox(ch))
        pad = 8
        canvas = Image.new("RGB", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), (255, 255, 255))
        ImageDraw.Draw(canvas).text((pad - left, pad - top), ch, font=self.font, fill=(0, 0, 0))
        return crop_to_content(canvas)

    def render(self, ch: str, size: int) -> Image.Image | None:
        glyph = self._draw(ch)
        if glyph is None:
            return None
        if self.notdef is not None and glyph.size == self.notdef.size and glyph.tobytes() == self.notdef.tobytes():
            return None
        return pad_square(glyph, size, margin=MARGIN)


def build(job: BuildJob, *, root: Path = FONT) -> list[dict]:
    """Render the emoji concepts with Symbola into ``<out>/images/symbola/``; return rows.

    ``root`` is the font file (or its folder). Captions are the emoji names plus
    "a black and white drawing of ...". Raises SourceMissing when the font is absent.
    """
    renderer = SymbolaRenderer(font_file(root, FONT, "Symbola", APT))
    rows: list[dict] = []
    for text, data in concepts():
        if job.full(rows):
            break
        cps = base_codepoints(text)
        if has_skin_tone(text):
            continue  # the base emoji stands for its variants here (not a drop: never a candidate)
        if len(cps) != 1:
            job.report["symbola: sequence (ZWJ, flag, keycap) with no single glyph"] += 1
            continue
        ch = chr(cps[0])
        dest = job.image_file("symbola", f"{file_stem(ch)}.png")
        sha = job.png(dest, renderer.render, ch, job.size)
        if sha is None:
            job.report["symbola: glyph missing (empty or .notdef)"] += 1
            continue
        rows.append(
            {
                "image": job.relative(dest),
                "captions": captions(text, data, style="a black and white drawing of"),
                "label": None,
                "source": "symbola",
                "style": "symbola",
                "group": group_id(text),
                "licence": LICENCES["symbola"],
                "sha256": sha,
                "origin": f"symbola:U+{cps[0]:04X}",
            }
        )
    return rows
