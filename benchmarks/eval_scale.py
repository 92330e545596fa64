"""Evaluation at scale: Recall@K and re-rank candidates on a 100k-image, 100k-caption split.

    python benchmarks/eval_scale.py                 # 100,000 x 100,000, dimension 256
    python benchmarks/eval_scale.py --items 20000   # quicker

The metric code of `mbm eval` (`mbm.train.evaluate.recall_at_k` and `top_candidates`) on
synthetic L2-normalized embeddings: each caption is its image's vector plus noise, so the
figures are non-trivial. Reports wall time and how far each call raised the process's
peak resident memory above what it held before (Linux VmHWM, reset between calls) beside
the size the dense similarity matrix would have: the point is that it never exists.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _util import report

from mbm.train.evaluate import recall_at_k, top_candidates


def synthetic_split(items: int, dim: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((items, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    t2i = rng.permutation(items)  # one caption per image, in another order
    txt = img[t2i] + noise * rng.standard_normal((items, dim), dtype=np.float32) / np.sqrt(dim)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt, t2i


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def measured(fn, *args, **kwargs):
    """(result, seconds, peak resident bytes above the resident size at the call)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    before = _vm_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    return out, seconds, (_vm_kb("VmHWM") - before) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000, help="images, and as many captions")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--noise", type=float, default=4.0, help="caption noise (relative to the unit image vector)")
    ap.add_argument("--top", type=int, default=10, help="re-rank candidates per caption")
    args = ap.parse_args()
    img, txt, t2i = synthetic_split(args.items, args.dim, args.noise)
    inputs_mb = (img.nbytes + txt.nbytes + t2i.nbytes) / 1e6
    recall, r_s, r_peak = measured(recall_at_k, img, txt, t2i)
    cands, c_s, c_peak = measured(top_candidates, img, txt, args.top)
    hit = float(np.mean(cands == t2i[:, None]) * args.top)  # share of captions with their image among the candidates
    dense_gb = args.items * args.items * 4 / 1e9
    figures = {k: round(v, 4) for k, v in recall.items() if "R@" in k}
    result = {
        "items": args.items,
        "dim": args.dim,
        "noise": args.noise,
        "inputs_mb": round(inputs_mb, 1),
        "dense_matrix_gb": round(dense_gb, 1),
        "recall_at_k": {"seconds": round(r_s, 1), "peak_rss_growth_mb": round(r_peak / 1e6, 1), "figures": figures},
        "top_candidates": {
            "top": args.top,
            "seconds": round(c_s, 1),
            "peak_rss_growth_mb": round(c_peak / 1e6, 1),
            "caption_image_in_candidates": round(hit, 4),
        },
    }
    report(
        "eval_scale",
        result,
        [
            ("split", f"{args.items:,} images x {args.items:,} captions, dim {args.dim} (inputs {inputs_mb:.0f} MB)"),
            ("dense similarity matrix", f"{dense_gb:.1f} GB (never built)"),
            (
                "recall_at_k (both directions)",
                f"{r_s:.1f} s, peak memory +{r_peak / 1e6:.0f} MB; "
                f"t2i R@1/5/10 {figures['t2i_R@1']:.3f}/{figures['t2i_R@5']:.3f}/{figures['t2i_R@10']:.3f}",
            ),
            (
                f"top_candidates (top {args.top})",
                f"{c_s:.1f} s, peak memory +{c_peak / 1e6:.0f} MB; "
                f"caption's image among them for {hit:.3f} (= t2i R@{args.top})",
            ),
        ],
    )


if __name__ == "__main__":
    main()
