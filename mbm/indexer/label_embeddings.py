"""Text embeddings of a zero-shot tag vocabulary, cached on disk per model fingerprint.

Zero-shot tagging embeds one prompt per label ("a photo of a dog") with the model's text tower.
For the 150 everyday labels that is 1-7 s of a 2-core CPU (ViT-B-32's text tower), paid by
every index run that tags anything, although the result only depends on the weights and the
prompts. So the first computation is kept in ``$XDG_CACHE_HOME/mbm/label-embeddings/`` (default
``~/.cache/mbm``), one ``.npy`` per (fingerprint, text engine, prompts), and later runs read it
back: the same float32 rows, so the same tags, and the text tower is never loaded to tag. The text
engine is part of the key because a fast-started encoder encodes texts with the exported ONNX
query tower (fp32) and a fully loaded one with torch (bf16 on CPUs with fast bf16), whose vectors
differ slightly: each run gets exactly what its engine computes. A cache that cannot be read or
written only costs the computation again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbm.atomic import write_bytes
from mbm.models.fingerprint import cache_path

log = logging.getLogger(__name__)

CACHE_DIR = "label-embeddings"
FORMAT = 1  # bump when what is cached changes: older files are then never read
MAX_FILES = 64  # vocabularies kept (the least recently used go first); 150 labels x 512 dims is 300 KB


def cache_file(fingerprint: str, prompts: Sequence[str], engine: str = "") -> Path:
    """Where the embeddings of ``prompts`` under the weights with ``fingerprint``, computed by the text
    ``engine`` (``Encoder.text_engine``), are cached."""
    key = json.dumps([FORMAT, fingerprint, engine, list(prompts)], ensure_ascii=False).encode()
    digest = hashlib.sha256(key).hexdigest()[:20]
    return cache_path().parent / CACHE_DIR / f"{fingerprint.replace(':', '-')}-{digest}.npy"


def label_embeddings(encoder: Any, prompts: Sequence[str]) -> np.ndarray:
    """``encoder.encode_texts(prompts)`` as float32 ``(len(prompts), dim)``, read from the cache when computed before."""
    fingerprint = getattr(encoder, "fingerprint", None)
    engine = str(getattr(encoder, "text_engine", ""))  # ONNX fp32 and torch bf16 differ in the 3rd digit: kept apart
    path = cache_file(fingerprint, prompts, engine) if isinstance(fingerprint, str) and fingerprint else None
    cached = _read(path, len(prompts), int(encoder.dim)) if path is not None else None
    if cached is not None:
        return cached
    embeddings = np.ascontiguousarray(encoder.encode_texts(list(prompts)), np.float32)
    if path is not None:
        _write(path, embeddings)
    return embeddings


def _read(path: Path, rows: int, dim: int) -> np.ndarray | None:
    try:
        with open(path, "rb") as f:
            array = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or array.shape != (rows, dim) or not np.isfinite(array).all():
        log.debug("label embeddings %s do not fit (%s %s): computed again", path, array.dtype, array.shape)
        return None
    try:
        os.utime(path)  # recently used: pruned last
    except OSError:
        pass
    return array


def _write(path: Path, embeddings: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, embeddings, allow_pickle=False)
    try:
        write_bytes(path, buf.getvalue())
        _prune(path.parent)
    except OSError as e:  # a read-only or full cache: the next run computes them again
        log.debug("label embeddings not cached in %s: %s", path, e)


def _prune(folder: Path) -> None:
    stamped = []
    for path in folder.glob("*.npy"):  # temporary files end in .tmp: never matched
        try:
            stamped.append((path.stat().st_mtime_ns, path))
        except OSError:  # pruned by another process meanwhile
            continue
    for _, old in sorted(stamped)[:-MAX_FILES]:
        old.unlink(missing_ok=True)
