"""Walk the roots and list candidate files with their size and mtime; open them safely later.

Symlinked folders are followed once (loops are detected by device+inode), hidden
folders and NAS thumbnail folders are skipped, and anything that cannot be listed
is reported as a problem instead of stopping the walk. A file is opened for reading
only through :func:`open_regular`, which refuses what stopped being a regular file
(a FIFO or device swapped in after the scan) instead of blocking on it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mbm.errors import UsageError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .gif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm "
    ".jp2 .j2k .jpx .jpf .heic .heif .avif".split()
)
TEXT_EXTENSIONS = frozenset({".txt", ".jsonl", ".csv"})
SKIPPED_DIRS = frozenset({"@eaDir", "__pycache__", "node_modules", "$RECYCLE.BIN", "System Volume Information"})
MAX_REASON_CHARS = 300
# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer (fstat then
# rejects it). No O_NOFOLLOW: a symlink to a file is a legitimate file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class Unreadable(Exception):
    """A file that cannot be read; the message is the one-line reason."""


@dataclass(frozen=True)
class SizeLimit:
    """The largest file of one kind mbm reads, and what to tell a user whose file is bigger."""

    max_bytes: int
    kind: str  # "an image"
    fix: str  # "re-encode it smaller"

    def problem(self, size: int) -> str | None:
        if size <= self.max_bytes:
            return None
        return f"file is {size:,} bytes, over the {self.max_bytes // 2**20} MiB limit for {self.kind} — {self.fix}"


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, symlinks not resolved: the name the user knows
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    roots: list[str] = field(default_factory=list)


def display_path(path: str) -> str:
    """A printable form of a path whose name may not be valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def one_line(reason: str) -> str:
    """A skip reason on one line (control characters and newlines become spaces), at most MAX_REASON_CHARS."""
    flat = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", reason).split())
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 1] + "…"


def open_regular(path: str, limit: SizeLimit) -> BinaryIO:
    """``path`` opened for binary reading if it is (still) a regular file within ``limit``; else Unreadable."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise Unreadable("file vanished before it could be read") from None
    except IsADirectoryError:
        raise Unreadable("is a folder, not a file") from None
    except OSError as e:
        raise Unreadable(f"cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Unreadable("is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file (a FIFO, socket or device since the scan) — index plain files only")
        problem = limit.problem(st.st_size)
        if problem:
            raise Unreadable(problem)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _valid_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def scan(roots: Iterable[str | os.PathLike[str]], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> ScanResult:
    """List files under ``roots`` (files or folders) whose extension is in ``extensions``."""
    result = ScanResult()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in roots:
        root_path = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if not os.path.exists(root_path):
            raise UsageError(f"path {display_path(root_path)} does not exist — check the spelling")
        result.roots.append(root_path)
        if os.path.isdir(root_path):
            _walk(root_path, extensions, result, seen_dirs, seen_files)
        else:
            _add_file(root_path, result, seen_files, explicit=True, extensions=extensions)
    return result


def _walk(top: str, extensions: frozenset[str], result: ScanResult, seen_dirs: set, seen_files: set) -> None:
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            result.problems.append((folder, f"cannot read folder ({e.strerror})"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            if os.path.islink(folder):
                result.problems.append((folder, "symlink loop or second link to a folder already scanned"))
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            result.problems.append((folder, f"cannot list folder ({e.strerror})"))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SKIPPED_DIRS:
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                _add_file(entry.path, result, seen_files, explicit=False, extensions=extensions)
        stack.extend(reversed(subdirs))


def _add_file(
    path: str, result: ScanResult, seen_files: set[str], *, explicit: bool, extensions: frozenset[str]
) -> None:
    if path in seen_files:
        return
    seen_files.add(path)
    if not _valid_utf8(path):
        result.problems.append((path, "file name is not valid UTF-8 — rename the file"))
        return
    if explicit and os.path.splitext(path)[1].lower() not in extensions:
        kinds = " ".join(sorted(extensions))
        result.problems.append((path, f"not a supported file type (supported: {kinds})"))
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        reason = "broken symlink" if os.path.islink(path) else "file vanished during the scan"
        result.problems.append((path, reason))
        return
    except OSError as e:
        result.problems.append((path, f"cannot stat ({e.strerror})"))
        return
    if not stat.S_ISREG(st.st_mode):
        result.problems.append((path, "not a regular file"))
        return
    result.files.append(FileEntry(path, st.st_size, st.st_mtime_ns))


def is_text_source(path: str | Path) -> bool:
    return Path(path).suffix.lower() in TEXT_EXTENSIONS
