"""Rendering the chosen icons to PNGs in worker processes, with a per-icon timeout, cached by content."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import wait as wait_conns
from pathlib import Path
from typing import Any

from mbm.atomic import write_text

from .svg import Icon, render_svg


def _render_job(svg: str, size: int, dest: str) -> tuple[str, str | None]:
    try:
        img = render_svg(svg, size)
    except Exception as e:  # noqa: BLE001 - any renderer failure is one skipped icon
        return "error", f"{type(e).__name__}: {e}"[:200]
    if img is None:
        return "blank", None
    from ..common import save_png

    return "ok", save_png(img, Path(dest))


def _worker_main(conn, job_fn=_render_job) -> None:
    conn.send(("ready",))  # started and imported: only now does a job's timeout clock run
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        idx, svg, size, dest = job
        conn.send((idx, *job_fn(svg, size, dest)))


class RenderPool:
    """``workers`` processes rendering one SVG at a time; a job over ``timeout`` seconds gets
    its worker killed (and replaced) and comes back as ("timeout", None). ``job_fn(svg, size,
    dest) -> (status, sha)`` does the work (a module-level function: workers are spawned)."""

    def __init__(self, workers: int, timeout: float, job_fn: Callable = _render_job):
        self.ctx = multiprocessing.get_context("spawn")
        self.timeout = timeout
        self.job_fn = job_fn
        self.start_failures = 0
        self.workers = [self._start() for _ in range(max(1, workers))]

    def _start(self) -> dict[str, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.job_fn), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "t0": 0.0, "ready": False}

    def run(self, jobs: list[tuple[int, str, int, str]]):
        """Yield (idx, status, sha) for every job, in completion order."""
        pending = list(reversed(jobs))
        while pending or any(w["job"] is not None for w in self.workers):
            for w in self.workers:
                if w["ready"] and w["job"] is None and pending:
                    job = pending.pop()
                    w["job"], w["t0"] = job[0], time.monotonic()
                    w["conn"].send(job)
            watch = {w["conn"]: w for w in self.workers if w["job"] is not None or not w["ready"]}
            for ready in wait_conns(list(watch), timeout=0.5):
                w = watch[ready]
                try:
                    msg = w["conn"].recv()
                except (EOFError, OSError):  # the worker died (crash in the renderer)
                    msg = None
                if msg == ("ready",):
                    w["ready"] = True
                    continue
                if msg is None:
                    if not w["ready"]:
                        self.start_failures += 1
                        if self.start_failures > 3:
                            raise RuntimeError(
                                "resvg render workers die on start-up (run with --workers 1 "
                                "and check that `import resvg_py` works)"
                            )
                    idx, status, sha = w["job"], "error", None
                    self._replace(w)
                else:
                    idx, status, sha = msg
                w["job"] = None
                if idx is not None:
                    yield idx, status, sha
            now = time.monotonic()
            for w in self.workers:
                if w["job"] is not None and (now - w["t0"] > self.timeout or not w["proc"].is_alive()):
                    idx = w["job"]
                    status = "timeout" if w["proc"].is_alive() else "error"
                    self._replace(w)
                    w["job"] = None
                    yield idx, status, None

    def _replace(self, w: dict) -> None:
        w["proc"].kill()
        w["proc"].join(5)
        w["conn"].close()
        w.update(self._start())
        w["job"] = None

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w["proc"].join(2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(2)


def cache_name(icon: Icon, size: int) -> str:
    """``<name>.<12 hex of sha256(svg text, size, colour)>``: a changed icon gets a new file."""
    h = hashlib.sha256(f"{icon.svg}\0{size}\0{icon.colour or ''}".encode()).hexdigest()[:12]
    return f"{icon.name}.{h}"


def _sha_if_cached(path: Path, size: int) -> str | None:
    from ..common import cached_png

    hit = cached_png(path, size)
    return None if hit is None else hit[1]


def render_all(
    icons: list[Icon],
    out_dir: Path,
    size: int,
    *,
    workers: int,
    timeout: float,
    report: Counter,
    log: Callable[[str], object],
) -> list[tuple[Icon, Path, str]]:
    """(icon, PNG path, PNG sha256) for every icon that renders; reuses cached PNGs; blank,
    failed and timed-out renders are counted and remembered with a marker file."""
    base = out_dir / "images" / "iconify"
    done: list[tuple[Icon, Path, str]] = []
    jobs = []
    for i, icon in enumerate(icons):
        stem = base / icon.prefix / cache_name(icon, size)
        png = stem.with_suffix(stem.suffix + ".png")
        sha = _sha_if_cached(png, size)
        if sha is not None:
            done.append((icon, png, sha))
            continue
        marker = next((m for m in ("blank", "failed") if stem.with_suffix(stem.suffix + "." + m).exists()), None)
        if marker == "blank":
            report["iconify: renders blank"] += 1
            continue
        if marker == "failed":
            report["iconify: resvg failed or timed out"] += 1
            continue
        png.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((i, icon.svg, size, str(png)))
    log(f"iconify: {len(done)} PNGs cached, {len(jobs)} to render with {workers} worker(s)")
    if not jobs:
        return done
    per_set: Counter[str] = Counter()
    t0 = time.monotonic()
    pool = RenderPool(workers, timeout)
    try:
        for n, (i, status, sha) in enumerate(pool.run(jobs), 1):
            icon = icons[i]
            stem = base / icon.prefix / cache_name(icon, size)
            png = stem.with_suffix(stem.suffix + ".png")
            if status == "ok":
                done.append((icon, png, sha))
                per_set[icon.prefix] += 1
            elif status == "blank":
                report["iconify: renders blank"] += 1
                write_text(stem.with_suffix(stem.suffix + ".blank"), "")
            else:
                report["iconify: resvg failed or timed out"] += 1
                write_text(stem.with_suffix(stem.suffix + ".failed"), f"{status}\n")
                if status == "timeout":
                    log(f"iconify: {icon.prefix}:{icon.name} took over {timeout:.0f} s; killed and skipped")
            if n % 2000 == 0 or n == len(jobs):
                rate = n / max(1e-6, time.monotonic() - t0)
                eta = (len(jobs) - n) / max(rate, 1e-6)
                log(
                    f"iconify: rendered {n}/{len(jobs)} ({rate:.0f}/s, ~{eta:.0f} s left); "
                    + ", ".join(f"{p} {c}" for p, c in sorted(per_set.items()))
                )
    finally:
        pool.close()
    return done
