"""Cold `mbm search` (a new process) on a 100,000-item collection, and where the time goes.

    python benchmarks/cold_search.py --items 100000 --model ViT-B-32-256

The collection holds synthetic clustered vectors (speed does not depend on their
meaning); the model is the named open_clip architecture with random weights, saved
once as a local checkpoint folder, so loading costs what loading real weights costs.
Target: under 3 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import median, report, run_cli


def checkpoint_folder(arch: str, root: Path) -> Path:
    folder = root / f"mbm-bench-{arch}"
    if (folder / "open_clip_model.safetensors").exists():
        return folder
    import open_clip
    from safetensors.torch import save_file

    from mbm.models.factory import CONFIG_DIR

    open_clip.add_model_config(CONFIG_DIR)
    model = open_clip.create_model(arch, pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": open_clip.get_model_config(arch), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def build_collection(store: Path, spec: str, items: int) -> None:
    from mbm import Engine

    with Engine.open(store, model=spec) as eng:
        enc = eng.encoder()
        catalog = eng.catalog(create=True)
        catalog.set_meta(kind="image", model=enc.spec, fingerprint=enc.fingerprint, dim=enc.dim, dtype="float16")
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(64, enc.dim)).astype(np.float32)
        for start in range(0, items, 10_000):
            n = min(10_000, items - start)
            x = centers[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, enc.dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            rows = [
                {
                    "path": f"/photos/{(start + i) // 1000:03d}/img_{start + i:06d}.jpg",
                    "size": 1_500_000,
                    "mtime_ns": 1,
                    "hash": f"{start + i:032x}",
                    "width": 3000,
                    "height": 2000,
                }
                for i in range(n)
            ]
            catalog.add_items(rows, [v.astype(np.float16).tobytes() for v in x])
        eng.prepare_search()  # what `mbm index` leaves behind: the vector index (and query encoder files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--model", default="ViT-B-32-256")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    folder = checkpoint_folder(args.model, args.root)
    store = args.root / f"mbm-bench-store-{args.model}-{args.items}"
    if not (store / "collections" / "default" / "catalog.sqlite").exists():
        build_collection(store, str(folder), args.items)
    queries = [
        "red car",
        "a dog on the beach",
        "sunset over mountains",
        "two people hiking",
        "a bowl of soup",
        "city at night",
        "a cat sleeping",
    ]
    walls, parts = [], []
    for i in range(args.runs):
        t0 = time.perf_counter()
        proc = run_cli(["search", queries[i % len(queries)], "--store", str(store), "--json", "-k", "10"])
        walls.append(time.perf_counter() - t0)
        assert proc.returncode == 0, proc.stderr
        parts.append(json.loads(proc.stdout)["seconds"])
    t0 = time.perf_counter()
    run_cli(["--help"])
    startup = time.perf_counter() - t0
    keys = sorted({k for p in parts for k in p})
    breakdown = {k: round(median([p.get(k, 0.0) for p in parts]), 3) for k in keys}
    result = {
        "items": args.items,
        "model": args.model,
        "wall_seconds_median": round(median(walls), 3),
        "wall_all": [round(w, 3) for w in walls],
        "cli_startup_seconds": round(startup, 3),
        "breakdown_seconds_median": breakdown,
        "runs": args.runs,
    }
    report(
        "cold_search",
        result,
        [
            ("collection", f"{args.items} items, {args.model} (random weights in a checkpoint folder)"),
            ("cold `mbm search`", f"{median(walls):.2f} s wall (median of {args.runs}; target < 3 s)"),
            ("process start + CLI imports", f"{startup:.2f} s (`mbm --help`)"),
            ("inside the process", ", ".join(f"{k} {v:.3f}s" for k, v in breakdown.items())),
        ],
    )


if __name__ == "__main__":
    main()
