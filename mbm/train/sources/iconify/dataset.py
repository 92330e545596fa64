"""``build``: the chosen Iconify icons rendered into manifest rows, and ``ATTRIBUTION.md`` for the CC-BY sets."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from mbm.atomic import write_text

from ..common import BuildJob, SourceMissing
from .choose import select_icons
from .package import EMOJILIB_HOW, HOW_TO_GET, PACKAGE, IconifyPackage, load_emojilib
from .policy import EMOJI_SETS, PICTOGRAM_SETS, needs_attribution
from .render import render_all

ATTRIBUTION = "ATTRIBUTION.md"

DEFAULT_SET_CAP = 2500  # icons per pictogram set (emoji sets: all)

DEFAULT_TOTAL_CAP = 38000  # iconify rows in all, emoji first

DEFAULT_WORKERS = 2

TIMEOUT_S = 20.0  # per icon; a renderer that takes longer is killed


def write_attribution(out_dir: Path, rows: list[dict], sets_info: dict) -> Path:
    """``ATTRIBUTION.md``: every CC-BY set used (name, author, licence, URL, count)."""
    counts = Counter(r["style"] for r in rows if r.get("source") == "iconify")
    lines = [
        "# Attribution",
        "",
        "Pictures under `images/iconify/` come from Iconify's icon sets "
        f"(npm `{PACKAGE}`). The sets below are licensed under Creative Commons Attribution; "
        "a model or data set derived from them must credit them as follows.",
        "",
        "| set | prefix | author | licence | rows |",
        "|---|---|---|---|---|",
    ]
    used = [p for p in sorted(counts) if needs_attribution(sets_info.get(p, {}).get("licence") or "")]
    for p in used:
        info = sets_info[p]
        author = info.get("author") or {}
        who = author.get("name", "unknown")
        if author.get("url"):
            who = f"[{who}]({author['url']})"
        lic = info["licence"]
        if info.get("licence_url"):
            lic = f"[{lic}]({info['licence_url']})"
        note = f" ({info['override']})" if info.get("override") else ""
        lines.append(f"| {info.get('name', p)} | `{p}` | {who} | {lic}{note} | {counts[p]} |")
    others = sorted(p for p in counts if p not in used)
    if others:
        lines += [
            "",
            "Sets used under licences without an attribution clause for this use "
            "(their licence files still apply): "
            + ", ".join(f"`{p}` ({sets_info.get(p, {}).get('licence')}, {counts[p]})" for p in others)
            + ".",
        ]
    path = out_dir / ATTRIBUTION
    write_text(path, "\n".join(lines) + "\n")
    return path


def build(
    job: BuildJob,
    *,
    root: Path | None = None,
    emojilib: Path | None = None,
    set_cap: int | None = DEFAULT_SET_CAP,
    total_cap: int | None = DEFAULT_TOTAL_CAP,
    workers: int = DEFAULT_WORKERS,
    timeout: float = TIMEOUT_S,
    emoji_sets: Iterable[str] = EMOJI_SETS,
    pictogram_sets: Iterable[str] = PICTOGRAM_SETS,
    info: dict | None = None,
) -> list[dict]:
    """Render the chosen Iconify sets into ``<out>/images/iconify/<prefix>/`` and return rows.

    ``root``: the npm package (.tgz or unpacked folder); SourceMissing when absent.
    ``job.limit`` caps rows in all (overrides ``total_cap`` when smaller) and spreads them over
    the sets (a quick run sees every style). ``info`` (a dict)
    receives per-set metadata, package version and renderer version for the stats sidecar.
    Also writes ``<out>/ATTRIBUTION.md``.
    """
    out_dir, size, limit, report, log = job.out_dir, job.size, job.limit, job.report, job.say
    if root is None:
        raise SourceMissing(f"the Iconify icon sets are not installed (npm, not Debian) — {HOW_TO_GET}")
    root = Path(root)
    if not root.exists():
        raise SourceMissing(f"Iconify package not found at {root} — {HOW_TO_GET}")
    try:
        import resvg_py
    except ImportError:
        raise SourceMissing(
            "resvg-py (renders the Iconify SVGs) is not installed — run: pip install 'mbm[train]'"
        ) from None
    pkg = IconifyPackage(root)
    lib = load_emojilib(emojilib)
    if emojilib is None:
        log(f"iconify: no emojilib given: emoji get no keyword captions ({EMOJILIB_HOW})")
    cap = total_cap if limit is None else (limit if total_cap is None else min(limit, total_cap))
    emoji_sets, pictogram_sets = tuple(emoji_sets), tuple(pictogram_sets)
    emoji_cap = None
    if limit is not None:  # a quick run: a few icons from every set rather than one set's
        share = max(1, -(-limit // max(1, len(emoji_sets) + len(pictogram_sets))))
        emoji_cap, set_cap = share, share if set_cap is None else min(set_cap, share)
    sets_info: dict = {}
    t0 = time.monotonic()
    icons = select_icons(
        pkg,
        size=size,
        emojilib=lib,
        set_cap=set_cap,
        total_cap=cap,
        emoji_cap=emoji_cap,
        emoji_sets=emoji_sets,
        pictogram_sets=pictogram_sets,
        report=report,
        sets_info=sets_info,
        log=log,
    )
    if cap is not None and len(icons) > cap:
        report["iconify: emoji over the overall cap (not an error)"] += len(icons) - cap
        icons = icons[:cap]
    log(f"iconify: {len(icons)} icons chosen in {time.monotonic() - t0:.0f} s")
    rendered = render_all(icons, out_dir, size, workers=workers, timeout=timeout, report=report, log=log)
    rows = []
    for icon, png, sha in sorted(rendered, key=lambda x: (x[0].prefix, x[0].name)):
        row = {
            "image": png.relative_to(out_dir).as_posix(),
            "captions": icon.captions,
            "label": icon.label,
            "source": "iconify",
            "style": icon.prefix,
            "group": icon.group,
            "licence": icon.licence,
            "sha256": sha,
            "source_sha256": icon.key,
            "origin": f"iconify:{icon.prefix}:{icon.name}",
        }
        if icon.colour:
            row["colour"] = icon.colour
        rows.append(row)
    per = Counter(r["style"] for r in rows)
    log("iconify: rows per set: " + ", ".join(f"{p} {n}" for p, n in sorted(per.items())))
    write_attribution(out_dir, rows, sets_info)
    if info is not None:
        info.update(
            {
                "package": PACKAGE,
                "package_version": pkg.version,
                "resvg_py": getattr(resvg_py, "__version__", None),
                "resvg": getattr(resvg_py, "__resvg_version__", None),
                "sets": {p: d | {"rows": per.get(p, 0)} for p, d in sorted(sets_info.items())},
            }
        )
    return rows
