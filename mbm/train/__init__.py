"""Training and evaluation of mbm's own dual encoders and heads.

    from mbm.train import TrainConfig, train
    from mbm.train.evaluate import evaluate
    result = train(TrainConfig(manifest="data/pairs.jsonl", out_dir="runs/small", model="mbm-small"))
    metrics = evaluate("runs/small/best", "data/pairs.jsonl", split="test")

Names are imported on first use, so that ``mbm.train.sources`` (dataset builders)
does not pull in torch and open_clip. (``evaluate`` is not re-exported here: the
name belongs to the submodule ``mbm.train.evaluate``.)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "mbm.train.config",
    "train": "mbm.train.loop",
    "lr_at": "mbm.train.step",
    "recall_at_k": "mbm.train.recall",
    "rerank_recall": "mbm.train.rerank_metrics",
    "zero_shot_accuracy": "mbm.train.evaluate",
    "PairDataset": "mbm.train.data",
    "load_rows": "mbm.train.data",
    "collate": "mbm.train.data",
    "train_transform": "mbm.train.augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mbm.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
