"""Model-only forward throughput vs end-to-end `mbm index` throughput on large JPEGs.

    python benchmarks/index_throughput.py --images 200 --model ViT-B-32-256:random

Target: end-to-end >= 0.8x model-only (decoding overlapped with inference).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _util import make_photo_folder, median, model_only, report

from mbm import Engine, load_model


def end_to_end(encoder, folder: Path, batch: int, workers: int | None, store: Path) -> tuple[float, dict]:
    shutil.rmtree(store, ignore_errors=True)
    with Engine.open(store, model=encoder.spec, encoder=encoder) as eng:
        t0 = time.perf_counter()
        rep = eng.index([folder], batch_size=batch, workers=workers)
        wall = time.perf_counter() - t0
    assert rep.indexed == len(list(folder.glob("*.jpg"))), rep.as_dict()
    return rep.indexed / wall, rep.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--model", default="ViT-B-32-256:random")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mbm-bench-photos")
    args = ap.parse_args()

    make_photo_folder(args.corpus, args.images)
    encoder = load_model(args.model, precision=args.precision)
    store = Path(tempfile.mkdtemp(prefix="mbm-bench-store-"))
    model_rates, e2e_rates, stages = [], [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine state
        model_rates.append(model_only(encoder, args.batch, max(3, args.images // args.batch)))
        rate, secs = end_to_end(encoder, args.corpus, args.batch, args.workers, store)
        e2e_rates.append(rate)
        stages.append(secs)
    shutil.rmtree(store, ignore_errors=True)
    m, e = median(model_rates), median(e2e_rates)
    result = {
        "model": args.model,
        "precision": encoder.precision,
        "device": encoder.device,
        "batch": args.batch,
        "images": args.images,
        "image_size": "3000x2000 JPEG q90",
        "model_only_images_per_s": round(m, 2),
        "end_to_end_images_per_s": round(e, 2),
        "ratio": round(e / m, 3),
        "runs": args.runs,
        "stage_seconds_last_run": {k: round(v, 2) for k, v in stages[-1].items()},
    }
    report(
        "index_throughput",
        result,
        [
            ("model", f"{args.model} ({encoder.precision}, {encoder.device}, batch {args.batch})"),
            ("model-only", f"{m:.1f} images/s"),
            ("end-to-end mbm index", f"{e:.1f} images/s"),
            ("ratio", f"{e / m:.2f} (target >= 0.80)"),
            ("stages (last run)", ", ".join(f"{k} {v:.1f}s" for k, v in stages[-1].items())),
        ],
    )


if __name__ == "__main__":
    main()
