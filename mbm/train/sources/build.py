"""Build every offline source into one manifest: ``<out>/manifest.jsonl`` + ``.stats.json``.

Each source renders its pictures under ``<out>/images/<source>/`` (reused on a re-run with
the same size), then all rows are split together by :func:`split.assign_splits` so that a
concept shared across sources (the Noto and Symbola "red car") lands in one split.
"""

from __future__ import annotations

import importlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Mapping

from mbm.atomic import write_text

from .common import SourceMissing, write_jsonl
from .split import assign_splits, split_hashes

# source name (as written in manifests) -> module in this package
MODULES = {
    "openclipart": "openclipart",
    "emoji": "emoji",
    "symbola": "symbola",
    "tuxpaint": "tuxpaint",
    "fashion-mnist": "fashion_mnist",
}
DEFAULT_SOURCES = tuple(MODULES)
MANIFEST = "manifest.jsonl"
STATS_VERSION = 1
FIELD_ORDER = ("image", "captions", "label", "source", "group", "split", "licence", "sha256", "origin")


def stats_path(manifest: Path) -> Path:
    """``manifest.jsonl`` -> ``manifest.jsonl.stats.json``."""
    return manifest.with_name(manifest.name + ".stats.json")


def build_source(name: str, out_dir: Path, *, size: int = 224, limit: int | None = None,
                 root: Path | None = None, report: Counter | None = None,
                 log: Callable[[str], object] | None = None) -> list[dict]:
    """Run one source's builder (rows without split, except sources that carry their own).

    ``root`` overrides where the package's files are looked for (default: the Debian path).
    """
    if name not in MODULES:
        raise ValueError(f"unknown source {name!r}: choose from {', '.join(MODULES)}")
    module = importlib.import_module(f"{__package__}.{MODULES[name]}")
    extra = {"root": Path(root)} if root is not None else {}
    return module.build(Path(out_dir), limit=limit, size=size, report=report, log=log, **extra)


def build_all(out_dir: str | Path, sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES, *,
              size: int = 224, limit: int | None = None, val: int = 500, test: int = 700,
              seed: int = 0, log: Callable[[str], object] = print,
              roots: Mapping[str, Path] | None = None) -> Path:
    """Build ``sources`` into ``out_dir`` and return the path of ``manifest.jsonl``.

    A source whose Debian package is missing is skipped with one log line (its SourceMissing
    message) unless it is the only source requested, or every requested source is missing;
    then SourceMissing is raised. ``limit`` caps rows per source (Fashion-MNIST: its total,
    default 3,000). ``roots`` maps a source name to a folder/file to read instead of the
    Debian path. The sidecar ``manifest.jsonl.stats.json`` holds counts per split and
    source, a hash per split, the drop reasons, timings and these options.
    """
    out_dir = Path(out_dir)
    sources = tuple(sources)
    unknown = [s for s in sources if s not in MODULES]
    if unknown or not sources:
        raise ValueError(f"unknown source(s) {unknown or '(none given)'}: choose from {', '.join(MODULES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report: Counter = Counter()
    rows: list[dict] = []
    missing: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in sources:
        t0 = time.monotonic()
        try:
            got = build_source(name, out_dir, size=size, limit=limit, root=(roots or {}).get(name),
                               report=report, log=log)
        except SourceMissing as e:
            if len(sources) == 1:
                raise
            missing[name] = str(e)
            log(f"skipping {name}: {e}")
            continue
        timings[name] = round(time.monotonic() - t0, 1)
        log(f"{name}: {len(got)} rows in {timings[name]:.1f} s")
        rows.extend(got)
    if not rows:
        if missing:
            raise SourceMissing("none of the requested sources is installed:\n" + "\n".join(missing.values()))
        raise SourceMissing(f"the sources {', '.join(sources)} produced no rows")
    rows = assign_splits(rows, val=val, test=test, seed=seed, report=report)
    order = {"train": 0, "val": 1, "test": 2, "heldout": 3}
    rows.sort(key=lambda r: (order.get(r["split"], 9), r["source"], r["image"]))
    rows = [{k: r[k] for k in FIELD_ORDER if k in r} | r for r in rows]  # readable key order
    manifest = out_dir / MANIFEST
    write_jsonl(rows, manifest)
    stats = make_stats(rows, report=report, missing=missing, timings=timings,
                       options={"sources": list(sources), "size": size, "limit": limit,
                                "val": val, "test": test, "seed": seed})
    write_text(stats_path(manifest), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    counts = ", ".join(f"{s} {n}" for s, n in stats["splits"].items())
    log(f"wrote {manifest} ({len(rows)} rows: {counts})")
    return manifest


def make_stats(rows: list[dict], *, report: Counter, missing: dict[str, str],
               timings: dict[str, float], options: dict) -> dict:
    """The sidecar's content: counts per split/source, split hashes, drops, timings, options."""
    per: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        per[r["split"]][r["source"]] += 1
    return {
        "version": STATS_VERSION,
        "rows": len(rows),
        "splits": {s: sum(c.values()) for s, c in sorted(per.items())},
        "sources": dict(sorted(Counter(r["source"] for r in rows).items())),
        "counts": {s: dict(sorted(c.items())) for s, c in sorted(per.items())},
        "sha256": split_hashes(rows),
        "dropped": dict(sorted(report.items())),
        "missing_sources": missing,
        "seconds": timings,
        "options": options,
    }
