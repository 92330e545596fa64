"""Would a per-picture class-bridge weight help the bundled model on photos? (inference only)

    python benchmarks/bridge_gate.py --manifest cache/mbm-data/manifest.jsonl --eval-dir cache/mbm-eval

mbm-offline's image embedding is ``normalize(proj(f)) + w * bridge(f)`` with ``w = 1`` (see
``mbm.models.image_towers.ClassBridgeHead``). The projection was trained on drawings only; on photos the
untrained bridge alone is better (photo R@5 69 vs 59 %). The raw norm ``n`` of ``proj(f)`` grows as a
picture moves away from the training drawings (photos about twice the test drawings'), so this sweeps a
gate ``w(n) = 1 + (W - 1) * sigmoid((ln n - ln tau) / s)`` and reports text->image recall on the test
split (Fashion-MNIST excluded), Tux Paint, validation, the photo set and the icon themes. Trunk features
are computed once (fp32) and cached in ``--cache``; writes ``results/runs/v2-norm-gate-sweep.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbm.models.factory import load_model
from mbm.train.data import load_eval_image, load_rows
from mbm.train.recall import recall_at_k

RESULTS = Path(__file__).parent / "results" / "runs" / "v2-norm-gate-sweep.json"
SETS = ("test", "heldout", "val", "photos", "themes")


def rows_of(name: str, manifest: Path, eval_dir: Path) -> list[dict]:
    if name == "photos":
        return [r for r in load_rows(eval_dir / "photos.jsonl") if r.get("split") == "photos"]
    if name == "themes":
        return [r for r in load_rows(eval_dir / "icon-themes.jsonl") if r.get("split") == "style-shift"]
    return [r for r in load_rows(manifest, name) if r.get("source") != "fashion-mnist"]


def features(model, pre, tok, rows: list[dict], path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled trunk features of the pictures, caption embeddings, caption -> picture (cached in ``path``)."""
    if path.exists():
        d = np.load(path)
        return d["f"], d["t"], d["t2i"]
    with torch.no_grad():
        f = torch.cat(
            [
                model.visual.trunk(torch.stack([pre(load_eval_image(r["image"], 224)) for r in rows[s : s + 64]]))
                for s in range(0, len(rows), 64)
            ]
        ).numpy()
        caps = [c for r in rows for c in r["captions"]]
        t = torch.cat(
            [F.normalize(model.encode_text(tok(caps[s : s + 256])).float(), dim=-1) for s in range(0, len(caps), 256)]
        ).numpy()
    t2i = np.array([i for i, r in enumerate(rows) for _ in r["captions"]])
    np.savez(path, f=f, t=t, t2i=t2i)
    return f, t, t2i


def recall(name: str, emb: np.ndarray, t: np.ndarray, t2i: np.ndarray, styles: np.ndarray) -> dict[str, float]:
    if name == "themes":  # within each theme, then the mean
        per = []
        for style in np.unique(styles):
            idx = np.where(styles == style)[0]
            keep = np.isin(t2i, idx)
            per.append(recall_at_k(emb[idx], t[keep], np.searchsorted(idx, t2i[keep]))["t2i_R@10"])
        return {"themes_R10": 100 * float(np.mean(per))}
    r = recall_at_k(emb, t, t2i)
    if name == "photos":
        return {"photo_R1": 100 * r["t2i_R@1"], "photo_R5": 100 * r["t2i_R@5"]}
    out = {f"{name}_R10": 100 * r["t2i_R@10"]}
    if name == "test":
        out["test_R1"] = 100 * r["t2i_R@1"]
    return out


def parse_args(doc: str) -> argparse.Namespace:
    """The data and cache options of the bridge-weight sweeps (this script and ``photo_gate.py``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=Path("cache/mbm-data/manifest.jsonl"))
    ap.add_argument("--eval-dir", type=Path, default=Path("cache/mbm-eval"))
    ap.add_argument("--cache", type=Path, default=Path("cache/bridge-gate"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    return args


def bundled_fp32() -> tuple[Any, Any]:
    """The bundled model's parts and its open_clip model in fp32, for evaluation."""
    parts = load_model("mbm-offline", precision="fp32").parts()
    return parts, parts.model.float().eval()


def sweep_rows(variants: dict, run, width: int) -> list[dict]:  # type: ignore[type-arg,no-untyped-def]
    """``run(variant)`` for each named variant, rounded, printed as a table (``width``: the name column)."""
    rows = [{"variant": k, **{m: round(v, 1) for m, v in run(fn).items()}} for k, fn in variants.items()]
    keys = [k for k in rows[0] if k != "variant"]
    print(f"{'variant':{width}s}", " ".join(f"{k[:11]:>11s}" for k in keys))
    for row in rows:
        print(f"{row['variant']:{width}s}", " ".join(f"{row[k]:11.1f}" for k in keys))
    return rows


def main() -> None:
    args = parse_args(__doc__)
    parts, model = bundled_fp32()
    head = model.visual.head
    data = {}
    for name in SETS:
        rows = rows_of(name, args.manifest, args.eval_dir)
        f, t, t2i = features(model, parts.preprocess, parts.tokenizer, rows, args.cache / f"{name}.npz")
        with torch.no_grad():
            ft = torch.from_numpy(f)
            proj = head.proj(ft)
            pn, bridge, norm = F.normalize(proj, dim=-1).numpy(), head.bridge(ft).numpy(), proj.norm(dim=-1).numpy()
        styles = np.array([str(r.get("style", "")) for r in rows])
        data[name] = (pn, bridge, norm, t, t2i, styles)

    def run(weight) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (pn, bridge, norm, t, t2i, styles) in data.items():
            emb = pn + weight(norm)[:, None] * bridge
            out.update(recall(name, emb / np.linalg.norm(emb, axis=1, keepdims=True), t, t2i, styles))
        return out

    variants = {"trained w=1": lambda n: np.ones_like(n), "bridge only": lambda n: np.full_like(n, 1000.0)}
    for tau in (9, 10, 11, 12):
        for s in (0.05, 0.15):
            for w in (3, 10, 100):
                variants[f"tau={tau} s={s} W={w}"] = lambda n, tau=tau, s=s, w=w: (
                    1 + (w - 1) / (1 + np.exp(-(np.log(n) - np.log(tau)) / s))
                )
    rows = sweep_rows(variants, run, 24)
    doc = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "norm_percentiles_p10_p50_p90_p99": {
            k: [round(float(x), 2) for x in np.percentile(v[2], [10, 50, 90, 99])] for k, v in data.items()
        },
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
