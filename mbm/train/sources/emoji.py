"""Noto Color Emoji (Debian ``fonts-noto-color-emoji``, Apache-2.0) with names from PyPI ``emoji``.

Each fully-qualified emoji that the font draws as one glyph becomes a row whose captions are
its CLDR name and aliases ("automobile", "car", "red car") plus "an emoji of an automobile".
Skin-tone variants share their base emoji's group (``emoji:<base codepoints>``) so all of
them land in one split; the Symbola builder uses the same group ids for the same concepts.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mbm.errors import MissingExtra

from .common import LICENCES, BuildJob, article, crop_to_content, font_file, pad_square

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
APT = "apt-get install -y fonts-noto-color-emoji"
FONT_SIZE = 109  # the only size of the font's CBDT bitmaps; FreeType refuses others
MARGIN = 0.06  # white border kept around every glyph (same in the Symbola builder)
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
SELECTORS = frozenset((0xFE0E, 0xFE0F))  # text/emoji presentation selectors: not part of the concept
FULLY_QUALIFIED = 2  # emoji.STATUS["fully_qualified"]


def emoji_data() -> dict:
    """``emoji.EMOJI_DATA`` (PyPI package ``emoji``), or MissingExtra naming the extra to install."""
    try:
        import emoji as emoji_pkg  # the PyPI package, not this module (absolute import)
    except ImportError:
        raise MissingExtra("emoji captions", "train", "emoji") from None
    return emoji_pkg.EMOJI_DATA


def base_codepoints(text: str) -> list[int]:
    """Codepoints of an emoji without skin-tone modifiers and presentation selectors."""
    return [ord(c) for c in text if ord(c) not in SKIN_TONES and ord(c) not in SELECTORS]


def group_id(text: str) -> str:
    """``emoji:<base codepoints in hex>``: shared by skin-tone variants and by the Symbola glyph."""
    return "emoji:" + "-".join(f"{cp:x}" for cp in base_codepoints(text))


def has_skin_tone(text: str) -> bool:
    """True for a skin-tone variant (its base emoji is a separate row in the same group)."""
    return any(ord(c) in SKIN_TONES for c in text)


def is_flag(text: str) -> bool:
    """Regional-indicator pairs and tag sequences (England, Scotland, Wales) are country flags."""
    cps = [ord(c) for c in text]
    return all(0x1F1E6 <= cp <= 0x1F1FF for cp in cps) or (cps[:1] == [0x1F3F4] and len(cps) > 2)


def _spoken(name: str) -> str:
    return name.strip(":").replace("_", " ").strip()


def names(text: str, data: dict) -> list[str]:
    """Plain names, the CLDR name first: 🚗 -> ["automobile", "car", "red car"].

    The ``emoji`` package drops the "flag:" prefix from flag names ("Madagascar"); it is put
    back as "flag of Madagascar" so the caption describes the picture.
    """
    first = _spoken(data["en"])
    if is_flag(text) and not first.lower().startswith("flag"):
        first = f"flag of {first}"
    out = [first]
    for alias in data.get("alias", []):
        alias = _spoken(alias)
        if alias and alias.lower() not in {o.lower() for o in out}:
            out.append(alias)
    return out


def captions(text: str, data: dict, *, style: str = "an emoji of") -> list[str]:
    """Names plus one sentence ("an emoji of an automobile"); the plain name stays first."""
    plain = names(text, data)
    first = plain[0]
    noun = first if first[:1].isupper() else f"{article(first)} {first}"
    return [*plain, f"{style} {noun}"]


def concepts() -> list[tuple[str, dict]]:
    """Fully-qualified emoji sorted by codepoints (deterministic row order)."""
    data = emoji_data()
    items = [(e, d) for e, d in data.items() if d.get("status") == FULLY_QUALIFIED]
    return sorted(items, key=lambda item: [ord(c) for c in item[0]])


def file_stem(text: str) -> str:
    """File name for an emoji: its codepoints in hex ("1f697", "1f44b-1f3fd")."""
    return "-".join(f"{ord(c):x}" for c in text if ord(c) not in SELECTORS) or "empty"


class NotoRenderer:
    """Draws one emoji as a colour glyph; None when the font has no single glyph for it."""

    def __init__(self, font_path: Path = FONT):
        self.font = ImageFont.truetype(str(font_path), size=FONT_SIZE)
        # a supported emoji, even a ZWJ family, is one glyph one advance wide; an unsupported
        # sequence falls apart into several glyphs and measures two or three advances
        self.advance = self.font.getlength("\U0001f600")

    def glyph(self, text: str) -> Image.Image | None:
        """The font's own bitmap for ``text`` at its native size (no scaling), cropped; None
        when the font has no single glyph for it."""
        if self.font.getlength(text) > 1.2 * self.advance:
            return None
        canvas = Image.new("RGB", (int(self.advance) + 40, FONT_SIZE + 60), (255, 255, 255))
        ImageDraw.Draw(canvas).text((20, 20), text, font=self.font, embedded_color=True, fill=(0, 0, 0))
        return crop_to_content(canvas)

    def render(self, text: str, size: int) -> Image.Image | None:
        glyph = self.glyph(text)
        return None if glyph is None else pad_square(glyph, size, margin=MARGIN)


def glyph_key(glyph: Image.Image) -> str:
    """Identity of a glyph of the font: sha256 (16 hex) of its embedded bitmap as decoded at
    the native size (lossless PNG data of the font file, no scaling or resampling). Two emoji
    drawn with one glyph (Norway / Svalbard & Jan Mayen) get equal keys on any machine."""
    return hashlib.sha256(f"{glyph.size}".encode() + glyph.tobytes()).hexdigest()[:16]


def build(job: BuildJob, *, root: Path = FONT) -> list[dict]:
    """Render Noto Color Emoji into ``<out>/images/emoji/`` and return manifest rows.

    ``root`` is the font file (or a folder holding NotoColorEmoji.ttf). Raises SourceMissing
    when the font is absent. Emoji the font cannot draw as one glyph are counted in ``job.report``.
    """
    renderer = NotoRenderer(font_file(root, FONT, "Noto Color Emoji", APT))
    rows: list[dict] = []
    for text, data in concepts():
        if job.full(rows):
            break
        dest = job.image_file("emoji", f"{file_stem(text)}.png")
        glyph = renderer.glyph(text)  # also on a re-run: its key links rows sharing a glyph
        if glyph is None:
            job.report["emoji: Noto has no single glyph for the sequence"] += 1
            continue
        sha = job.png(dest, partial(pad_square, glyph, job.size, margin=MARGIN))
        rows.append(
            {
                "image": job.relative(dest),
                "captions": captions(text, data),
                "label": None,
                "source": "emoji",
                "style": "noto",
                "group": group_id(text),
                "links": [f"noto-glyph:{glyph_key(glyph)}"],
                "licence": LICENCES["emoji"],
                "sha256": sha,
                "origin": "noto-color-emoji:" + " ".join(f"U+{ord(c):04X}" for c in text),
            }
        )
    return rows
