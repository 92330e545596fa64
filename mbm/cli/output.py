"""Formatting for the CLI: tables on stdout, progress and messages on stderr.

Everything meant for a person goes through :func:`safe`: file names and indexed texts may
hold control characters or terminal escape sequences ("x\\x1b[2J.png"), and printed raw
they would clear, retitle or reprogram the user's terminal. JSON keeps exact values
(:func:`json_text`); ``--paths`` writes raw bytes (:func:`path_lines`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import typer

from mbm.errors import UsageError
from mbm.indexer.scan import display_path

# C0 and C1 controls, DEL, Unicode line/paragraph separators, bidirectional overrides and
# isolates (they reorder what is shown), and lone surrogates (unprintable as UTF-8).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_JSON = re.compile(
    r"[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)  # json escapes C0 itself
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters and escape sequences shown as ``\\x1b``-style escapes;
    other Unicode (accents, CJK, emoji) as it is."""
    if keep_newlines:
        return "\n".join(safe(line) for line in text.split("\n"))
    return _UNSAFE.sub(lambda m: _escape(m.group()), text)


def json_text(doc: Any) -> str:
    """Indented JSON with exact values; characters a terminal would act on are \\u-escaped."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(doc, indent=2, ensure_ascii=False))


def err(message: str) -> None:
    typer.echo(safe(message, keep_newlines=True), err=True)


def shown(path: str) -> str:
    """A path as a person should see it: undecodable bytes and control characters escaped."""
    return safe(display_path(path))


class SafeFormatter(logging.Formatter):
    """Log lines on stderr are for people too: the library logs file names."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record), keep_newlines=True)


def path_lines(items: Sequence[str], *, print0: bool = False, terminal: bool = False) -> bytes:
    """Bare paths (or texts) for piping: raw bytes ending in NUL with ``print0``, else one per line.

    Without ``print0`` a value holding a newline is refused (it would read as two paths; an
    escaped one would name another file); on a terminal values are escaped like ``ls`` does."""
    if terminal and not print0:
        return "".join(shown(v) + "\n" for v in items).encode("utf-8")
    end = "\0" if print0 else "\n"
    for v in items:
        if end in v:
            fix = (
                "it cannot be printed NUL-separated"
                if print0
                else "--paths cannot print it one per line — use --print0 (and xargs -0)"
            )
            raise UsageError(f"{shown(v)} holds a {'NUL' if print0 else 'newline'} character, so {fix}")
    return b"".join(os.fsencode(v) + end.encode() for v in items)


def write_paths(items: Sequence[str], *, print0: bool = False) -> None:
    """:func:`path_lines` to stdout, escaped when stdout is a terminal."""
    data = path_lines(items, print0=print0, terminal=sys.stdout.isatty())
    stream = typer.get_binary_stream("stdout")
    stream.write(data)
    stream.flush()


def search_json(query: Sequence[Any], collection: str, hits: Sequence[Any], seconds: dict[str, float]) -> str:
    terms = [
        {"weight": t.weight, "kind": t.kind, "value": t.value.tolist() if t.kind == "vector" else t.value}
        for t in query
    ]
    return json_text(
        {
            "query": str(query),
            "terms": terms,
            "collection": collection,
            "hits": [h.as_dict() for h in hits],
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
        }
    )


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a bar with files/s and ETA on stderr (terminals only)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("index", total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, rate=f"{speed:6.1f} files/s" if speed else "")

        yield update


def index_summary(report, verbose: bool = False) -> str:
    parts = [
        f"indexed {report.indexed}",
        f"reused {report.reused} (moved {report.moved})",
        f"unchanged {report.unchanged}",
        f"removed {report.removed}",
        f"skipped {len(report.skipped)}",
    ]
    if report.tokens_filled or report.tokens_skipped:
        parts.append(
            f"re-ranking tokens back-filled {report.tokens_filled}"
            + (f" ({len(report.tokens_skipped)} could not be)" if report.tokens_skipped else "")
        )
    if report.tokens_not_retried:
        parts.append(
            f"{report.tokens_not_retried} items still without re-ranking tokens (their files could not be read "
            "before and have not changed; --rerank-tokens tries again)"
        )
    lines = [
        ", ".join(parts) + f" — {report.total_items} items in the collection, {report.seconds.get('total', 0):.1f}s"
    ]
    if report.skipped:
        reasons: dict[str, int] = {}
        for _, reason in report.skipped:
            key = reason.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        lines.append("skipped: " + "; ".join(f"{n} {safe(r)}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])))
    if report.model:
        lines.append(f"model: {safe(report.model)}")
    if verbose:
        lines.append(
            "time per stage (decode/read summed over threads): "
            + ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
        )
    return "\n".join(lines)


def hits_table(hits: Sequence) -> str:
    rows = []
    for h in hits:
        what = safe(h.text) if h.text is not None else shown(h.path)
        match = f"  match {h.match:5.3f}" if h.match is not None else ""
        rows.append(f"{h.rank:>4}  {h.score:6.3f}{match}  {what}")
    return "\n".join(rows)


def collections_table(infos: Sequence) -> str:
    lines = [f"{'name':<16} {'kind':<6} {'items':>8} {'index':<8} {'catalog':>9} {'vectors':>9}  model / location"]
    for c in infos:
        lines.append(
            f"{safe(c.name):<16} {c.kind:<6} {c.items:>8} {c.index_type:<8} {human_size(c.catalog_bytes):>9} "
            f"{human_size(c.vectors_bytes):>9}  {safe(c.model)}\n{'':<60}{shown(c.folder)}"
        )
        lines.append(f"{'':<60}{_tokens_line(c)}")
        if getattr(c, "index", None):
            lines.append(f"{'':<60}{index_line(c.index)}")
    return "\n".join(lines)


def index_line(index: dict[str, Any]) -> str:
    """One line on the vector index for people: type, settings, recall, memory."""
    if not index or index.get("type") == "not built":
        return "index: not built (the next search or index run builds it)"
    params = ", ".join(f"{k}={v}" for k, v in index.get("params", {}).items())
    recall = index.get("recall_at_10")
    parts = [f"index: {index['type']}" + (f" ({params})" if params else "")]
    if recall is not None:
        parts.append(f"recall@10 {recall:.3f} on {index.get('recall_queries', 0)} of its own vectors")
    elif index["type"] == "Flat":
        parts.append("exact")
    parts.append(f"{human_size(index.get('memory_bytes', 0))} in memory")
    if index.get("rows_bytes"):
        parts.append(f"{human_size(index['rows_bytes'])} float16 rows (memory-mapped)")
    if index.get("tombstones"):
        parts.append(f"{index['tombstones']} tombstones")
    return safe(", ".join(parts))


def _tokens_line(c: Any) -> str:
    if c.fusion is False:
        return "re-ranking: no (the model has no fusion head)"
    line = f"re-ranking tokens: {c.token_bytes_per_item:,} B/item, {human_size(c.token_bytes)}"
    if c.items_without_tokens:
        line += f"; {c.items_without_tokens} items without (`mbm index PATH --rerank-tokens` adds them)"
    if c.rerank_default:
        line += f"; text queries re-rank their top {c.rerank_default} by default (calibrated model; --no-rerank)"
    elif c.fusion:
        line += "; re-ranked with --rerank"
    return line


def models_table(rows: Sequence) -> str:
    lines = [f"{'model':<48} {'kind':<22} weights"]
    for m in rows:
        present = "present" if m.weights_present else "not downloaded"
        lines.append(f"{safe(m.spec):<48} {m.kind:<22} {present}{'  — ' + safe(m.note) if m.note else ''}")
    return "\n".join(lines)


def human_size(n: float) -> str:
    """A byte count for people: 512 B, 3.4 KB, 1.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_report(reports: Sequence) -> str:
    lines = []
    for r in reports:
        lines.append(
            f"{r.collection}: {r.items} items, " + ("ok" if not r.problems else f"{len(r.problems)} problem(s)")
        )
        for p in r.problems:
            state = "fixed" if p.fixed else ("fixable with --fix" if p.fixable else "needs you")
            lines.append(f"  [{state}] {p.kind}: {safe(p.detail)}")
    return "\n".join(lines)
