"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``, GPL-2.0): evaluation only.

Each stamp is a PNG or SVG under ``/usr/share/tuxpaint/stamps/<category>/...`` with a ``.txt``
beside it whose first line is an English sentence ("A red umbrella."); later lines are
translations. The licence keeps these pictures out of a model we ship, and their natural
captions make them the best held-out test of how queries generalise, so every row carries
``split = "heldout"`` (never train/val/test) and ``licence = "GPL-2.0"``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .common import LICENCES, BuildJob, SourceMissing, cap_length, crop_to_content, is_blank, on_white, pad_square
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


def _stamp(pic: Path, size: int) -> Image.Image | None:
    """The stamp framed in a white ``size`` square; None when it is unreadable or blank."""
    img = _load(pic, size)
    return None if img is None or is_blank(img) else img


def build(job: BuildJob, *, root: Path = ROOT) -> list[dict]:
    """Render Tux Paint stamps into ``<out>/images/tuxpaint/`` and return rows (split "heldout").

    The caption is the English sentence only (file names like "asl_zzz_9" would add noise
    to the one source whose captions read like real queries). ``label`` is the top-level
    category ("animals"). Raises SourceMissing when the stamps are absent.
    """
    root = Path(root)
    if not root.is_dir() or next(root.rglob("*.txt"), None) is None:
        raise SourceMissing(f"Tux Paint stamps not found under {root} — install them with: {APT}")
    rows: list[dict] = []
    for pic, txt in stamp_files(root):
        if job.full(rows):
            break
        caption = first_line(txt)
        if not caption:
            job.report["tuxpaint: no English description (.txt) beside the stamp"] += 1
            continue
        rel = pic.relative_to(root)
        dest = job.image_file("tuxpaint", rel.with_suffix(".png"))
        sha = job.png(dest, _stamp, pic, job.size)
        if sha is None:
            job.report["tuxpaint: picture unreadable or blank"] += 1
            continue
        rows.append(
            {
                "image": job.relative(dest),
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
