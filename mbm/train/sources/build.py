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
from collections.abc import Callable, Mapping
from pathlib import Path

from mbm.atomic import write_text

from .common import BuildJob, SourceMissing, write_jsonl
from .split import SPLIT_HASH_COVERS, assign_splits, split_hashes

# source name (as written in manifests) -> module in this package
MODULES = {
    "openclipart": "openclipart",
    "emoji": "emoji",
    "symbola": "symbola",
    "tuxpaint": "tuxpaint",
    "fashion-mnist": "fashion_mnist",
    "iconify": "iconify",  # npm, not Debian: needs roots={"iconify": path} / --iconify PATH
}
DEFAULT_SOURCES = tuple(MODULES)
MANIFEST = "manifest.jsonl"
STATS_VERSION = 2
FIELD_ORDER = (
    "image",
    "captions",
    "label",
    "source",
    "style",
    "group",
    "split",
    "licence",
    "sha256",
    "source_sha256",
    "origin",
)
DEFAULT_VAL = 1000
DEFAULT_TEST = 1500


def stats_path(manifest: Path) -> Path:
    """``manifest.jsonl`` -> ``manifest.jsonl.stats.json``."""
    return manifest.with_name(manifest.name + ".stats.json")


def build_source(
    name: str,
    out_dir: Path,
    *,
    size: int = 224,
    limit: int | None = None,
    root: Path | None = None,
    report: Counter | None = None,
    log: Callable[[str], object] | None = None,
    **options,
) -> list[dict]:
    """Run one source's builder (rows without split, except sources that carry their own).

    ``root`` overrides where the package's files are looked for (default: the Debian path).
    ``options`` go to the source's ``build`` (iconify: emojilib, set_cap, total_cap, workers,
    info). Every row gets ``style`` (the source name unless the builder set one).
    """
    if name not in MODULES:
        raise ValueError(f"unknown source {name!r}: choose from {', '.join(MODULES)}")
    module = importlib.import_module(f"{__package__}.{MODULES[name]}")
    extra = {"root": Path(root)} if root is not None else {}
    job = BuildJob(Path(out_dir), size=size, limit=limit, report=Counter() if report is None else report, log=log)
    rows = module.build(job, **extra, **options)
    for row in rows:
        row.setdefault("style", STYLES.get(name, name))
    return rows


# the drawing style of each source's rows (iconify rows carry their set prefix)
STYLES = {
    "emoji": "noto",
    "symbola": "symbola",
    "openclipart": "openclipart",
    "tuxpaint": "tuxpaint",
    "fashion-mnist": "fashion-mnist",
}


def build_all(
    out_dir: str | Path,
    sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES,
    *,
    size: int = 224,
    limit: int | None = None,
    val: int = DEFAULT_VAL,
    test: int = DEFAULT_TEST,
    seed: int = 0,
    log: Callable[[str], object] = print,
    roots: Mapping[str, Path] | None = None,
    options: Mapping[str, dict] | None = None,
) -> Path:
    """Build ``sources`` into ``out_dir`` and return the path of ``manifest.jsonl``.

    A source whose Debian package is missing is skipped with one log line (its SourceMissing
    message) unless it is the only source requested, or every requested source is missing;
    then SourceMissing is raised. ``limit`` caps rows per source (Fashion-MNIST: its total,
    default 3,000). ``roots`` maps a source name to a folder/file to read instead of the
    Debian path (``"iconify"``: the npm package, required for that source; ``"emojilib"``:
    the npm emojilib folder, optional keywords for it). ``options`` maps a source name to
    extra keyword arguments of its ``build`` (iconify: ``set_cap``, ``total_cap``,
    ``workers``). The sidecar ``manifest.jsonl.stats.json`` holds counts per split, source
    and style, a hash per split over identities and captions, the drop reasons, renderer
    versions, timings and these options. Iconify also writes ``ATTRIBUTION.md``.
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
    roots = dict(roots or {})
    extra_info: dict[str, dict] = {}
    for name in sources:
        t0 = time.monotonic()
        opts = dict((options or {}).get(name, {}))
        if name == "iconify":
            opts.setdefault("emojilib", roots.get("emojilib"))
            opts["info"] = extra_info.setdefault("iconify", {})
        try:
            got = build_source(
                name, out_dir, size=size, limit=limit, root=roots.get(name), report=report, log=log, **opts
            )
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
    rows.sort(key=lambda r: (order.get(r["split"], 9), r["source"], r.get("style", ""), r["image"]))
    rows = [{k: r[k] for k in FIELD_ORDER if k in r} | r for r in rows]  # readable key order
    manifest = out_dir / MANIFEST
    write_jsonl(rows, manifest)
    if extra_info.get("iconify", {}).get("sets"):  # final counts (after the split's drops)
        from .iconify import write_attribution

        write_attribution(out_dir, rows, extra_info["iconify"]["sets"])
    stats = make_stats(
        rows,
        report=report,
        missing=missing,
        timings=timings,
        options={
            "sources": list(sources),
            "size": size,
            "limit": limit,
            "val": val,
            "test": test,
            "seed": seed,
            "roots": {k: str(v) for k, v in sorted(roots.items())},
            "source_options": {
                k: {o: v for o, v in d.items() if o != "info"} for k, d in sorted((options or {}).items())
            },
        },
        extra=extra_info,
    )
    write_text(stats_path(manifest), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    counts = ", ".join(f"{s} {n}" for s, n in stats["splits"].items())
    log(f"wrote {manifest} ({len(rows)} rows: {counts})")
    return manifest


def make_stats(
    rows: list[dict],
    *,
    report: Counter,
    missing: dict[str, str],
    timings: dict[str, float],
    options: dict,
    extra: dict | None = None,
) -> dict:
    """The sidecar's content: counts per split/source/style, split hashes, drops, renderer
    versions, timings, options (and per-source details such as iconify's sets)."""
    per: dict[str, Counter] = defaultdict(Counter)
    per_style: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        per[r["split"]][r["source"]] += 1
        per_style[r["split"]][r.get("style") or r["source"]] += 1
    licences = Counter(r.get("licence") or "unknown" for r in rows)
    return {
        "version": STATS_VERSION,
        "rows": len(rows),
        "splits": {s: sum(c.values()) for s, c in sorted(per.items())},
        "sources": dict(sorted(Counter(r["source"] for r in rows).items())),
        "styles": dict(sorted(Counter(r.get("style") or r["source"] for r in rows).items())),
        "licences": dict(sorted(licences.items())),
        "counts": {s: dict(sorted(c.items())) for s, c in sorted(per.items())},
        "style_counts": {s: dict(sorted(c.items())) for s, c in sorted(per_style.items())},
        "sha256": split_hashes(rows),
        "sha256_covers": SPLIT_HASH_COVERS,
        "renderers": renderer_versions(),
        "dropped": dict(sorted(report.items())),
        "missing_sources": missing,
        "seconds": timings,
        "options": options,
        **({"details": extra} if extra else {}),
    }


def renderer_versions() -> dict[str, str | None]:
    """Versions of everything that turns source files into pixels (PNG bytes differ with them;
    the split hashes do not)."""
    import subprocess

    import PIL
    from PIL import features

    out: dict[str, str | None] = {"Pillow": PIL.__version__}
    for name in ("freetype2", "raqm", "libpng", "zlib"):
        try:
            out[name] = features.version(name)
        except Exception:  # noqa: BLE001 - an optional feature's version is informative only
            out[name] = None
    try:
        res = subprocess.run(["rsvg-convert", "--version"], capture_output=True, text=True, timeout=10)
        out["rsvg-convert"] = res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["rsvg-convert"] = None
    try:
        import resvg_py

        out["resvg-py"] = getattr(resvg_py, "__version__", None)
        out["resvg"] = getattr(resvg_py, "__resvg_version__", None)
    except ImportError:
        out["resvg-py"] = None
    return out
