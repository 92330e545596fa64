"""``Photo``: one photo of the real-photo evaluation set (``mbm.train.evalsets.photos``), and where its file is.

A photo ships either inside a PyPI wheel (scikit-image, scikit-learn: found through the
installed package, without importing it) or in a Debian package (an absolute path).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

EVAL_ONLY = "evaluation only: never train on it"
WHEELS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}  # import name -> PyPI distribution


@dataclass(frozen=True)
class Photo:
    id: str
    source: str  # "skimage", "sklearn" (a PyPI wheel) or a Debian package name
    path: str  # inside the Python package for wheels, absolute for Debian packages
    licence: str
    author: str
    captions: tuple[str, ...]

    @property
    def wheel(self) -> str | None:
        """The PyPI distribution a wheel photo ships in (None for Debian packages)."""
        return WHEELS.get(self.source)


def package_dir(module: str) -> Path | None:
    """Where an installed Python package lives, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_path(photo: Photo) -> Path | None:
    """The photo's file on this machine, or None when its package is not installed."""
    if photo.wheel is None:
        path = Path(photo.path)
    else:
        root = package_dir(photo.source)
        if root is None:
            return None
        path = root / photo.path
    return path if path.is_file() else None


def shipped_in_wheel(photo: Photo) -> bool:
    """True when the file is listed in its distribution's RECORD: shipped by pip, not fetched later (pooch)."""
    from importlib.metadata import PackageNotFoundError, files

    if photo.wheel is None:
        return False
    try:
        listed = {str(f).replace("\\", "/") for f in files(photo.wheel) or ()}
    except PackageNotFoundError:
        return False
    return f"{photo.source}/{photo.path}" in listed
