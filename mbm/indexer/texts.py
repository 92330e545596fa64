"""Text sources: a .txt file (one text per line), JSONL (a "text" field) or CSV (a "text" column)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

MAX_TEXT_CHARS = 2000


def text_hash(text: str) -> str:
    return hashlib.blake2b(b"text:" + text.encode("utf-8"), digest_size=16).hexdigest()


def read_texts(path: str) -> list[tuple[int, str]]:
    """``(line number, text)`` for every non-empty text; ValueError names the file, line and fix."""
    suffix = Path(path).suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="" if suffix == ".csv" else None) as f:
            if suffix == ".jsonl":
                return _jsonl(path, f)
            if suffix == ".csv":
                return _csv(path, f)
            return [(n, line.strip()[:MAX_TEXT_CHARS]) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start}) — save the file as UTF-8") from None
    except OSError as e:
        raise ValueError(f"cannot read ({e.strerror})") from None


def _jsonl(path: str, f) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    out = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n} is not JSON ({e.msg}) — one JSON object per line") from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise ValueError(f'line {n} has no "text" string field — write {{"text": "..."}} on each line')
        if text.strip():
            out.append((n, text.strip()[:MAX_TEXT_CHARS]))
    return out


def _csv(path: str, f) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    reader = csv.DictReader(f)
    if not reader.fieldnames or "text" not in reader.fieldnames:
        raise ValueError(f"has no 'text' column (columns: {reader.fieldnames}) — add a header row with a text column")
    return [(n, row["text"].strip()[:MAX_TEXT_CHARS]) for n, row in enumerate(reader, 2) if (row.get("text") or "").strip()]
