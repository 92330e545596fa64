"""``python -m mbm.train.sources --out DIR [--sources a,b] [--size N] [--limit N]``."""

from __future__ import annotations

import argparse
import sys
import time

from .build import DEFAULT_SOURCES, MODULES, build_all
from .common import SourceMissing


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the manifest, print where it is; exit 1 with the apt hint if missing."""
    ap = argparse.ArgumentParser(prog="python -m mbm.train.sources",
                                 description="Build the offline image-text manifest from Debian packages.")
    ap.add_argument("--out", default="cache/mbm-data", help="output folder (default: cache/mbm-data)")
    ap.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                    help=f"comma-separated, from: {', '.join(MODULES)} (default: all)")
    ap.add_argument("--size", type=int, default=224, help="side of the square PNGs (default 224)")
    ap.add_argument("--limit", type=int, default=None, help="at most N rows per source (for quick runs)")
    ap.add_argument("--val", type=int, default=500, help="rows in val (default 500)")
    ap.add_argument("--test", type=int, default=700, help="rows in test (default 700)")
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
        manifest = build_all(args.out, sources, size=args.size, limit=args.limit, val=args.val,
                             test=args.test, seed=args.seed, log=lambda m: print(m, flush=True))
    except SourceMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - t0:.0f} s: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
