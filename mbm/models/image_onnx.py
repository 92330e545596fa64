"""Convolutional image trunks (timm towers such as EfficientNet-Lite0) in ONNX Runtime for indexing on CPUs.

On a CPU without fast bf16 (no AMX or AVX512-BF16) torch runs EfficientNet's depthwise
convolutions slowly: Lite0 at 224 px measured 27-30 images/s in fp32 with channels_last on
a 2-core AVX2 machine, ONNX Runtime 1.32 about 70 images/s on the same machine, for the
same values (max abs difference ~1e-5). So when an fp32 CPU encoder has a timm trunk, its
``forward_features`` is exported to ONNX once per model fingerprint (a few seconds, cached
in ``$XDG_CACHE_HOME/mbm/image-onnx/``), checked against torch on the first real batch,
and run in ONNX Runtime; pooling and the image head stay in torch. Any failure (no
onnxruntime, an export error, a disagreement) keeps torch, with one log line.
``MBM_IMAGE_ONNX=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from mbm.atomic import atomic_path
from mbm.models.fingerprint import cache_path

log = logging.getLogger(__name__)

ENV_SWITCH = "MBM_IMAGE_ONNX"
MIN_COSINE = 0.9999


def wanted(model: Any, device: str, precision: str) -> bool:
    """Whether an encoder should try ONNX Runtime for its image trunk."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or device != "cpu" or precision != "fp32":
        return False
    visual = getattr(model, "visual", None)
    if not hasattr(visual, "trunk") or not hasattr(visual.trunk, "forward_features"):
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _FeatureMap(torch.nn.Module):
    def __init__(self, trunk: Any):
        super().__init__()
        self.trunk = trunk

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(pixels)


def _export(trunk: Any, size: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript exporter: one call, a few seconds, no onnxscript tracing of timm's blocks (it warns that it is
    # legacy; the graph it writes is plain ONNX)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _FeatureMap(trunk).eval(),
            (torch.zeros(2, 3, size, size),),
            str(tmp),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}},
            dynamo=False,
        )


class OnnxTrunk:
    """The image trunk of one encoder in ONNX Runtime, prepared and checked on the first batch."""

    def __init__(self, model: Any, fingerprint: str, image_size: int):
        self.model, self.image_size = model, image_size
        self.path = cache_path().parent / "image-onnx" / f"{fingerprint.replace(':', '-')}-{image_size}.onnx"
        self.session: Any = None
        self.failed = False
        self._lock = threading.Lock()

    def _prepare(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            _export(self.model.visual.trunk, self.image_size, self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def features(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """The trunk's feature map for a float32 batch, or None when torch must do it (first-batch check failed)."""
        if self.failed:
            return None
        with self._lock:
            if self.session is None:
                try:
                    self._prepare()
                    got = self._run(pixels)
                    with torch.inference_mode():
                        want = self.model.visual.trunk.forward_features(
                            pixels.contiguous(memory_format=torch.channels_last)
                        )
                    cosine = torch.nn.functional.cosine_similarity(got.flatten(1), want.float().flatten(1)).min()
                    if float(cosine) < MIN_COSINE:
                        raise RuntimeError(f"ONNX Runtime disagrees with torch (cosine {float(cosine):.6f})")
                    return got
                except Exception as e:  # noqa: BLE001 - any failure keeps torch, which computes the same thing
                    log.info("image trunk stays in torch: %s", e)
                    self.failed, self.session = True, None
                    self.path.unlink(missing_ok=True)
                    return None
        return self._run(pixels)

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"pixels": pixels.float().contiguous().numpy()})[0])


def encode(model: Any, trunk: OnnxTrunk, pixels: torch.Tensor) -> torch.Tensor | None:
    """``model.encode_image(pixels)`` with the trunk in ONNX Runtime, or None to fall back to torch."""
    out = encode_with_features(model, trunk, pixels)
    return None if out is None else out[0]


def encode_with_features(
    model: Any, trunk: OnnxTrunk, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(model.encode_image(pixels), feature map (B,C,h,w))`` from one trunk pass in ONNX Runtime, or None to
    fall back to torch. The feature map, one token per cell, is what the fusion head reads."""
    features = trunk.features(pixels)
    if features is None:
        return None
    with torch.inference_mode():
        visual = model.visual
        return visual.head(visual.trunk.forward_head(features)), features
