"""Training from cached features: frozen-trunk image features and frozen-text hidden states read back every epoch.

``mbm.train.features`` fills and reads the image feature store; this module builds the
training set and validation features of a run from it (``TrainConfig.feature_cache``), and
keeps the frozen text transformer's hidden states per caption beside it (``TextStore``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbm.atomic import write_bytes, write_text
from mbm.train.features import FeatureStore, fill, picture_key, trunk_identity

log = logging.getLogger(__name__)


class TextStore:
    """Hidden states of a frozen text transformer per caption (keyed by its token ids), kept beside the image
    features so that each run over the same captions skips the transformer; ``text_cfg`` names the tower."""

    def __init__(self, folder: str | Path, text_cfg: dict):
        digest = hashlib.sha256(json.dumps(text_cfg, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"text-{digest}.safetensors"

    def load(self) -> dict[bytes, torch.Tensor]:
        from safetensors.torch import load_file

        if not self.path.is_file():
            return {}
        data = load_file(str(self.path))
        keys = json.loads(self.path.with_suffix(".json").read_text())
        if len(keys) + 1 != len(data["offsets"]):
            return {}  # a torn pair of files (the tensors are written first): recompute
        hidden, offsets = data["hidden"], data["offsets"].tolist()
        return {bytes.fromhex(k): hidden[offsets[i] : offsets[i + 1]] for i, k in enumerate(keys)}

    def save(self, hidden: dict[bytes, torch.Tensor]) -> None:
        from safetensors.torch import save

        keys = list(hidden)
        offsets = np.cumsum([0] + [len(hidden[k]) for k in keys])
        tensors = {
            "hidden": torch.cat([hidden[k] for k in keys]).to(torch.float16).contiguous(),
            "offsets": torch.from_numpy(offsets.astype(np.int64)),
        }
        write_bytes(self.path, save(tensors))
        write_text(self.path.with_suffix(".json"), json.dumps([k.hex() for k in keys]))


class CachedPairs(torch.utils.data.Dataset):
    """A ``PairDataset`` whose items carry cached trunk features instead of pixels.

    The caption drawn for an item is the one ``PairDataset`` would draw (same seeded
    generator); the view is drawn from the same generator, so a resumed run repeats it.
    """

    def __init__(self, pairs: Any, store: FeatureStore, keys: Sequence[str], views: int):
        self.pairs = pairs
        self.rows, self.tokens = pairs.rows, pairs.tokens
        loaded = [store.load(keys, v) for v in range(views)]
        self.pooled = [p for p, _ in loaded]
        self.image_tokens = [t for _, t in loaded]

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple:
        p = self.pairs
        rng = np.random.default_rng([p.seed, p.epoch, index])
        caption_id = int(rng.choice(p.row_captions[index]))
        view = int(rng.integers(len(self.pooled)))
        return (
            self.pooled[view][index],
            p.tokens[caption_id],
            p.labels[index],
            caption_id,
            p.groups[index],
            p.caption_sets[index],
            self.image_tokens[view][index],
        )


def collate_cached(items: Sequence[tuple]) -> Any:
    """``collate`` for ``CachedPairs`` items: ``Batch.pixels`` holds pooled features, ``image_tokens`` the tokens."""
    from mbm.train.data import collate

    batch = collate([item[:6] for item in items])
    return batch._replace(image_tokens=torch.stack([item[6] for item in items]))


def cached_sets(run: Any, cfg: Any, train_rows: Sequence[dict], labels: dict) -> tuple[CachedPairs, dict]:
    """Fill the cache where needed (train views 0..views-1, val view 0), then the training set and val features."""
    from mbm.train.data import PairDataset

    grid = int(cfg.fusion.get("image_grid", 0) or 0)
    store = FeatureStore(cfg.feature_cache, trunk_identity(run.model, grid))
    report = fill(
        store,
        run.model,
        run.preprocess_val,
        train_rows,
        range(cfg.views),
        augment=cfg.augment,
        grid=grid,
        progress=log.info,
    )
    report["val"] = fill(store, run.model, run.preprocess_val, run.val_rows, [0], grid=grid, progress=log.info)
    log.info("feature cache %s: %s", cfg.feature_cache, report)
    pairs = PairDataset(train_rows, _no_pixels, run.tokenizer, labels, seed=cfg.seed)
    train_set = CachedPairs(pairs, store, [picture_key(r) for r in train_rows], cfg.views)
    pooled, _ = store.load([picture_key(r) for r in run.val_rows], 0)
    return train_set, {"pooled": pooled}


def _no_pixels(*_args: Any) -> torch.Tensor:
    raise AssertionError("a cached training set never decodes pictures")


def _cached_embeddings(
    model: Any, tokenizer: Any, pooled: torch.Tensor, rows: Sequence[dict], device: str = "cpu", batch: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image embeddings from cached pooled features, embeddings of every caption, caption -> row), normalized."""
    head = model.visual.head
    captions = [c for r in rows for c in r["captions"]]
    with torch.no_grad():
        image = torch.cat(
            [
                torch.nn.functional.normalize(head(pooled[s : s + batch].to(device).float()), dim=-1).cpu()
                for s in range(0, len(pooled), batch)
            ]
        )
        text = torch.cat(
            [
                torch.nn.functional.normalize(
                    model.encode_text(tokenizer(captions[s : s + 256]).to(device)).float(), dim=-1
                ).cpu()
                for s in range(0, len(captions), 256)
            ]
        )
    owner = np.array([i for i, r in enumerate(rows) for _ in r["captions"]], np.int64)
    return image.numpy(), text.numpy(), owner


def validate_cached(run: Any, device: str) -> dict:
    """Validation recall@K from the cached val features (view 0: the pictures as indexed)."""
    from mbm.train.recall import recall_at_k

    return recall_at_k(*_cached_embeddings(run.model, run.tokenizer, run.val_cache["pooled"], run.val_rows, device))


def evaluate_cached(
    model: Any, tokenizer: Any, store: FeatureStore, rows: Sequence[dict], *, by: Sequence[str] = ("source", "style")
) -> dict:
    """Text->image and image->text recall@K of ``rows`` from cached view-0 features, overall and per value of
    each field in ``by`` (quick figures for ablations; ``mbm eval`` decodes the pictures)."""
    from mbm.train.recall import recall_at_k

    pooled, _ = store.load([picture_key(r) for r in rows], 0)
    image, text, owner = _cached_embeddings(model, tokenizer, pooled, rows)
    out = {"all": recall_at_k(image, text, owner)}
    for field in by:
        for value in sorted({str(r.get(field)) for r in rows if r.get(field)}):
            keep = [i for i, r in enumerate(rows) if str(r.get(field)) == value]
            remap = {old: new for new, old in enumerate(keep)}
            texts = [j for j, o in enumerate(owner) if int(o) in remap]
            out[f"{field}:{value}"] = recall_at_k(
                image[keep], text[texts], np.array([remap[int(owner[j])] for j in texts])
            )
    return out
