"""Formatting for the CLI: tables on stdout, progress and messages on stderr."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Sequence

import typer

from mbm.indexer.scan import display_path


def err(message: str) -> None:
    typer.echo(message, err=True)


def shown(path: str) -> str:
    return display_path(path)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a bar with files/s and ETA on stderr (terminals only)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("index", total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, rate=f"{speed:6.1f} files/s" if speed else "")

        yield update


def index_summary(report, verbose: bool = False) -> str:  # type: ignore[no-untyped-def]
    parts = [f"indexed {report.indexed}", f"reused {report.reused} (moved {report.moved})",
             f"unchanged {report.unchanged}", f"removed {report.removed}", f"skipped {len(report.skipped)}"]
    lines = [", ".join(parts) + f" — {report.total_items} items in the collection, {report.seconds.get('total', 0):.1f}s"]
    if report.skipped:
        reasons: dict[str, int] = {}
        for _, reason in report.skipped:
            key = reason.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        lines.append("skipped: " + "; ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])))
    if report.model:
        lines.append(f"model: {report.model}")
    if verbose:
        lines.append("time per stage (decode/read summed over threads): " + ", ".join(
            f"{k} {v:.2f}s" for k, v in report.seconds.items()))
    return "\n".join(lines)


def hits_table(hits: Sequence) -> str:  # type: ignore[type-arg]
    rows = []
    for h in hits:
        what = h.text if h.text is not None else shown(h.path)
        match = f"  match {h.match:5.3f}" if h.match is not None else ""
        rows.append(f"{h.rank:>4}  {h.score:6.3f}{match}  {what}")
    return "\n".join(rows)


def collections_table(infos: Sequence) -> str:  # type: ignore[type-arg]
    lines = [f"{'name':<16} {'kind':<6} {'items':>8} {'index':<8} {'catalog':>9} {'vectors':>9}  model / location"]
    for c in infos:
        lines.append(f"{c.name:<16} {c.kind:<6} {c.items:>8} {c.index_type:<8} {_size(c.catalog_bytes):>9} "
                     f"{_size(c.vectors_bytes):>9}  {c.model}\n{'':<60}{c.folder}")
    return "\n".join(lines)


def models_table(rows: Sequence) -> str:  # type: ignore[type-arg]
    lines = [f"{'model':<48} {'kind':<22} weights"]
    for m in rows:
        present = "present" if m.weights_present else "not downloaded"
        lines.append(f"{m.spec:<48} {m.kind:<22} {present}{'  — ' + m.note if m.note else ''}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
