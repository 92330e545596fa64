"""A cold `mbm search` with the bundled model, re-ranked (its default) and not (`--no-rerank`).

    python benchmarks/cold_rerank.py --runs 7

Indexes data/demo (43 pictures) with mbm-offline into a throwaway store, then alternates new
`mbm search QUERY --json` processes with and without re-ranking; reports the wall time of each
(median), the time inside the process, and whether the process imported torch (it must not: the
re-ranking runs on the fusion head exported to ONNX beside the text tower).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import median, report, run_cli

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
QUERIES = ["a boat", "red car", "kitty", "something to read", "a cup of coffee", "pink flowers", "plane"]
IMPORTS = (
    "import sys, json; from mbm.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print(json.dumps(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules)), file=sys.stderr)"
)


def imported_modules(store: Path, extra: list[str]) -> list[str]:
    """The heavy modules a cold search process imported (the last stderr line of a wrapped `mbm search`)."""
    args = ["search", "a boat", "--store", str(store), "--json", *extra]
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True, check=False)
    return json.loads(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    variants = {"re-ranked (default)": [], "--no-rerank": ["--no-rerank"]}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    inside: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        proc = run_cli(["index", str(DEMO), "--store", str(store), "-m", "mbm-offline", "--quiet"])
        assert proc.returncode == 0, proc.stderr
        for i in range(args.runs):
            for name, extra in variants.items():
                t0 = time.perf_counter()
                proc = run_cli(["search", QUERIES[i % len(QUERIES)], "--store", str(store), "--json", *extra])
                walls[name].append(time.perf_counter() - t0)
                assert proc.returncode == 0, proc.stderr
                out = json.loads(proc.stdout)
                inside[name].append(out["seconds"])
                if name == "re-ranked (default)":
                    assert all(h["match"] is not None for h in out["hits"]), "the default search was not re-ranked"
        imports = {name: imported_modules(store, extra) for name, extra in variants.items()}
    result = {
        "model": "mbm-offline",
        "collection": f"data/demo ({len(list(DEMO.iterdir()))} files)",
        "runs": args.runs,
        "wall_seconds_median": {name: round(median(w), 3) for name, w in walls.items()},
        "wall_all": {name: [round(x, 3) for x in w] for name, w in walls.items()},
        "inside_seconds_median": {
            name: {k: round(median([p.get(k, 0.0) for p in parts]), 4) for k in sorted({k for p in parts for k in p})}
            for name, parts in inside.items()
        },
        "heavy_imports": imports,
    }
    rows = [("collection", f"{result['collection']}, mbm-offline, {args.runs} cold processes each")]
    for name in variants:
        parts = result["inside_seconds_median"][name]
        rows.append((f"`mbm search` {name}", f"{median(walls[name]):.2f} s wall (median); inside: {parts}"))
        rows.append((f"  imported torch/open_clip/transformers ({name})", str(imports[name]) or "none"))
    report("cold_rerank", result, rows)


if __name__ == "__main__":
    main()
