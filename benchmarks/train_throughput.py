"""Training throughput (pairs/s) of the bundled model's recipe, on the CPU and on a CUDA GPU when present.

    python benchmarks/train_throughput.py --manifest cache/mbm-data/manifest.jsonl --steps 60

Runs `mbm.train.train` for ``--steps`` steps (contrastive + fusion ITM + classifier, the
bundled recipe's losses and batch size) on each device and reports the median pairs/s
of the logged intervals after the first (warm-up). Without a manifest it generates a
small synthetic one (coloured shapes), which measures the same compute per step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _util import median, report
from PIL import Image, ImageDraw

COLOURS = [(220, 30, 30), (30, 170, 60), (40, 60, 220), (240, 210, 30), (20, 20, 20), (250, 140, 0)]
SHAPES = ["circle", "square", "triangle", "bar"]


def synthetic_manifest(folder: Path, n: int = 512) -> Path:
    """``n`` coloured shapes with captions: stands in when the offline data has not been built."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        img = Image.new("RGB", (128, 128), "white")
        box = (10 + i % 30, 20, 90 + i % 30, 110)
        draw = ImageDraw.Draw(img)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
        else:
            draw.rectangle(box if shape == "square" else (box[0], 50, box[2], 70), fill=colour)
        img.save(folder / f"img/{i}.png")
        rows.append(
            {
                "image": f"img/{i}.png",
                "captions": [f"a {shape} number {i}"],
                "label": shape,
                "source": "synthetic",
                "group": f"g{i}",
                "split": "train" if i >= 64 else "val",
            }
        )
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def measure(manifest: Path, device: str, steps: int, model: str, batch_size: int) -> dict:
    from mbm.train.loop import TrainConfig, train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            manifest=str(manifest),
            out_dir=out,
            model=model,
            batch_size=batch_size,
            epochs=100,
            max_steps=steps,
            val_every=0,
            log_every=10,
            device=device,
        )
        result = train(cfg)
        lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["pairs_per_s"] for r in lines if r["event"] == "step"][1:]  # the first interval includes warm-up
    return {
        "device": device,
        "steps": result["step"],
        "pairs_per_s_median": round(median(rates), 1),
        "pairs_per_s_all": [round(r, 1) for r in rates],
        "seconds": round(result["seconds"], 1),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", type=Path, default=Path("cache/mbm-data/manifest.jsonl"))
    ap.add_argument("--model", default="mbm-small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest if args.manifest.is_file() else synthetic_manifest(Path(tmp))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        runs = [measure(manifest, d, args.steps, args.model, args.batch_size) for d in devices]
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "manifest": str(manifest) if manifest == args.manifest else "synthetic",
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }
    report(
        "train_throughput",
        result,
        [
            (
                f"{r['device']}{' (' + r['gpu'] + ')' if r['gpu'] else ''}",
                f"{r['pairs_per_s_median']} pairs/s "
                f"(median of {len(r['pairs_per_s_all'])} intervals of 10 steps, batch {args.batch_size}, {args.model})",
            )
            for r in runs
        ]
        + [("cuda", "no CUDA GPU on this machine: not measured")] * (not torch.cuda.is_available()),
    )


if __name__ == "__main__":
    main()
