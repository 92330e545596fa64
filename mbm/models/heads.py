"""Heads trained beside the dual encoder, and their files next to a checkpoint.

``mbm_heads.safetensors`` holds the tensors (``fusion.*``, ``classifier.*``) and
``mbm_heads.json`` their configs and label names. Plain open_clip ignores both files,
so a checkpoint folder with heads still loads as an ordinary dual encoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mbm.atomic import write_bytes, write_text
from mbm.errors import ModelError
from mbm.models.checkpoints import HEADS_CONFIG, HEADS_WEIGHTS
from mbm.models.fusion import FusionConfig, FusionModel

__all__ = ["HEADS_CONFIG", "HEADS_FORMAT", "HEADS_WEIGHTS", "ClassifierHead", "load_heads", "save_heads"]

HEADS_FORMAT = 1


class ClassifierHead(nn.Module):
    """Cosine classifier on the shared embedding: ``scale * <normalize(x), normalize(w_c)> + b_c``.

    Normalizing both sides keeps the head on the same footing as retrieval (which only
    sees directions), and the learnable scale plays the role of CLIP's temperature.
    """

    def __init__(self, dim: int, labels: Sequence[str], init_scale: float = 10.0):
        super().__init__()
        if not labels:
            raise ValueError("a classifier head needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError("classifier labels must be unique")
        self.dim, self.labels = int(dim), [str(x) for x in labels]
        self.linear = nn.Linear(self.dim, len(self.labels))
        nn.init.zeros_(self.linear.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)`` for embeddings ``(B, dim)`` (normalized or not)."""
        cosine = F.linear(F.normalize(emb, dim=-1), F.normalize(self.linear.weight, dim=-1))
        return self.logit_scale.exp() * cosine + self.linear.bias

    @torch.no_grad()
    def init_from_text(self, label_emb: torch.Tensor) -> None:
        """Start each class at its label's text embedding (zero-shot initialization)."""
        if label_emb.shape != self.linear.weight.shape:
            raise ValueError(
                f"label embeddings have shape {tuple(label_emb.shape)}, expected {tuple(self.linear.weight.shape)}"
            )
        self.linear.weight.copy_(F.normalize(label_emb.float(), dim=-1))


def save_heads(folder: str | Path, fusion: FusionModel | None, classifier: ClassifierHead | None) -> None:
    """Write ``mbm_heads.safetensors`` + ``mbm_heads.json`` into ``folder`` (nothing when both are None)."""
    from safetensors.torch import save

    folder = Path(folder)
    if fusion is None and classifier is None:
        return
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"format": HEADS_FORMAT, "fusion": None, "classifier": None}
    if fusion is not None:
        meta["fusion"] = fusion.cfg.to_dict()
        tensors.update({f"fusion.{k}": v for k, v in fusion.state_dict().items()})
    if classifier is not None:
        meta["classifier"] = {"dim": classifier.dim, "labels": classifier.labels}
        tensors.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    # each file lands whole; the json goes last, so it never names weights that are not there yet
    write_bytes(folder / HEADS_WEIGHTS, save(tensors, metadata={"format": "pt"}))  # save_file would make it 0600
    write_text(folder / HEADS_CONFIG, json.dumps(meta, indent=2))


def load_heads(folder: str | Path, device: str = "cpu") -> dict[str, nn.Module]:
    """Heads saved in ``folder``: ``{"fusion": FusionModel, "classifier": ClassifierHead}`` for those present."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / HEADS_CONFIG).is_file():
        return {}
    try:
        meta = json.loads((folder / HEADS_CONFIG).read_text())
        tensors = load_file(str(folder / HEADS_WEIGHTS), device="cpu")
    except (OSError, ValueError) as e:
        raise ModelError(
            f"heads in {folder} cannot be read ({e}) — delete {HEADS_CONFIG} to load the encoder alone"
        ) from e
    if meta.get("format", 0) > HEADS_FORMAT:
        raise ModelError(f"heads in {folder} use format {meta['format']}, newer than this mbm — upgrade mbm")
    heads: dict[str, nn.Module] = {}
    if meta.get("fusion"):
        heads["fusion"] = FusionModel(FusionConfig(**meta["fusion"]))
    if meta.get("classifier"):
        heads["classifier"] = ClassifierHead(meta["classifier"]["dim"], meta["classifier"]["labels"])
    for name, module in heads.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{name} head in {folder} does not match its config ({e})") from e
        module.to(device).eval()
    return heads
