"""Iconify (npm ``@iconify/json``): emoji in nine more styles and pictograms from ~30 icon sets.

The all-in-one package holds one ``json/<prefix>.json`` per icon set: SVG ``body`` per icon,
set-level ``width``/``height``, ``info`` (name, author, ``license.spdx``), optional ``chars``
(codepoint -> icon name), ``categories`` and ``suffixes`` (style variants). It is not a
Debian package: get it with ``npm pack @iconify/json@2.2.535`` and pass the ``.tgz`` (or the
unpacked ``package/`` folder) as ``--iconify PATH``. ``--emojilib PATH`` (npm ``emojilib``,
optional) adds emoji keywords.

Two kinds of rows, all with ``source = "iconify"`` and ``style = <set prefix>``:

- **Emoji** from :data:`policy.EMOJI_SETS`, joined to the emoji concept of the PyPI ``emoji``
  package by codepoint (the set's ``chars``, or a sibling set's, or a name that is a
  codepoint sequence) or else by CLDR name; the row's ``group`` is the Noto source's
  (``emoji:1f697``), so one concept lands in one split in every style. Skin-tone variants
  are skipped (the base stands for them).
- **Pictograms** from :data:`policy.PICTOGRAM_SETS`: the icon name is the concept ("fire-truck" ->
  "fire truck") after style suffixes are collapsed; UI and abstract names are dropped
  (:func:`names.pictogram_concept`). ``group = "pictogram:<concept>"`` across sets.

Only sets whose licence passes :data:`policy.LICENCE_POLICY` are read; every
row records the licence of its artwork, and :func:`write_attribution` lists the CC-BY sets.
Rendering uses resvg-py in worker processes with a per-icon timeout, cached by content hash.

The package: ``policy`` (licences, which sets), ``package`` (reading the npm package),
``names`` (names to concepts and captions), ``svg`` (one icon), ``choose`` (which icons),
``render`` (worker processes), ``dataset`` (``build`` and ATTRIBUTION.md).
"""

from __future__ import annotations

from .dataset import DEFAULT_SET_CAP, DEFAULT_TOTAL_CAP, DEFAULT_WORKERS, build, write_attribution
from .package import PACKAGE

__all__ = ["DEFAULT_SET_CAP", "DEFAULT_TOTAL_CAP", "DEFAULT_WORKERS", "PACKAGE", "build", "write_attribution"]
