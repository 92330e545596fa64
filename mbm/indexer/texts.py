"""Text sources: a .txt file (one text per line), JSONL (a "text" field) or CSV (a "text" column).

A source is untrusted: every way it can be malformed (bad UTF-8, a CSV field over the csv
module's limit, JSON nested too deep to parse, a file too big) is a ValueError naming the
line and the fix, so the runner skips that file and goes on. Texts are cleaned of control
characters and lone surrogates and cut to MAX_TEXT_CHARS before anything hashes or embeds them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mbm.indexer.scan import SizeLimit, Unreadable, open_regular

MAX_TEXT_CHARS = 2000
# 256 MiB is about two million captions: held in memory and embedded in one run, comfortably.
MAX_TEXT_FILE_BYTES = 256 * 1024 * 1024
TEXT_LIMIT = SizeLimit(MAX_TEXT_FILE_BYTES, "a text source", "split it into smaller files")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls except tab and newline
_BOM = b"\xef\xbb\xbf"


def text_hash(text: str) -> str:
    return hashlib.blake2b(b"text:" + text.encode("utf-8"), digest_size=16).hexdigest()


def clean_text(text: str) -> str:
    """``text`` as indexed: controls become spaces, lone surrogates "?", trimmed, at most MAX_TEXT_CHARS."""
    text = _CONTROL.sub(" ", text).encode("utf-8", "replace").decode("utf-8")
    return text.strip()[:MAX_TEXT_CHARS].rstrip()


def read_texts(path: str, *, size: int | None = None) -> list[tuple[int, str]]:
    """``(line number, text)`` for every non-empty text; ValueError names the file's problem and fix.

    ``size`` is the size the scan saw: a file over the limit is refused before it is opened."""
    too_big = TEXT_LIMIT.problem(size) if size is not None else None
    if too_big:
        raise ValueError(too_big)
    suffix = Path(path).suffix.lower()
    try:
        with open_regular(path, TEXT_LIMIT) as f:
            lines = _lines(f)
            if suffix == ".jsonl":
                return _jsonl(lines)
            if suffix == ".csv":
                return _csv(line for _, line in lines)
            return [(n, text) for n, line in lines if (text := clean_text(line))]
    except Unreadable as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"cannot read ({e.strerror or e})") from None
    except MemoryError:
        raise ValueError(
            f"too big to parse in memory — split it into files under {MAX_TEXT_FILE_BYTES >> 20} MiB"
        ) from None


def _lines(f: BinaryIO) -> Iterator[tuple[int, str]]:
    """Numbered lines decoded one at a time, so a bad byte is reported at its own line."""
    for n, raw in enumerate(f, 1):
        if n == 1 and raw.startswith(_BOM):  # Windows editors start UTF-8 files with a BOM
            raw = raw[len(_BOM) :]
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            reason = f"line {n} is not UTF-8 (byte {e.start + 1} of the line) — save the file as UTF-8"
            raise ValueError(reason) from None


def _jsonl(lines: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    out = []
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n} is not JSON ({e.msg}) — one JSON object per line") from None
        except RecursionError:
            raise ValueError(f"line {n} is JSON nested too deeply to parse — one flat JSON object per line") from None
        except ValueError as e:  # e.g. an integer with more digits than Python converts
            raise ValueError(f"line {n} is not usable JSON ({e}) — one JSON object per line") from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise ValueError(f'line {n} has no "text" string field — write {{"text": "..."}} on each line')
        if text := clean_text(text):
            out.append((n, text))
    return out


def _csv(lines: Iterable[str]) -> list[tuple[int, str]]:
    reader = csv.reader(lines)
    out = []
    try:
        columns = next(reader, [])
        if "text" not in columns:
            shown = ", ".join(repr(c) for c in columns[:5]) + (", ..." if len(columns) > 5 else "")
            raise ValueError(f"has no 'text' column (columns: {shown or 'none'}) — add a header row with a text column")
        column = columns.index("text")
        for row in reader:
            if len(row) > column and (text := clean_text(row[column])):
                out.append((reader.line_num, text))
    except csv.Error as e:
        raise ValueError(
            f"line {reader.line_num} is not valid CSV ({e}) — quote fields and keep each under "
            f"{csv.field_size_limit():,} characters"
        ) from None
    return out
