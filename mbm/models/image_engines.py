"""Image towers that run without open_clip: what a fast start indexes with (``mbm.models.light``).

- ``OnnxImage``: an encoder's whole image side exported to ONNX (``mbm.models.image_onnx``:
  trunk, head and the fusion head's image projection), run in ONNX Runtime on numpy arrays.
  No torch at all.
- ``TorchImage``: a torch module that returns ``(pooled, tokens)`` (``mbm.models.vit``), plus
  the fusion head when the checkpoint has one; computed exactly as ``Encoder`` computes it.

Both ``encode(pixels, tokens)`` a preprocessed batch ``(N, 3, H, W)`` (numpy or torch) into
``(L2-normalized float32 embeddings, float16 fusion tokens or None)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mbm.models.fingerprint import cache_path

IMAGE_INPUT, EMBEDDING_OUTPUT, TOKENS_OUTPUT = "pixels", "embedding", "tokens"
ONNX_SWITCH = "MBM_IMAGE_ONNX"  # "0": image towers stay in torch


def as_numpy(pixels: Any) -> np.ndarray:
    """A float32 C-contiguous array of a numpy or torch batch."""
    if not isinstance(pixels, np.ndarray):
        pixels = pixels.detach().float().cpu().numpy()
    return np.ascontiguousarray(pixels, np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their norm, as ``torch.nn.functional.normalize`` (eps 1e-12)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def cpu_threads() -> int:
    """The threads a CPU runtime should use: OMP_NUM_THREADS when set, else the cores this process may run on."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        wanted = 0
    if wanted > 0:
        return wanted
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def image_side_path(fingerprint: str, image_size: int) -> Path:
    """Where the image side of the model with this fingerprint is exported (``.json`` beside it: the check)."""
    return cache_path().parent / "image-onnx" / f"{fingerprint.replace(':', '-')}-{image_size}-image.onnx"


def checked_export(path: Path) -> bool:
    """Whether ``path`` holds an export that agreed with torch, made for this onnxruntime."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_file() and isinstance(record, dict) and record.get("onnxruntime") == ort_version()


def ort_version() -> str:
    """The installed onnxruntime version ("" when there is none), read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return ""


class OnnxImage:
    """An exported image side in ONNX Runtime: ``pixels -> embedding (unnormalized) [, tokens]``."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        # decoding threads share the cores: workers that spin between batches would take their time
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.has_tokens = TOKENS_OUTPUT in {o.name for o in self.session.get_outputs()}

    def encode(self, pixels: Any, tokens: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        names = [EMBEDDING_OUTPUT, TOKENS_OUTPUT] if tokens and self.has_tokens else [EMBEDDING_OUTPUT]
        out = self.session.run(names, {IMAGE_INPUT: as_numpy(pixels)})
        return l2_normalize(out[0]), (out[1].astype(np.float16) if len(out) > 1 else None)


class TorchImage:
    """A torch image tower returning ``(pooled, tokens)`` and the fusion head, outside open_clip."""

    def __init__(self, tower: Any, fusion: Any, device: str, dtype: Any):
        self.tower, self.fusion, self.device, self.dtype = tower, fusion, device, dtype
        self.has_tokens = fusion is not None

    def encode(self, pixels: Any, tokens: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        with torch.inference_mode():
            pooled, cells = self.tower(x.to(self.device, self.dtype, non_blocking=True))
            emb = torch.nn.functional.normalize(pooled.float(), dim=-1)
            if not tokens or self.fusion is None:
                return emb.cpu().numpy(), None
            projected = self.fusion.project_image(cells.to(self.device, torch.float32), emb)
            return emb.cpu().numpy(), projected.to(torch.float16).cpu().numpy()
