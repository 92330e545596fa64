"""Frozen image-tower features, computed once per picture and view and cached on disk.

With a frozen trunk (LiT), what trains is the image head, the fusion and classifier heads
and the text projection: everything after the trunk. The trunk's output for a picture
never changes, so it is computed once per picture and augmented view and read back every
epoch: an epoch over 50,000 pictures then takes a minute on a CPU instead of half an hour.

The store is content-addressed (a picture's key is the sha256 of its file), so a rebuilt
or re-split manifest reuses it, and it grows shard by shard: an interrupted fill resumes
from the last complete shard. Layout::

    <dir>/store.json                  trunk identity: model, trunk weights digest, size, grid, preprocessing
    <dir>/v<view>/<nnnnn>.safetensors pooled (n, C) and tokens (n, grid*grid, C), float16
    <dir>/v<view>/<nnnnn>.json        the n keys, in row order

View 0 is the picture exactly as indexing decodes it; views 1.. are style augmentations
(``mbm.train.augment``), seeded by (key, view) so that a refill computes the same pixels.
A store made with other trunk weights, size or grid is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbm.atomic import write_bytes, write_text
from mbm.errors import UsageError
from mbm.models.fusion import pool_image_tokens

log = logging.getLogger(__name__)

STORE_FILE = "store.json"
STORE_FORMAT = 1
SHARD = 512


def picture_key(row: dict) -> str:
    """The row's picture key: the manifest's sha256 when it has one, else the file's."""
    if row.get("sha256"):
        return str(row["sha256"])
    return hashlib.sha256(Path(row["image"]).read_bytes()).hexdigest()


def trunk_identity(model: Any, grid: int) -> dict:
    """What decides the cached values: the trunk's weights, the input size and preprocessing, the token grid."""
    import open_clip

    digest = hashlib.sha256()
    for name, tensor in sorted(model.visual.trunk.state_dict().items()):
        if not tensor.is_floating_point():
            continue  # BatchNorm's step counter: frozen BatchNorm has none, and it decides nothing
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    return {
        "format": STORE_FORMAT,
        "trunk": type(model.visual.trunk).__name__,
        "weights": digest.hexdigest(),
        "grid": grid,
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in pp.items()},
    }


class FeatureStore:
    """One folder of cached trunk features (see the module docstring)."""

    def __init__(self, folder: str | Path, identity: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / STORE_FILE
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored != identity:
                changed = sorted(k for k in identity if stored.get(k) != identity.get(k))
                raise UsageError(
                    f"feature cache {self.folder} was made with another image tower ({', '.join(changed)} "
                    "differ) — delete it or pass another --feature-cache folder"
                )
        else:
            write_text(path, json.dumps(identity, indent=2))
        self.identity = identity

    def _shards(self, view: int) -> list[Path]:
        folder = self.folder / f"v{view}"
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def index(self, view: int) -> dict[str, tuple[Path, int]]:
        """key -> (shard file, row) for one view (complete shards only: the tensors are written first)."""
        out: dict[str, tuple[Path, int]] = {}
        for meta in self._shards(view):
            tensors = meta.with_suffix(".safetensors")
            if tensors.is_file():
                for row, key in enumerate(json.loads(meta.read_text())):
                    out.setdefault(key, (tensors, row))
        return out

    def add(self, view: int, keys: Sequence[str], pooled: torch.Tensor, tokens: torch.Tensor) -> None:
        from safetensors.torch import save

        folder = self.folder / f"v{view}"
        folder.mkdir(exist_ok=True)
        number = len(self._shards(view))
        base = folder / f"{number:05d}"
        write_bytes(
            base.with_suffix(".safetensors"),
            save({"pooled": pooled.to(torch.float16).contiguous(), "tokens": tokens.to(torch.float16).contiguous()}),
        )
        write_text(base.with_suffix(".json"), json.dumps(list(keys)))  # last: it makes the shard visible

    def load(self, keys: Sequence[str], view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled (N, C), tokens (N, G, C))`` float16 for ``keys`` in order; every key must be cached."""
        from safetensors.torch import load_file

        where = self.index(view)
        missing = [k for k in keys if k not in where]
        if missing:
            raise UsageError(f"feature cache {self.folder} view {view} lacks {len(missing)} pictures — fill it first")
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            shard, row = where[key]
            by_shard.setdefault(shard, []).append((i, row))
        pooled: torch.Tensor | None = None
        tokens: torch.Tensor | None = None
        for shard, pairs in by_shard.items():
            data = load_file(str(shard))
            if pooled is None or tokens is None:
                pooled = torch.empty(len(keys), *data["pooled"].shape[1:], dtype=torch.float16)
                tokens = torch.empty(len(keys), *data["tokens"].shape[1:], dtype=torch.float16)
            dst = torch.tensor([i for i, _ in pairs])
            src = torch.tensor([r for _, r in pairs])
            pooled[dst] = data["pooled"][src]
            tokens[dst] = data["tokens"][src]
        assert pooled is not None and tokens is not None
        return pooled, tokens


def trunk_features(model: Any, pixels: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (B, C), tokens (B, grid*grid, C))`` of the image trunk: what the image head and fusion read."""
    trunk = model.visual.trunk
    features = trunk.forward_features(pixels.contiguous(memory_format=torch.channels_last))
    pooled = trunk.forward_head(features)
    return pooled, pool_image_tokens(features.flatten(2).transpose(1, 2), grid)


def _trunk_runner(model: Any, grid: int, digest: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The trunk as a function of a pixel batch, its feature map computed as indexing computes it: in ONNX Runtime
    on an fp32 CPU model (``mbm.models.image_onnx``: 2-3x torch's rate for EfficientNet on an AVX2 CPU, checked
    against torch on the first batch), else in torch."""
    from mbm.models import image_onnx

    param = next(model.parameters())
    device, precision = param.device.type, "fp32" if param.dtype == torch.float32 else "other"
    onnx = (
        image_onnx.OnnxTrunk(model, f"trunk-{digest}", preprocess_size(model))
        if image_onnx.wanted(model, device, precision)
        else None
    )
    trunk = model.visual.trunk

    def run(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = onnx.features(pixels) if onnx is not None else None
        with torch.no_grad():
            if features is None:
                return trunk_features(model, pixels.to(param.device), grid)
            return trunk.forward_head(features), pool_image_tokens(features.flatten(2).transpose(1, 2), grid)

    return run


def preprocess_size(model: Any) -> int:
    """The side of the model's (square) input picture."""
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def preprocess_of(model: Any) -> dict:
    """The model's input size (one side), and the mean and std its pixels are normalized with."""
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"]
    return {"size": size[0] if isinstance(size, (tuple, list)) else int(size), "mean": pp["mean"], "std": pp["std"]}


def _pixels(
    rows: Sequence[dict], keys: Sequence[str], view: int, preprocess_val: Any, train_tf: Any, size: int
) -> torch.Tensor:
    from mbm.train.data import load_eval_image, open_train_image, stable_hash

    out = []
    for row, key in zip(rows, keys):
        if view == 0:
            out.append(preprocess_val(load_eval_image(row["image"], size)))
        else:
            rng = np.random.default_rng([stable_hash(key), view])
            out.append(train_tf(open_train_image(row["image"], size), row["captions"][0], rng))
    return torch.stack(out)


def fill(
    store: FeatureStore,
    model: Any,
    preprocess_val: Any,
    rows: Sequence[dict],
    views: Sequence[int],
    *,
    augment: float = 0.5,
    grid: int = 3,
    batch: int = 32,
    progress: Callable[[str], object] | None = None,
) -> dict:
    """Compute and store the features of every row's picture that a view lacks; returns counts and rates."""
    from mbm.train.augment import train_transform

    pp = preprocess_of(model)
    train_tf = train_transform(pp["size"], pp["mean"], pp["std"], augment)
    unique: dict[str, dict] = {}
    for row in rows:
        unique.setdefault(picture_key(row), row)
    report: dict[str, Any] = {}
    model.eval()
    run = None
    for view in views:
        have = store.index(view)
        todo = [k for k in unique if k not in have]
        started, done = time.perf_counter(), 0
        if todo and run is None:
            run = _trunk_runner(model, grid, store.identity["weights"])
        for s in range(0, len(todo), SHARD):
            assert run is not None  # made above: there is something to compute
            keys = todo[s : s + SHARD]
            pooled, tokens = [], []
            with torch.inference_mode():
                for b in range(0, len(keys), batch):
                    chunk = keys[b : b + batch]
                    x = _pixels([unique[k] for k in chunk], chunk, view, preprocess_val, train_tf, pp["size"])
                    p, t = run(x)
                    pooled.append(p.float())
                    tokens.append(t.float())
            store.add(view, keys, torch.cat(pooled), torch.cat(tokens))
            done += len(keys)
            rate = done / (time.perf_counter() - started)
            if progress is not None:
                progress(f"features view {view}: {done}/{len(todo)} new pictures ({rate:.1f}/s)")
        report[f"v{view}"] = {
            "pictures": len(unique),
            "computed": len(todo),
            "per_s": round(done / max(1e-9, time.perf_counter() - started), 1),
        }
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mbm.train.features MANIFEST --out DIR``: fill a cache ahead of training (resumable)."""
    import argparse

    from mbm.models.build import create_from_config
    from mbm.train.data import load_rows

    parser = argparse.ArgumentParser(prog="python -m mbm.train.features", description=main.__doc__)
    parser.add_argument("manifest")
    parser.add_argument("--out", required=True, help="the cache folder")
    parser.add_argument("--model", default="mbm-lite0", help="a config with a frozen pretrained trunk")
    parser.add_argument("--splits", default="train,val")
    parser.add_argument("--views", default="0", help="comma-separated views: 0 = as indexed, 1.. = augmented")
    parser.add_argument("--augment", type=float, default=0.5)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model, _, preprocess_val, _ = create_from_config(args.model)
    rows = [r for split in args.splits.split(",") for r in load_rows(args.manifest, split)]
    store = FeatureStore(args.out, trunk_identity(model, args.grid))
    views = [int(v) for v in args.views.split(",")]
    report = fill(store, model, preprocess_val, rows, views, augment=args.augment, grid=args.grid, progress=log.info)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
