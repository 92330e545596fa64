"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``, GPL-2.0): evaluation only.

Each stamp is a PNG or SVG under ``/usr/share/tuxpaint/stamps/<category>/...`` with a ``.txt``
beside it whose first line is an English sentence ("A red umbrella."); later lines are
translations. The licence keeps these pictures out of a model we ship, and their natural
captions make them the best held-out test of how queries generalise, so every row carries
``split = "heldout"`` (never train/val/test) and ``licence = "GPL-2.0"``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

from .common import (
    LICENCES,
    SourceMissing,
    cached_png,
    cap_length,
    crop_to_content,
    is_blank,
    on_white,
    pad_square,
    save_png,
)
from .openclipart import rasterise

ROOT = Path("/usr/share/tuxpaint/stamps")
APT = "apt-get install -y --no-install-recommends tuxpaint-stamps-default"
MARGIN = 0.04
HELDOUT = "heldout"


def stamp_files(root: Path) -> list[tuple[Path, Path]]:
    """(picture, caption file) pairs; SVG wins over a PNG of the same stamp (Tux Paint does the
    same), and ``*_mirror.png``/``*_flip.png`` are alternate orientations, not stamps."""
    by_stem: dict[Path, Path] = {}
    for pic in sorted(root.rglob("*")):
        if pic.suffix.lower() not in (".png", ".svg") or pic.stem.endswith(("_mirror", "_flip")):
            continue
        stem = pic.with_suffix("")
        if stem not in by_stem or pic.suffix.lower() == ".svg":
            by_stem[stem] = pic
    return [(pic, stem.with_suffix(".txt")) for stem, pic in sorted(by_stem.items())]


def first_line(txt: Path) -> str:
    """The English description: the first non-empty line that is not a ``xx.utf8=`` translation."""
    try:
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        line = line.strip()
        if line and ".utf8=" not in line:
            return cap_length(line, 200)
        if ".utf8=" in line:
            break
    return ""


def _load(pic: Path, size: int) -> Image.Image | None:
    if pic.suffix.lower() == ".svg":
        return rasterise(pic, size, margin=MARGIN)
    try:
        with Image.open(pic) as img:
            content = crop_to_content(on_white(img))  # same framing as the SVG stamps
    except (OSError, Image.DecompressionBombError):
        return None
    return None if content is None else pad_square(content, size, margin=MARGIN)


def build(
    out_dir: Path,
    *,
    limit: int | None = None,
    size: int = 224,
    root: Path = ROOT,
    report: Counter | None = None,
    log=None,
) -> list[dict]:
    """Render Tux Paint stamps into ``out_dir/images/tuxpaint/`` and return rows (split "heldout").

    The caption is the English sentence only (file names like "asl_zzz_9" would add noise
    to the one source whose captions read like real queries). ``label`` is the top-level
    category ("animals"). Raises SourceMissing when the stamps are absent.
    """
    root = Path(root)
    if not root.is_dir() or next(root.rglob("*.txt"), None) is None:
        raise SourceMissing(f"Tux Paint stamps not found under {root} — install them with: {APT}")
    report = report if report is not None else Counter()
    rows: list[dict] = []
    for pic, txt in stamp_files(root):
        if limit is not None and len(rows) >= limit:
            break
        caption = first_line(txt)
        if not caption:
            report["tuxpaint: no English description (.txt) beside the stamp"] += 1
            continue
        rel = pic.relative_to(root)
        dest = out_dir / "images" / "tuxpaint" / rel.with_suffix(".png")
        hit = cached_png(dest, size)
        if hit is None:
            img = _load(pic, size)
            if img is None or is_blank(img):
                report["tuxpaint: picture unreadable or blank"] += 1
                continue
            sha = save_png(img, dest)
        else:
            sha = hit[1]
        rows.append(
            {
                "image": dest.relative_to(out_dir).as_posix(),
                "captions": [caption],
                "label": rel.parts[0],
                "source": "tuxpaint",
                "style": "tuxpaint",
                "group": "tuxpaint:" + rel.with_suffix("").as_posix(),
                "split": HELDOUT,
                "licence": LICENCES["tuxpaint"],
                "sha256": sha,
                "origin": f"tuxpaint-stamps-default:{rel.as_posix()}",
            }
        )
    return rows
