"""Image towers in ONNX Runtime for indexing on CPUs without fast bf16 maths (fp32 encoders).

On a CPU without AMX torch runs EfficientNet's depthwise convolutions slowly: Lite0 at 224 px
measured 27-30 images/s in fp32 with channels_last on a 2-core AVX2 machine, ONNX Runtime 1.32
about 70 images/s on the same machine, for the same values (max abs difference ~1e-5). A CLIP
ViT-B-32 at 256 px runs about as fast in either there (~70 ms an image at batch 32), but an
ONNX Runtime process starts without importing torch (1.4-3 s of a start on such a machine).

- ``ImageSideExport``: an fp32 CPU encoder with a timm trunk or a plain CLIP ViT (through
  ``mbm.models.vit``, which builds the same tower from torch modules alone) exports its whole image side
  (trunk, pooling, image head, and the fusion head's image projection when it has one) once
  per model fingerprint (a few seconds, cached in ``$XDG_CACHE_HOME/mbm/image-onnx/``), checks
  it against torch on the first real batch and runs the rest in ONNX Runtime
  (``mbm.models.image_engines.OnnxImage``). A checked export is recorded beside it, so a later
  process starts with it directly, without torch (``mbm.models.light``).
- ``OnnxTrunk``: only the trunk's ``forward_features`` (the training feature cache uses it).

Any failure (no onnxruntime, an export error, a disagreement) keeps torch, with one log line.
``MBM_IMAGE_ONNX=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import math
import os
import secrets
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbm.atomic import atomic_path, fsync, temp_file, write_text
from mbm.models.fingerprint import cache_path
from mbm.models.image_engines import (
    EMBEDDING_OUTPUT,
    IMAGE_INPUT,
    ONNX_SWITCH,
    TOKENS_OUTPUT,
    OnnxImage,
    checked_export,
    image_side_path,
    ort_version,
)

log = logging.getLogger(__name__)

ENV_SWITCH = ONNX_SWITCH
MIN_COSINE = 0.9999
WEIGHTS_SUFFIX = ".data"


def runtime_wanted(device: str, precision: str) -> bool:
    """Whether an encoder on ``device`` in ``precision`` should try ONNX Runtime for its image side: fp32 on the
    CPU (where bf16 is fast, torch in bf16 is faster than ONNX Runtime in fp32), with onnxruntime installed."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or device != "cpu" or precision != "fp32":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def wanted(model: Any, device: str, precision: str) -> bool:
    """Whether an encoder with a timm trunk should try ONNX Runtime for it."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    return trunk is not None and hasattr(trunk, "forward_features") and runtime_wanted(device, precision)


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


# -- the whole image side ------------------------------------------------------------------------


def _pool_matrix(side: int, grid: int) -> torch.Tensor:
    """``(grid*grid, side*side)`` weights with ``W @ tokens == adaptive_avg_pool2d`` of the square map:
    the TorchScript exporter refuses adaptive pooling to a size that does not divide the input."""
    bins = [(math.floor(i * side / grid), math.ceil((i + 1) * side / grid)) for i in range(grid)]
    weights = torch.zeros(grid * grid, side * side)
    for gy, (y0, y1) in enumerate(bins):
        for gx, (x0, x1) in enumerate(bins):
            cells = [y * side + x for y in range(y0, y1) for x in range(x0, x1)]
            weights[gy * grid + gx, cells] = 1.0 / len(cells)
    return weights


class TimmTower(torch.nn.Module):
    """A timm-trunk image tower as ``pixels -> (pooled, cells (B, P, C))``: the trunk's feature map, one token
    per cell, is what the fusion head reads."""

    def __init__(self, visual: Any):
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.visual.trunk.forward_features(pixels)
        pooled = self.visual.head(self.visual.trunk.forward_head(features))
        return pooled, features.flatten(2).transpose(1, 2)


class _ImageSide(torch.nn.Module):
    """``pixels -> (pooled, fusion image tokens)`` as ``Encoder.encode_image_batch`` computes them, from a tower
    that returns ``(pooled, cells)`` (``TimmTower``, ``mbm.models.vit.VisionTower``)."""

    pool: torch.Tensor | None

    def __init__(self, tower: Any, fusion: Any, cells: int):
        super().__init__()
        self.tower, self.fusion = tower, fusion
        grid = int(getattr(getattr(fusion, "cfg", None), "image_grid", 0) or 0)
        side = math.isqrt(cells)
        pool = grid > 0 and side * side == cells and side != grid
        self.register_buffer("pool", _pool_matrix(side, grid) if pool else None, persistent=False)

    def forward(self, pixels: torch.Tensor) -> Any:
        pooled, cells = self.tower(pixels)
        if self.fusion is None:
            return pooled
        cells = cells.float()
        if self.pool is not None:  # pooled here: project_image then finds the map at its grid already
            cells = torch.matmul(self.pool, cells)
        return pooled, self.fusion.project_image(cells, torch.nn.functional.normalize(pooled.float(), dim=-1))


@contextlib.contextmanager
def _exportable_attention() -> Iterator[None]:
    """``nn.MultiheadAttention`` without its inference fast path, whose fused op has no ONNX form."""
    mha = torch.backends.mha
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def export_image_side(tower: Any, fusion: Any, size: int, path: Path) -> None:
    """Write ``tower``'s image side (and ``fusion``'s image projection) to ``path`` (TorchScript exporter);
    ``tower``: ``pixels -> (pooled, cells)``, fp32."""
    with torch.no_grad():
        cells = tower(torch.zeros(1, 3, size, size))[1].shape[1]
    outputs = [EMBEDDING_OUTPUT] + ([TOKENS_OUTPUT] if fusion is not None else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter prints whole graphs when it fails: kept out of the user's terminal
    single = temp_file(path.parent, path.name)
    try:
        with (
            torch.no_grad(),
            _exportable_attention(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _ImageSide(tower, fusion, cells).eval(),
                (torch.zeros(2, 3, size, size),),
                str(single),
                input_names=[IMAGE_INPUT],
                output_names=outputs,
                dynamic_axes={IMAGE_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                dynamo=False,
            )
        _with_external_weights(single, path)
    finally:
        single.unlink(missing_ok=True)


def _with_external_weights(single: Path, path: Path) -> None:
    """Write the single-file export ``single`` to ``path`` with its weights in a file beside it, which ONNX
    Runtime maps instead of parsing out of the graph: ViT-B-32's image side loads in ~0.6 s instead of ~1.2 s.

    The weights file has a name of its own per export (``<path name>.<random>.data``), written before the graph
    that names it replaces the old one, so a process loading the old export never sees a half-written file."""
    try:
        import onnx
    except ImportError:  # onnxruntime without onnx: the single file works as it is
        fsync(single)
        os.replace(single, path)
        return
    model = onnx.load(str(single))
    data = f"{path.name}.{secrets.token_hex(4)}{WEIGHTS_SUFFIX}"
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(
                model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                size_threshold=1024,
            )  # fmt: skip
            # onnx writes the weights 0600: give them the graph's mode (the umask's), so whoever reads one reads both
            os.chmod(path.parent / data, stat.S_IMODE(tmp.stat().st_mode))
            fsync(path.parent / data)
    except BaseException:
        (path.parent / data).unlink(missing_ok=True)
        raise
    for old in _weight_files(path):
        if old.name != data:
            old.unlink(missing_ok=True)


def _weight_files(path: Path) -> list[Path]:
    return list(path.parent.glob(f"{glob.escape(path.name)}.*{WEIGHTS_SUFFIX}"))


def remove_export(path: Path) -> None:
    """Delete an image-side export: its graph, weights and check record."""
    for file in [path, path.with_suffix(".json"), *_weight_files(path)]:
        file.unlink(missing_ok=True)


Reference = Callable[[torch.Tensor, bool], tuple[np.ndarray, np.ndarray | None]]


def _agrees(got: tuple[np.ndarray, np.ndarray | None], want: tuple[np.ndarray, np.ndarray | None]) -> float:
    """The lowest per-image cosine between two ``(embeddings, tokens)`` results."""
    cosines = [np.sum(got[0] * want[0], axis=1)]
    if want[1] is not None:
        if got[1] is None:
            return 0.0
        a, b = (x.reshape(len(x), -1).astype(np.float32) for x in (got[1], want[1]))
        cosines.append(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))
    return float(min(c.min() for c in cosines))


class ImageSideExport:
    """The image side of one fp32 CPU encoder in ONNX Runtime, exported and checked on the first batch.

    ``tower``: ``pixels -> (pooled, cells)`` in fp32 (``TimmTower``, ``mbm.models.vit.VisionTower``)."""

    def __init__(self, tower: Any, fusion: Any, fingerprint: str, image_size: int, on_checked: Callable[[Path], None]):
        self.tower, self.fusion, self.image_size = tower, fusion, image_size
        self.path = image_side_path(fingerprint, image_size)
        self.engine: OnnxImage | None = None
        self.failed = False
        self._on_checked = on_checked
        self._lock = threading.Lock()

    def encode(
        self, pixels: torch.Tensor, tokens: bool, reference: Reference
    ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The batch's ``(embeddings, tokens)`` from ONNX Runtime, or None when torch must do it."""
        if self.failed:
            return None
        with self._lock:
            if self.engine is None:
                try:
                    return self._prepare_and_check(pixels, tokens, reference)
                except Exception as e:  # noqa: BLE001 - any failure keeps torch, which computes the same thing
                    log.info("image tower stays in torch: %s", e)
                    self.failed, self.engine = True, None
                    remove_export(self.path)
                    return None
        return self.engine.encode(pixels, tokens)

    def _prepare_and_check(
        self, pixels: torch.Tensor, tokens: bool, reference: Reference
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not checked_export(self.path):
            export_image_side(self.tower, self.fusion, self.image_size, self.path)
        engine = OnnxImage(self.path, max(1, torch.get_num_threads()))
        got = engine.encode(pixels, tokens=True)
        want = reference(pixels, self.fusion is not None)
        cosine = _agrees(got, want)
        if cosine < MIN_COSINE:
            raise RuntimeError(f"ONNX Runtime disagrees with torch (cosine {cosine:.6f})")
        write_text(self.path.with_suffix(".json"), json.dumps({"onnxruntime": ort_version(), "cosine": cosine}))
        self.engine = engine
        self._on_checked(self.path)
        return got if tokens else (got[0], None)
