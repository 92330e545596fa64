"""Would a per-picture class-bridge weight chosen from the pixels help the bundled model on photos?

    python benchmarks/photo_gate.py --manifest cache/mbm-data/manifest.jsonl --eval-dir cache/mbm-eval

mbm-offline's image embedding is ``normalize(proj(f)) + w * bridge(f)`` with ``w = 1``; on photos the
untrained bridge alone is better (``bridge_gate.py``). Gating ``w`` by the projection's norm moved some
drawings toward the bridge, where they became hubs. This gates by the picture itself: drawings (icons,
emoji, clip art, stamps) are rendered in flat colour, so many neighbouring pixels of the 224-px crop the
model sees are exactly equal; photos have sensor noise and texture, so almost none are. ``flat`` is the
fraction of horizontally and vertically adjacent pixel pairs whose channels differ by at most 1/255.
The sweep sets ``w = W`` where ``flat < threshold`` (else 1) and reports text->image recall on the test
split (Fashion-MNIST excluded), Tux Paint, validation, the photo set and the icon themes, with the share
of each set's pictures gated. Trunk features are cached by ``bridge_gate.py``'s code in ``--cache``;
writes ``results/runs/v2-photo-gate-sweep.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bridge_gate import SETS, bundled_fp32, features, parse_args, recall, rows_of, sweep_rows

from mbm.train.data import load_eval_image

RESULTS = Path(__file__).parent / "results" / "runs" / "v2-photo-gate-sweep.json"


def flatness(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Share of adjacent pixel pairs (both directions) equal within 1/255 in every channel, per picture."""
    x = pixels * std[None, :, None, None] + mean[None, :, None, None]  # back to [0, 1]
    tol = 1.0 / 255 + 1e-6
    dx = ((x[..., :, 1:] - x[..., :, :-1]).abs().amax(dim=1) <= tol).float().mean(dim=(1, 2))
    dy = ((x[..., 1:, :] - x[..., :-1, :]).abs().amax(dim=1) <= tol).float().mean(dim=(1, 2))
    return ((dx + dy) / 2).numpy()


def picture_flatness(pre, rows: list[dict], path: Path, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    if path.exists():
        return np.load(path)
    out = []
    for s in range(0, len(rows), 64):
        batch = torch.stack([pre(load_eval_image(r["image"], 224)) for r in rows[s : s + 64]])
        out.append(flatness(batch, mean, std))
    flat = np.concatenate(out)
    np.save(path, flat)
    return flat


def main() -> None:
    args = parse_args(__doc__)
    parts, model = bundled_fp32()
    head = model.visual.head
    norm_cfg = parts.preprocess.transforms[-1]  # torchvision Normalize
    mean, std = torch.tensor(norm_cfg.mean), torch.tensor(norm_cfg.std)
    data = {}
    for name in SETS:
        rows = rows_of(name, args.manifest, args.eval_dir)
        f, t, t2i = features(model, parts.preprocess, parts.tokenizer, rows, args.cache / f"{name}.npz")
        flat = picture_flatness(parts.preprocess, rows, args.cache / f"{name}-flat.npy", mean, std)
        with torch.no_grad():
            ft = torch.from_numpy(f)
            pn, bridge = F.normalize(head.proj(ft), dim=-1).numpy(), head.bridge(ft).numpy()
        styles = np.array([str(r.get("style", "")) for r in rows])
        data[name] = (pn, bridge, flat, t, t2i, styles)

    def run(threshold: float, w: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (pn, bridge, flat, t, t2i, styles) in data.items():
            weight = np.where(flat < threshold, w, 1.0)
            emb = pn + weight[:, None] * bridge
            out.update(recall(name, emb / np.linalg.norm(emb, axis=1, keepdims=True), t, t2i, styles))
            out[f"{name}_gated%"] = 100 * float(np.mean(flat < threshold))
        return out

    variants = {"trained w=1": (0.0, 1.0), "bridge only": (2.0, 1000.0)}
    for threshold in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8):
        for w in (3.0, 10.0, 100.0):
            variants[f"flat<{threshold} W={w:g}"] = (threshold, w)
    rows_out = sweep_rows(variants, lambda tw: run(*tw), 22)
    doc = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "flatness_percentiles_p1_p10_p50_p90_p99": {
            k: [round(float(x), 3) for x in np.percentile(v[2], [1, 10, 50, 90, 99])] for k, v in data.items()
        },
        "rows": rows_out,
    }
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["flatness_percentiles_p1_p10_p50_p90_p99"]))


if __name__ == "__main__":
    main()
