"""Offline image-text data from Debian packages (and npm's Iconify sets), written as a JSONL
manifest plus PNGs.

Sources (each a module with ``build(job: BuildJob, *, root=...)``, the job holding the output folder,
size, row limit, drop counter and log):
``openclipart`` (public domain), ``emoji`` (Noto Color Emoji, Apache-2.0), ``symbola``
(the same concepts in a second style), ``tuxpaint`` (GPL-2.0, evaluation only: split
"heldout"), ``fashion-mnist`` (MIT, keeps its own train/test) and ``iconify`` (npm
``@iconify/json``: emoji in nine more styles and pictograms from ~30 icon sets, each under
its own permissive or CC-BY licence; needs ``--iconify PATH``). Every row has a ``style``.
Splits come from source identities and captions, never from rendered pixels. See
data/README.md.

    python -m mbm.train.sources --out cache/mbm-data --size 224 --iconify iconify-json-2.2.535.tgz
"""

from __future__ import annotations

from .build import DEFAULT_SOURCES, MODULES, build_all, build_source, stats_path
from .common import BuildJob, SourceMissing, load_manifest, normalize_caption, write_jsonl
from .split import assign_splits, split_hash, split_hashes

__all__ = [
    "BuildJob",
    "DEFAULT_SOURCES",
    "MODULES",
    "SourceMissing",
    "assign_splits",
    "build_all",
    "build_source",
    "load_manifest",
    "normalize_caption",
    "split_hash",
    "split_hashes",
    "stats_path",
    "write_jsonl",
]
