"""Temporary names for atomic writes (write, fsync, ``os.replace``) that keep the user's umask.

``tempfile.mkstemp``/``mkdtemp`` create owner-only files and folders (0600/0700); a store
or checkpoint made of them could not be read by another account (a search service, a
shared model folder), unlike everything else the same process writes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def temp_file(folder: Path, name: str) -> Path:
    """A new empty file ``folder/.name.<random>.tmp``, created with the umask's permissions."""
    while True:
        path = Path(folder) / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


def temp_dir(folder: Path, name: str) -> Path:
    """A new empty folder ``folder/.name.<random>.tmp``, created with the umask's permissions."""
    while True:
        path = Path(folder) / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
