"""Shared pieces of the offline data builders: errors, caption text helpers, image helpers,
and the reader for manifests (ours and users' own JSONL/CSV files).

A manifest row is a dict::

    {"image": "images/emoji/1f697.png", "captions": ["automobile", "car", "red car"],
     "label": None, "source": "emoji", "group": "emoji:1f697", "split": "train",
     "licence": "Apache-2.0", "sha256": "<hex of the PNG bytes>", "origin": "<where it came from>"}

``image`` is relative to the manifest's folder; ``sha256``/``origin``/``licence`` are extras
that builders add and readers may ignore.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mbm.atomic import atomic_path, write_bytes
from mbm.errors import MbmError

LICENCES = {
    "openclipart": "public-domain",
    "emoji": "Apache-2.0",
    "symbola": "Symbola",
    "tuxpaint": "GPL-2.0",
    "fashion-mnist": "MIT",
}


class SourceMissing(MbmError):
    """The Debian package holding a source's files is not installed (message names the apt package)."""


@dataclass
class BuildJob:
    """What every source's ``build(job, *, root=...)`` is given: the output folder, the picture
    size, the row limit, the Counter of drop reasons and the progress log."""

    out_dir: Path
    size: int = 224
    limit: int | None = None
    report: Counter = field(default_factory=Counter)
    log: Callable[[str], object] | None = None

    def full(self, rows: list[dict]) -> bool:
        """True once ``rows`` holds ``limit`` rows."""
        return self.limit is not None and len(rows) >= self.limit

    def say(self, message: str) -> None:
        """Log a progress line (nowhere without a log)."""
        if self.log is not None:
            self.log(message)

    def image_file(self, source: str, name: str | Path) -> Path:
        """Where a source's picture goes: ``<out>/images/<source>/<name>``."""
        return self.out_dir / "images" / source / name

    def relative(self, image: Path) -> str:
        """A picture's path as a manifest's ``image``: relative to the output folder, with slashes."""
        return image.relative_to(self.out_dir).as_posix()

    def png(self, dest: Path, render: Callable[..., Image.Image | None], *args: Any) -> str | None:
        """sha256 of the PNG at ``dest``: the one an earlier build wrote at this size, else the
        picture ``render(*args)`` gives, saved there; None (nothing written) when it gives None."""
        hit = cached_png(dest, self.size)
        if hit is not None:
            return hit[1]
        img = render(*args)
        return None if img is None else save_png(img, dest)


def font_file(root: Path, default: Path, name: str, apt: str) -> Path:
    """The font file ``root`` names (the file, or a folder holding one named like ``default``);
    SourceMissing naming ``apt`` when it is absent."""
    font = Path(root)
    if font.is_dir():
        font = font / default.name
    if not font.is_file():
        raise SourceMissing(f"{name} font not found at {font} — install it with: {apt}")
    return font


# ---------------------------------------------------------------- captions

_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_WS = re.compile(r"\s+")


def split_words(text: str) -> str:
    """Turn identifiers into words: ``RedCar`` -> ``Red Car``, ``red_car-2`` -> ``red car 2``.

    Underscores become spaces; a lower->upper case change, an ACRONYMWord boundary and a
    letter<->digit boundary become spaces. Case is kept (callers lowercase if they want).
    """
    text = text.replace("_", " ")
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    text = re.sub(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])", " ", text)
    return _WS.sub(" ", text).strip()


def strip_urls_emails(text: str) -> str:
    """Remove URLs and e-mail addresses (they carry no visual meaning and leak author identity)."""
    return _WS.sub(" ", _EMAIL.sub(" ", _URL.sub(" ", text))).strip()


def cap_length(text: str, limit: int = 200) -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary (CLIP sees ~77 tokens anyway)."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-")


def normalize_caption(text: str) -> str:
    """The comparison key for captions: lowercase, punctuation dropped, spaces collapsed.

    "A red umbrella." and "a red  umbrella" compare equal; used to keep identical captions
    in one split.
    """
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return _WS.sub(" ", text).strip()


def article(noun: str) -> str:
    """'a' or 'an' by the first letter (good enough for captions like 'an emoji of an apple')."""
    return "an" if noun[:1].lower() in "aeiou" else "a"


# ---------------------------------------------------------------- images


def on_white(img: Image.Image) -> Image.Image:
    """RGB copy of ``img`` with any transparency composited onto white (models see no alpha)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    return img.convert("RGB")


def pad_square(img: Image.Image, size: int, *, margin: float = 0.0) -> Image.Image:
    """Fit ``img`` (RGB) into a white ``size`` x ``size`` square keeping its aspect ratio.

    ``margin`` is the fraction of the side left white around the picture.
    """
    inner = max(1, round(size * (1.0 - 2 * margin)))
    w, h = img.size
    scale = inner / max(w, h)
    if (w, h) != (round(w * scale), round(h * scale)):
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def crop_to_content(img: Image.Image, *, threshold: int = 250) -> Image.Image | None:
    """Crop an RGB image on white to its non-white bounding box; None if it is all white."""
    mask = img.convert("L").point(lambda v: 255 if v < threshold else 0)
    box = mask.getbbox()
    return img.crop(box) if box else None


def is_blank(img: Image.Image, *, threshold: int = 250) -> bool:
    """True when no pixel is darker than ``threshold`` (an empty render)."""
    lo = img.convert("L").getextrema()[0]
    assert isinstance(lo, (int, float))  # one band: (min, max) are numbers
    return lo >= threshold


def tiny_hash(img: Image.Image) -> str:
    """Hash of the 16x16 grayscale thumbnail: equal for pictures that are identical to the eye.

    For analysis only: splits must not depend on rendered pixels (another machine's renderer
    moves thumbnails across hash boundaries); groups come from source identities instead
    (``openclipart.drawing_key``)."""
    small = img.convert("L").resize((16, 16), Image.Resampling.BOX)
    return hashlib.sha1(small.tobytes()).hexdigest()[:16]


def save_png(img: Image.Image, path: Path) -> str:
    """Write ``img`` as PNG atomically (tmp file + rename, so an interrupted build leaves no
    half-written file that a later run would reuse) and return the sha256 of the bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    data = buf.getvalue()
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def cached_png(path: Path, size: int) -> tuple[Image.Image, str] | None:
    """A PNG written by an earlier build of the same size, with its sha256; None if absent/stale."""
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        img = Image.open(io.BytesIO(data))
        if img.size != (size, size):
            return None
        img.load()
    except OSError:
        return None
    return img.convert("RGB"), hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def row_image_path(row: dict, base: Path) -> Path:
    """Absolute path of ``row['image']`` (relative paths are relative to ``base``)."""
    p = Path(row["image"])
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------- manifests


def _bad(path: Path, line: int, problem: str, fix: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {problem} — {fix}")


def _captions_of(raw: dict, path: Path, line: int) -> list[str]:
    caps = raw.get("captions")
    if caps is None:
        caps = raw.get("caption")
        caps = [caps] if isinstance(caps, str) else caps
    if isinstance(caps, str):
        caps = [caps]
    if not isinstance(caps, list) or not caps:
        raise _bad(
            path, line, "row has no caption", 'add "caption": "a red car" (a string) or "captions": ["a red car", ...]'
        )
    out = [c.strip() for c in caps if isinstance(c, str) and c.strip()]
    if len(out) != len(caps):
        raise _bad(path, line, "a caption is empty or not a string", "give every caption as non-empty text")
    return out


def load_manifest(path: str | Path, *, check_files: bool = True) -> list[dict]:
    """Read a manifest: JSONL (one object a line) or CSV (header with image,caption[,label]).

    Accepts ``caption`` (a string) or ``captions`` (a list); ``image`` may be absolute or
    relative to the manifest's folder and comes back as an absolute path string. Missing
    ``source`` becomes "user", missing ``label``/``group``/``split`` become None. Raises
    ValueError naming the file, the line and the fix on a bad row (bad JSON, no image,
    no caption, image file not found when ``check_files``).
    """
    path = Path(path)
    base = path.resolve().parent
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        is_csv = True
    elif suffix in (".jsonl", ".ndjson", ".json"):
        is_csv = False
    else:  # unknown extension: JSONL lines start with "{", anything else is read as CSV
        is_csv = not text.lstrip().startswith("{")
    raws: list[tuple[int, dict]] = []
    if is_csv:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "image" not in fields or not ({"caption", "captions"} & set(fields)):
            raise _bad(
                path,
                1,
                f"CSV header is {reader.fieldnames!r}",
                "the first line must name the columns: image,caption[,label]",
            )
        for rec in reader:
            rec = {(k or "").strip().lower(): (v or "").strip() for k, v in rec.items() if k is not None}
            if not any(rec.values()):
                continue
            if "captions" in rec and rec["captions"].startswith("["):
                try:
                    rec["captions"] = json.loads(rec["captions"])
                except json.JSONDecodeError:
                    raise _bad(
                        path,
                        reader.line_num,
                        "the captions column is not a JSON list",
                        'write it as ["first", "second"] or use a caption column',
                    ) from None
            raws.append((reader.line_num, {k: (v if v != "" else None) for k, v in rec.items()}))
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(
                    path,
                    i,
                    f"not valid JSON ({e.msg})",
                    'write one JSON object per line, e.g. {"image": "a.jpg", "caption": "a red car"}',
                ) from None
            if not isinstance(rec, dict):
                raise _bad(path, i, "line is not a JSON object", 'use {"image": ..., "caption": ...}')
            raws.append((i, rec))
    rows = []
    for line_no, rec in raws:
        image = rec.get("image")
        if not isinstance(image, str) or not image.strip():
            raise _bad(path, line_no, "row has no image", 'add "image": "<path relative to the manifest>"')
        caps = _captions_of(rec, path, line_no)
        img_path = Path(image) if os.path.isabs(image) else base / image
        if check_files and not img_path.is_file():
            raise _bad(
                path,
                line_no,
                f"image {image!r} not found at {img_path}",
                "fix the path (relative paths start at the manifest's folder) or remove the row",
            )
        row: dict[str, Any] = {"image": str(img_path), "captions": caps}
        row.update((k, v) for k, v in rec.items() if k not in ("caption", "captions", "image"))
        for key, default in (("label", None), ("source", "user"), ("group", None), ("split", None)):
            row.setdefault(key, default)
            if row[key] is None:
                row[key] = default
        rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write rows as UTF-8 JSONL atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
