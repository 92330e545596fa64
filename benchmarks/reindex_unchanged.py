"""Re-index of an unchanged folder: the whole `mbm index` process, and the library call alone.

    python benchmarks/reindex_unchanged.py --files 10000

Target: under 2 s for 10,000 files.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _util import median, report, run_cli

from mbm import Engine


def make_files(folder: Path, n: int) -> None:
    from PIL import Image

    for i in range(n):
        p = folder / f"d{i // 500:03d}" / f"f{i:06d}.png"
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mbm-bench-10k")
    args = ap.parse_args()
    make_files(args.corpus, args.files)
    store = Path(tempfile.mkdtemp(prefix="mbm-bench-store-"))
    t0 = time.perf_counter()
    first = run_cli(["index", str(args.corpus), "--store", str(store), "-m", "mbm-tiny", "--quiet", "--json"])
    assert first.returncode == 0, first.stderr
    initial = time.perf_counter() - t0

    cli, lib = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        proc = run_cli(["index", str(args.corpus), "--store", str(store), "--quiet", "--json"])
        cli.append(time.perf_counter() - t0)
        assert proc.returncode == 0 and f'"unchanged": {args.files}' in proc.stdout, proc.stdout + proc.stderr
        with Engine.open(store) as eng:
            t0 = time.perf_counter()
            rep = eng.index([args.corpus])
            lib.append(time.perf_counter() - t0)
        assert rep.unchanged == args.files and rep.model is None  # the model was never loaded
    result = {
        "files": args.files,
        "first_index_seconds": round(initial, 2),
        "cli_process_seconds_median": round(median(cli), 3),
        "library_call_seconds_median": round(median(lib), 3),
        "runs": args.runs,
        "cli_all": [round(x, 3) for x in cli],
    }
    report(
        "reindex_unchanged",
        result,
        [
            ("files", str(args.files)),
            ("first index (mbm-tiny)", f"{initial:.1f} s"),
            ("unchanged re-run, whole CLI process", f"{median(cli):.2f} s (median of {args.runs}; target < 2 s)"),
            ("unchanged re-run, library call", f"{median(lib):.2f} s"),
        ],
    )


if __name__ == "__main__":
    main()
