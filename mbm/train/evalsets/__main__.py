"""python -m mbm.train.evalsets --out cache/mbm-eval: build the photo and icon-theme evaluation sets."""

from __future__ import annotations

import argparse
import sys
import time

from mbm.train.evalsets import DEFAULT_DIR, ICON_SIZE, MAX_PHOTO_SIDE, build_icon_themes, build_photos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mbm.train.evalsets", description=__doc__)
    ap.add_argument(
        "--out", "-o", default=str(DEFAULT_DIR), help="folder for photos.jsonl, icon-themes.jsonl and the pictures"
    )
    ap.add_argument("--only", choices=("photos", "icons"), help="build one of the two sets")
    ap.add_argument("--max-side", type=int, default=MAX_PHOTO_SIDE, help="longest side of the photo copies in pixels")
    ap.add_argument("--icon-size", type=int, default=ICON_SIZE, help="side of the rendered icons in pixels")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    started = time.perf_counter()
    if args.only in (None, "photos"):
        print(build_photos(args.out, max_side=args.max_side, log=log))
    if args.only in (None, "icons"):
        print(build_icon_themes(args.out, size=args.icon_size, log=log))
    log(
        f"done in {time.perf_counter() - started:.0f} s — evaluate with: mbm eval MODEL MANIFEST --photos "
        f"{args.out}/photos.jsonl --style-shift {args.out}/icon-themes.jsonl"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
