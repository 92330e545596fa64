"""A small real-photo evaluation set from photos that ship inside installed packages.

Every photo below was looked at and captioned by hand (what is in the picture, plainly:
no guesses at places or names). Sources: scikit-image's bundled sample photos (only the
files inside the wheel, never ``skimage.data``'s pooch downloads), scikit-learn's two
sample images, and Debian wallpaper packages (MATE, KDE Plasma, Lomiri). Licences are as
the packages state them (``/usr/share/doc/<package>/copyright``, the wallpapers'
``metadata.json``, scikit-image's docstrings, scikit-learn's ``images/README.txt``).

It is an EVALUATION set: 54 photos are too few to train on, and training on them would
make the figures meaningless. Rows say so in their ``licence`` field.

The table is in two parts by where the files come from: ``photos_wheels`` (PyPI wheels)
and ``photos_debian`` (Debian packages); ``photo_source`` finds a photo's file.
"""

from __future__ import annotations

from mbm.train.evalsets.photo_source import EVAL_ONLY, WHEELS, Photo, package_dir, shipped_in_wheel, source_path
from mbm.train.evalsets.photos_debian import DEBIAN_PHOTOS
from mbm.train.evalsets.photos_wheels import WHEEL_PHOTOS

__all__ = [
    "DEBIAN_PACKAGES",
    "EVAL_ONLY",
    "INSTALL_HINT",
    "PHOTOS",
    "WHEELS",
    "Photo",
    "package_dir",
    "shipped_in_wheel",
    "source_path",
]

PHOTOS: tuple[Photo, ...] = WHEEL_PHOTOS + DEBIAN_PHOTOS
DEBIAN_PACKAGES = tuple(sorted({p.source for p in PHOTOS if p.wheel is None}))
INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(DEBIAN_PACKAGES)
