"""The one atomic-write helper: files and folders land whole or not at all.

A file is written under a temporary name in its own folder, fsynced, then renamed over
the target (``os.replace``); a folder is built under a temporary name and swapped in
with one ``renameat2(RENAME_EXCHANGE)`` where the kernel has it (readers see the old
folder or the new one, never none), else with two renames through a unique name.
Temporary names start with ``.`` and end with ``.tmp``: a crashed write leaves only
such names, which :func:`clean_temp` (and ``mbm check --fix``) removes.

Temporary files keep the user's umask (``tempfile.mkstemp`` would make them 0600, and a
store or checkpoint made of them could not be read by another account, e.g. a service).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_file(folder: Path, name: str) -> Path:
    """A new empty file ``folder/.name.<random>.tmp``, created with the umask's permissions."""
    while True:
        path = Path(folder) / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


def temp_dir(folder: Path, name: str) -> Path:
    """A new empty folder ``folder/.name.<random>.tmp``, created with the umask's permissions."""
    while True:
        path = Path(folder) / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed over
    ``target``, on any error (including a library's RuntimeError for a full disk) it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(target.parent, target.name)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path | str, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_with(target: Path | str, writer: Callable[[str], object]) -> None:
    """``writer(temp_path)`` writes the file (e.g. ``faiss.write_index``); then it lands whole."""
    with atomic_path(target) as tmp:
        writer(str(tmp))


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a new temporary folder beside ``target``; on success it replaces ``target`` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, target.name)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_dir(tmp, target)


def swap_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target`` (replacing what is there) and delete the old one."""
    if not target.exists():
        os.replace(new, target)
        _fsync_dir(target.parent)
        return
    if _exchange(new, target):  # new now holds the old content
        shutil.rmtree(new, ignore_errors=True)
        _fsync_dir(target.parent)
        return
    # POSIX cannot rename a folder over a non-empty one: move the old aside under a unique name
    old = temp_dir(target.parent, target.name + ".old")
    old.rmdir()
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2; False where it is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def stale_temp(folder: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Temporary files and folders in ``folder`` left by a crashed write (older than ``min_age_s``)."""
    found = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if is_temp(entry.name):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s:
                    found.append(Path(entry.path))
    return sorted(found)


def clean_temp(folder: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Remove what :func:`stale_temp` finds; returns what was removed."""
    removed = []
    for path in stale_temp(folder, min_age_s):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed
