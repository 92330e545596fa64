"""Model fingerprints: one digest of everything that decides what a model's embeddings are.

A fingerprint covers the whole weights file(s) (sha256, streamed), a checkpoint's heads and
tokenizer files, the architecture and the preprocess config (image size, mean/std, resize
mode, interpolation). Files are named in it by their base name only, so a checkpoint
folder keeps its fingerprint when it is moved or copied.

Hashing 600 MB at every load would cost seconds, so file digests are cached in
``$XDG_CACHE_HOME/mbm/file-hashes.json`` (default ``~/.cache/mbm``), keyed by the file's
(device, inode, size, mtime, ctime): a file rewritten in place or replaced gets a new key
and is hashed again. A cache that cannot be read or written only costs a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mbm.atomic import write_text

log = logging.getLogger(__name__)

CACHE_FILE = "file-hashes.json"
CACHE_FORMAT = 1
MAX_ENTRIES = 256  # a few models' files; the oldest entries are dropped first
FINGERPRINT_VERSION = 2  # 1 hashed three 4 MiB samples of the weights and nothing else
_CHUNK = 1 << 20


def cache_path() -> Path:
    """Where file digests are cached: ``$XDG_CACHE_HOME/mbm`` or ``~/.cache/mbm``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mbm" / CACHE_FILE


def hash_file(path: Path) -> str:
    """sha256 (hex) of a whole file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def stat_key(path: Path) -> str:
    """What identifies one version of a file: device, inode, size, mtime and ctime (a rewrite changes it)."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _read_cache() -> dict[str, str]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}


def _write_cache(files: dict[str, str]) -> None:
    kept = dict(list(files.items())[-MAX_ENTRIES:])
    try:
        write_text(cache_path(), json.dumps({"format": CACHE_FORMAT, "files": kept}, indent=0))
    except OSError as e:  # a read-only home or a full disk: the next load hashes again
        log.debug("file digest cache %s not written: %s", cache_path(), e)


def file_digests(paths: Sequence[Path]) -> list[str]:
    """The sha256 of each file: from the cache when the file is unchanged since it was hashed."""
    cache = _read_cache()
    digests, changed = [], False
    for path in paths:
        key = stat_key(path)
        digest = cache.get(key)
        if digest is None:
            digest = hash_file(path)
            if stat_key(path) == key:  # not cached when the file changed while it was read
                cache[key], changed = digest, True
        digests.append(digest)
    if changed:
        _write_cache(cache)
    return digests


def fingerprint(kind: str, *, files: Sequence[Path] = (), config: Mapping[str, Any] | None = None) -> str:
    """``<kind>:<16 hex>`` over the files' contents (by base name) and a JSON-able config."""
    h = hashlib.sha256(f"mbm-fingerprint-{FINGERPRINT_VERSION}\n".encode())
    h.update(json.dumps(config or {}, sort_keys=True, default=str).encode())
    for path, digest in zip(files, file_digests([Path(p) for p in files])):
        h.update(f"\n{Path(path).name}:{digest}".encode())
    return f"{kind}:{h.hexdigest()[:16]}"


def legacy_fingerprint(spec: str, weights: Path | None, config_file: Path | None) -> str | None:
    """The fingerprint mbm recorded before version 2 (three 4 MiB samples of the weights, or the
    spec's name), so collections indexed then keep working; an index run records the full one."""
    if config_file is not None:
        return f"init:{hashlib.sha256(config_file.read_bytes()).hexdigest()[:16]}"
    name, _, tag = spec.partition(":")
    if tag == "random":
        return f"init:{name}:seed0"
    if weights is not None and (tag == "" or Path(tag).expanduser().is_file()):  # a checkpoint folder or a weights file
        size, chunk = weights.stat().st_size, 1 << 22
        h = hashlib.sha256(str(size).encode())
        with open(weights, "rb") as f:
            for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
                f.seek(offset)
                h.update(f.read(chunk))
        return f"file:{h.hexdigest()[:16]}"
    return f"openclip:{name}:{tag}" if tag else None
