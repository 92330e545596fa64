"""Evaluation-only data sets beyond the training manifest's splits: real photos and icon-theme styles.

    python -m mbm.train.evalsets --out cache/mbm-eval

writes

- ``photos.jsonl`` (split ``photos``): 54 real photos that ship inside installed packages
  (scikit-image and scikit-learn wheels, Debian wallpaper packages), each with two
  hand-written captions — see ``mbm.train.evalsets.photos``. It is SMALL: a 95 %
  interval on a recall over ~100 queries is about +-10 points wide.
- ``icon-themes.jsonl`` (split ``style-shift``): ~100 freedesktop icon concepts drawn by
  up to 8 GPL / LGPL / CC-BY-SA icon themes (a ``style`` field per theme; one ``group``
  per concept) — see ``mbm.train.evalsets.icons``. Never training data.

with the pictures beside them (``photos/`` at most 512 px a side, ``icons/<style>/``
224 px PNGs on white). Rows have the training manifest's fields (``image``, ``captions``,
``label``, ``source``, ``group``, ``split``, ``licence``, ``sha256``, ``origin``), so
``mbm.train.data.load_rows(path)`` and ``mbm eval --photos/--style-shift`` read them.
Nothing is downloaded: a package that is not installed is skipped with the
``apt-get install`` line that adds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mbm.train.evalsets import icons as _icons
from mbm.train.evalsets import photos as _photos

PHOTOS_FILE = "photos.jsonl"
ICONS_FILE = "icon-themes.jsonl"
DEFAULT_DIR = Path("cache/mbm-eval")
MAX_PHOTO_SIDE = 512
ICON_SIZE = 224

__all__ = [
    "DEFAULT_DIR",
    "ICONS_FILE",
    "PHOTOS_FILE",
    "build",
    "build_icon_themes",
    "build_photos",
    "find_eval_manifest",
]


def _write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _save(img: Image.Image, dest: Path, **kw) -> str:
    """Save (only when the bytes differ, so a re-run leaves files alone) and return the sha256 of the bytes."""
    buf = io.BytesIO()
    img.save(buf, **kw)
    data = buf.getvalue()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or dest.read_bytes() != data:
        dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_photo(path: Path, max_side: int = MAX_PHOTO_SIDE) -> Image.Image:
    """A photo as RGB, at most ``max_side`` px a side (JPEG draft decoding, then Lanczos)."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (2 * max_side, 2 * max_side))
        img.load()
        rgb = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA", "RGBA") else img.convert("RGB")
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.LANCZOS
        )
    return rgb


def build_photos(out_dir: str | Path, *, max_side: int = MAX_PHOTO_SIDE, log: Callable[[str], None] = print) -> Path:
    """Write ``out_dir/photos.jsonl`` and ``out_dir/photos/<id>.jpg``; returns the manifest path."""
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    missing: dict[str, list[str]] = {}
    for photo in _photos.PHOTOS:
        src = _photos.source_path(photo)
        if src is None:
            missing.setdefault(photo.source, []).append(photo.id)
            continue
        rel = f"photos/{photo.id}.jpg"
        sha = _save(load_photo(src, max_side), out / rel, format="JPEG", quality=92)
        rows.append(
            {
                "image": rel,
                "captions": list(photo.captions),
                "label": None,
                "source": photo.source,
                "group": f"photo:{photo.id}",
                "split": "photos",
                "licence": f"{photo.licence} ({_photos.EVAL_ONLY})",
                "sha256": sha,
                "origin": f"{photo.wheel or photo.source}:{photo.path}",
                "author": photo.author,
            }
        )
    for source, ids in sorted(missing.items()):
        wheel = _photos.WHEELS.get(source)
        hint = f"pip install {wheel}" if wheel else f"apt-get install -y --no-install-recommends {source}"
        log(f"photos: {len(ids)} photos of {source} skipped (not installed) — {hint}")
    path = out / PHOTOS_FILE
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(rows, path)
    log(
        f"photos: {len(rows)} photos, {sum(len(r['captions']) for r in rows)} captions -> {path} "
        f"(a SMALL set: read its recall with the 95 % interval `mbm eval` prints)"
    )
    return path


def build_icon_themes(out_dir: str | Path, *, size: int = ICON_SIZE, log: Callable[[str], None] = print) -> Path:
    """Write ``out_dir/icon-themes.jsonl`` and ``out_dir/icons/<style>/<name>.png``; returns the manifest path."""
    out = Path(out_dir)
    rows: list[dict] = []
    seen: dict[str, str] = {}  # sha256 of the rendered picture -> "style/name" that has it
    dropped = 0
    for theme in _icons.THEMES:
        found = _icons.find_icons(theme)
        if not found:
            log(
                f"icon-themes: {theme.style} not installed — apt-get install -y --no-install-recommends {theme.package}"
            )
            continue
        kept = 0
        for name, (category, captions) in _icons.CONCEPTS.items():
            if name not in found:
                continue
            try:
                img = _icons.render(found[name], size)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
                log(f"icon-themes: {theme.style}/{name}: cannot render {found[name]} ({e})")
                continue
            digest = hashlib.sha256(img.tobytes()).hexdigest()
            if digest in seen:  # the same drawing as another concept or another theme: keep the first
                dropped += 1
                continue
            seen[digest] = f"{theme.style}/{name}"
            rel = f"icons/{theme.style}/{name}.png"
            sha = _save(img, out / rel, format="PNG", optimize=True)
            rows.append(
                {
                    "image": rel,
                    "captions": list(captions),
                    "label": category,
                    "source": "icon-themes",
                    "style": theme.style,
                    "group": f"icon:{name}",
                    "split": "style-shift",
                    "licence": f"{theme.licence} ({_icons.EVAL_ONLY})",
                    "sha256": sha,
                    "origin": f"{theme.package}:{found[name]}",
                }
            )
            kept += 1
        log(f"icon-themes: {theme.style}: {kept} of {len(_icons.CONCEPTS)} concepts")
    path = out / ICONS_FILE
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(rows, path)
    styles = sorted({r["style"] for r in rows})
    log(
        f"icon-themes: {len(rows)} icons of {len({r['group'] for r in rows})} concepts in {len(styles)} styles "
        f"({dropped} duplicate drawings left out) -> {path} (evaluation only: GPL/LGPL/CC-BY-SA)"
    )
    return path


def build(
    out_dir: str | Path = DEFAULT_DIR, *, photos: bool = True, icons: bool = True, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """Both sets (or the ones asked for) into ``out_dir``; returns {"photos": path, "style_shift": path}."""
    result = {}
    if photos:
        result["photos"] = build_photos(out_dir, log=log)
    if icons:
        result["style_shift"] = build_icon_themes(out_dir, log=log)
    return result


def find_eval_manifest(filename: str, near: str | Path | None = None) -> Path | None:
    """``filename`` next to the manifest ``near``, in ``mbm-eval/`` beside that manifest's folder
    (cache/mbm-data/manifest.jsonl -> cache/mbm-eval/), or in ./cache/mbm-eval; None when in none."""
    places = []
    if near is not None:
        folder = Path(near).expanduser().resolve().parent
        places += [folder / filename, folder.parent / DEFAULT_DIR.name / filename]
    places.append(DEFAULT_DIR / filename)
    return next((p for p in places if p.is_file()), None)
