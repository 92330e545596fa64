"""Offline image-text data from Debian packages, written as a JSONL manifest plus PNGs.

Sources (each a module with ``build(out_dir, *, limit=None, size=224, root=..., report=None)``):
``openclipart`` (public domain), ``emoji`` (Noto Color Emoji, Apache-2.0), ``symbola``
(the same concepts in a second style), ``tuxpaint`` (GPL-2.0, evaluation only: split
"heldout") and ``fashion-mnist`` (MIT, keeps its own train/test). See data/README.md.

    python -m mbm.train.sources --out cache/mbm-data --size 128
"""

from __future__ import annotations

from .build import DEFAULT_SOURCES, MODULES, build_all, build_source, stats_path
from .common import SourceMissing, load_manifest, normalize_caption, write_jsonl
from .split import assign_splits, split_hash, split_hashes

__all__ = [
    "DEFAULT_SOURCES", "MODULES", "SourceMissing", "assign_splits", "build_all", "build_source",
    "load_manifest", "normalize_caption", "split_hash", "split_hashes", "stats_path", "write_jsonl",
]
