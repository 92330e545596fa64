"""Render the demo folder data/demo/ from Debian packages and the scikit-image wheel (licences allow redistribution).

    apt-get install -y fonts-noto-color-emoji openclipart-svg librsvg2-bin
    pip install scikit-image      # its wheel ships the sample photos: nothing is downloaded
    python data/make_demo.py      # --only photos | drawings: one part

Noto Color Emoji is Apache-2.0; Open Clip Art is public domain. Renders are 160x160 PNGs.
The photos (photo_*.jpg, at most 320 px a side) are scikit-image sample photos that are
public domain or CC0 (as its skimage.data docstrings state), read from the files inside
the installed wheel — never through skimage.data's loaders, which may download.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).parent / "demo"
NOTO = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SIZE = 160
EMOJI = {
    "red_car": "\U0001F697", "cat_face": "\U0001F431", "dog_face": "\U0001F436", "sun": "\u2600\ufe0f",
    "guitar": "\U0001F3B8", "pizza": "\U0001F355", "tree": "\U0001F333", "house": "\U0001F3E0",
    "airplane": "\u2708\ufe0f", "bicycle": "\U0001F6B2", "red_apple": "\U0001F34E", "banana": "\U0001F34C",
    "fish": "\U0001F41F", "bird": "\U0001F426", "cherry_blossom": "\U0001F338", "crescent_moon": "\U0001F319",
    "star": "\u2B50", "umbrella": "\u2602\ufe0f", "alarm_clock": "\u23F0", "open_book": "\U0001F4D6",
    "rocket": "\U0001F680", "ship": "\U0001F6A2", "bus": "\U0001F68C", "horse_face": "\U0001F434",
    "snowman": "\u26C4", "soccer_ball": "\u26BD", "violin": "\U0001F3BB", "camera": "\U0001F4F7",
    "laptop": "\U0001F4BB", "top_hat": "\U0001F3A9", "blue_car": "\U0001F699", "fire_engine": "\U0001F692",
}
PHOTOS = {  # demo name -> (file inside skimage/data/, licence, author): public domain / CC0 only
    "cat": ("chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    "coffee": ("coffee.png", "CC0-1.0", "Rachel Michetti"),
    "rocket": ("rocket.jpg", "public domain", "SpaceX"),
    "astronaut": ("astronaut.png", "public domain", "NASA"),
    "photographer": ("camera.png", "CC0-1.0", "Lav Varshney"),
    "galaxies": ("hubble_deep_field.jpg", "public domain", "NASA / Hubble"),
}
PHOTO_SIDE = 320
CLIPART = [  # (category/file stem fragment to find, output name)
    ("transportation", "car"), ("animals", "cat"), ("animals", "dog"), ("food", "apple"),
    ("plants", "tree"), ("buildings", "house"), ("music", "guitar"), ("weather", "sun"),
]


def render_emoji(char: str) -> Image.Image:
    font = ImageFont.truetype(str(NOTO), size=109)
    canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    bbox = canvas.getbbox() or (0, 0, 136, 128)
    glyph = canvas.crop(bbox)
    out = Image.new("RGB", (SIZE, SIZE), "white")
    scale = (SIZE - 16) / max(glyph.size)
    glyph = glyph.resize((max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))), Image.LANCZOS)
    out.paste(glyph, ((SIZE - glyph.width) // 2, (SIZE - glyph.height) // 2), glyph)
    return out


def render_svg(svg: Path, dest: Path) -> bool:
    with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
        try:
            subprocess.run(["rsvg-convert", "-w", str(SIZE), "-h", str(SIZE), "--keep-aspect-ratio", "-o", tmp.name, str(svg)],
                           check=True, timeout=20, capture_output=True)
        except (subprocess.SubprocessError, OSError):
            return False
        img = Image.open(tmp.name).convert("RGBA")
        out = Image.new("RGB", (SIZE, SIZE), "white")
        out.paste(img, ((SIZE - img.width) // 2, (SIZE - img.height) // 2), img)
        out.save(dest, optimize=True)
        return True


def copy_photos() -> None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo photos come from the scikit-image wheel: pip install scikit-image")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name, (file, _licence, _author) in PHOTOS.items():
        with Image.open(data / file) as img:
            img = img.convert("RGB")
        img.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.LANCZOS)
        img.save(OUT / f"photo_{name}.jpg", quality=85, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("photos", "drawings"), help="make one part of the folder")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.only != "drawings":
        copy_photos()
    if args.only == "photos":
        return
    for name, char in EMOJI.items():
        render_emoji(char).save(OUT / f"emoji_{name}.png", optimize=True)
    root = Path("/usr/share/openclipart/svg")
    for category, word in CLIPART:
        candidates = sorted(p for p in (root / category).rglob("*.svg") if word in p.stem.lower() and not p.is_symlink())
        for svg in candidates[:3]:
            if render_svg(svg, OUT / f"clipart_{word}_{svg.stem[:40]}.png"):
                break


if __name__ == "__main__":
    main()
