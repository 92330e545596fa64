"""The classification head without torch: ``ClassifierHead``'s cosine logits in numpy.

Tagging at index time scores every new item with the model's classifier. With a fast-started
encoder (``mbm.models.light``) that was the only step of a small index run that still imported torch
(about 2 s on a 2-core machine): the head is a cosine classifier, ``exp(s) * cos(x, w_c) + b_c``, so
its weights are read from ``mbm_heads.safetensors`` with safetensors' numpy loader and scored here.
A loaded model's head (a model fresh from training, too) is scored by the same code from its tensors,
so tags do not depend on how the encoder was loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbm.errors import ModelError
from mbm.models.checkpoints import HEADS_CONFIG, HEADS_WEIGHTS


@dataclass(frozen=True)
class CosineClassifier:
    """``labels`` and, in float32, the normalized class directions ``(C, D)``, the bias ``(C,)`` and ``exp(scale)``."""

    labels: tuple[str, ...]
    directions: np.ndarray
    bias: np.ndarray
    scale: float

    @classmethod
    def of(cls, labels: Any, weight: np.ndarray, bias: np.ndarray, logit_scale: float) -> CosineClassifier:
        w = np.asarray(weight, np.float32)
        norms = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)  # as F.normalize
        return cls(tuple(str(x) for x in labels), w / norms, np.asarray(bias, np.float32), float(np.exp(logit_scale)))

    @classmethod
    def from_head(cls, head: Any) -> CosineClassifier:
        """From a loaded ``mbm.models.heads.ClassifierHead``."""
        weight = head.linear.weight.detach().float().cpu().numpy()
        bias = head.linear.bias.detach().float().cpu().numpy()
        return cls.of(head.labels, weight, bias, float(head.logit_scale.detach().float()))

    @classmethod
    def from_folder(cls, folder: str | Path) -> CosineClassifier | None:
        """The classifier saved in a checkpoint folder, or None when it has none."""
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        try:
            meta = json.loads((folder / HEADS_CONFIG).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ModelError(
                f"heads in {folder} cannot be read ({e}) — delete {HEADS_CONFIG} to load the encoder alone"
            ) from e
        spec = meta.get("classifier")
        if not spec:
            return None
        try:
            with safe_open(str(folder / HEADS_WEIGHTS), framework="numpy") as f:
                weight, bias, scale = (
                    f.get_tensor(f"classifier.{k}") for k in ("linear.weight", "linear.bias", "logit_scale")
                )
        except (OSError, SafetensorError) as e:
            raise ModelError(
                f"the classifier in {folder} cannot be read ({e}) — delete {HEADS_CONFIG} to load the encoder alone"
            ) from e
        if weight.shape != (len(spec["labels"]), int(spec["dim"])) or bias.shape != (len(spec["labels"]),):
            raise ModelError(f"the classifier in {folder} does not match its config — delete {HEADS_CONFIG}")
        return cls.of(spec["labels"], weight, bias, float(np.asarray(scale, np.float32)))

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Class logits ``(N, C)`` float64 of embeddings ``(N, D)`` (normalized or not), as ``ClassifierHead``."""
        x = np.asarray(embeddings, np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return (self.scale * (x @ self.directions.T) + self.bias).astype(np.float64)
