"""``python -m mbm.train.sources --out DIR [--sources a,b] [--size N] [--limit N] [--iconify PATH]``."""

from __future__ import annotations

import argparse
import sys
import time

from . import iconify
from .build import DEFAULT_SOURCES, DEFAULT_TEST, DEFAULT_VAL, MODULES, build_all
from .common import SourceMissing


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the manifest, print where it is; exit 1 with the apt hint if missing."""
    ap = argparse.ArgumentParser(
        prog="python -m mbm.train.sources", description="Build the offline image-text manifest from Debian packages."
    )
    ap.add_argument("--out", default="cache/mbm-data", help="output folder (default: cache/mbm-data)")
    ap.add_argument(
        "--sources",
        default=",".join(DEFAULT_SOURCES),
        help=f"comma-separated, from: {', '.join(MODULES)} (default: all)",
    )
    ap.add_argument("--size", type=int, default=224, help="side of the square PNGs (default 224)")
    ap.add_argument("--limit", type=int, default=None, help="at most N rows per source (for quick runs)")
    ap.add_argument("--val", type=int, default=DEFAULT_VAL, help=f"rows in val (default {DEFAULT_VAL})")
    ap.add_argument("--test", type=int, default=DEFAULT_TEST, help=f"rows in test (default {DEFAULT_TEST})")
    ap.add_argument(
        "--iconify",
        metavar="PATH",
        default=None,
        help=f"the npm package {iconify.PACKAGE} (.tgz or unpacked folder; "
        f"get it with: npm pack {iconify.PACKAGE}); without it the iconify source is skipped",
    )
    ap.add_argument(
        "--emojilib",
        metavar="PATH",
        default=None,
        help="npm emojilib (unpacked package folder): keyword captions for iconify's emoji",
    )
    ap.add_argument(
        "--iconify-set-cap",
        type=int,
        default=iconify.DEFAULT_SET_CAP,
        help=f"at most N icons per pictogram set (default {iconify.DEFAULT_SET_CAP}; 0 = no cap)",
    )
    ap.add_argument(
        "--iconify-cap",
        type=int,
        default=iconify.DEFAULT_TOTAL_CAP,
        help=f"at most N iconify rows in all (default {iconify.DEFAULT_TOTAL_CAP}; 0 = no cap)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=iconify.DEFAULT_WORKERS,
        help=f"render processes for iconify (default {iconify.DEFAULT_WORKERS})",
    )
    ap.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    args = ap.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in MODULES]
    if unknown or not sources:
        ap.error(f"unknown source(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(MODULES)}")
    if args.size < 8:
        ap.error("--size must be at least 8")
    t0 = time.monotonic()
    try:
        roots = {k: v for k, v in (("iconify", args.iconify), ("emojilib", args.emojilib)) if v}
        options = {
            "iconify": {
                "set_cap": args.iconify_set_cap or None,
                "total_cap": args.iconify_cap or None,
                "workers": max(1, args.workers),
            }
        }
        manifest = build_all(
            args.out,
            sources,
            size=args.size,
            limit=args.limit,
            val=args.val,
            test=args.test,
            seed=args.seed,
            log=lambda m: print(m, flush=True),
            roots=roots,
            options=options,
        )
    except SourceMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - t0:.0f} s: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
