"""Fast starts: an encoder that indexes images before (or without) torch and open_clip are imported.

A whole ``mbm index`` process used to spend ~6 s before its first batch: 4 s importing torch,
open_clip and what open_clip imports (torchvision, timm, transformers), 2 s building the model
and loading its weights. Every full load of a checkpoint folder therefore leaves a *start
record* in ``$XDG_CACHE_HOME/mbm/starts/``: what that load computed (fingerprint, dim, image
size, preprocess config, fusion head config, logit scale) and which image side can stand in for
the open_clip model, each checked against it when recorded:

- ``onnx``: the whole image side exported to ONNX Runtime (``mbm.models.image_onnx``), for
  fp32 CPU encoders with a timm trunk (the bundled model) or a plain CLIP ViT (the ``vit`` case
  below, on CPUs without fast bf16 maths, where ONNX Runtime runs it as fast as torch does): no
  torch at all;
- ``vit``: mbm's own ViT (``mbm.models.vit``) with the checkpoint's ``visual.*`` tensors, for
  plain open_clip CLIP ViTs: torch, but no open_clip, torchvision, timm or transformers, and no
  text tower.

The record is found by a digest of what the full load read: the spec, the checkpoint's config,
the (device, inode, size, mtime, ctime) of every file its fingerprint covers, and open_clip's
version; a changed file or another open_clip makes a new record (and a full load first). The
image side then loads in a background thread while the caller scans and decodes. Anything that
goes wrong falls back to the full load. ``MBM_FAST_START=0`` turns fast starts off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mbm.atomic import write_text
from mbm.models.checkpoints import CONFIG_FILE, WEIGHTS_FILE, checkpoint_files, read_checkpoint_config
from mbm.models.encoder import Background, Encoder, Parts
from mbm.models.fingerprint import cache_path, stat_key
from mbm.models.fusion_config import FusionConfig
from mbm.models.loading import fewer_collections
from mbm.models.preprocess import pixel_transform
from mbm.models.specs import spec_folder

log = logging.getLogger(__name__)

ENV_SWITCH = "MBM_FAST_START"
FORMAT = 1
PROBE_MIN_COSINE = 0.99999


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def _open_clip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return ""


def record_path(spec: str) -> Path | None:
    """Where the start record of ``spec`` lives, or None for specs that are not checkpoint folders."""
    folder = spec_folder(spec)
    if folder is None:
        return None
    h = hashlib.sha256(f"mbm-start-{FORMAT}\n{spec}\n{_open_clip_version()}\n".encode())
    h.update((folder / CONFIG_FILE).read_bytes())
    for path in checkpoint_files(folder):
        h.update(f"\n{path}:{stat_key(path)}".encode())
    return cache_path().parent / "starts" / f"{h.hexdigest()[:24]}.json"


def read_record(spec: str) -> dict[str, Any] | None:
    try:
        path = record_path(spec)
        record = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def write_record(spec: str, identity: dict[str, Any], engine: dict[str, Any] | None = None) -> None:
    """Record (or extend) the start record of ``spec``: ``identity`` from a full load, ``engine`` once checked."""
    try:
        path = record_path(spec)
        if path is None:
            return
        old = read_record(spec) or {}
        engines = dict(old.get("engines", {}) if old.get("fingerprint") == identity["fingerprint"] else {})
        engines.update(engine or {})
        write_text(path, json.dumps({**identity, "format": FORMAT, "spec": spec, "engines": engines}, indent=1))
    except (OSError, ValueError) as e:  # a read-only cache: the next run loads fully again
        log.debug("start record of %s not written: %s", spec, e)


def identity_of(encoder: Encoder, preprocess_cfg: dict[str, Any]) -> dict[str, Any]:
    """What a fast start needs to know of a fully loaded encoder."""
    fusion = encoder.heads.get("fusion")
    return {
        "fingerprint": encoder.fingerprint,
        "dim": encoder.dim,
        "image_size": encoder.image_size,
        "description": encoder.description,
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()},
        "fusion": fusion.cfg.to_dict() if fusion is not None else None,
        "logit_scale": encoder.logit_scale,
    }


def vit_agrees(encoder: Encoder, folder: Path) -> bool:
    """Whether mbm's own ViT, with the checkpoint's weights, gives the loaded model's embeddings on a probe."""
    import torch

    from mbm.models import vit
    from mbm.models.image_engines import TorchImage

    model_cfg = read_checkpoint_config(folder).get("model_cfg") or {}
    if not vit.supported(model_cfg) or not (folder / WEIGHTS_FILE).is_file():
        return False
    try:
        tower = vit.build(model_cfg, vit.read_visual_state(folder / WEIGHTS_FILE), encoder.torch_dtype)
        probe = torch.Generator().manual_seed(0)
        pixels = torch.randn(2, 3, encoder.image_size, encoder.image_size, generator=probe)
        got = TorchImage(tower.to(encoder.device), encoder.fusion, encoder.device, encoder.torch_dtype).encode(pixels)
        want = encoder.encode_image_batch(pixels)
    except Exception as e:  # noqa: BLE001 - no fast start, the full load still works
        log.debug("own ViT does not build for %s: %s", folder, e)
        return False
    cosine = float((got[0] * want[0]).sum(1).min())
    if want[1] is not None and got[1] is not None:
        a, b = (x.reshape(len(x), -1).astype("float32") for x in (got[1], want[1]))
        cosine = min(cosine, float(((a * b).sum(1) / ((a * a).sum(1) * (b * b).sum(1)) ** 0.5).min()))
    return cosine >= PROBE_MIN_COSINE


def vit_tower(encoder: Encoder, folder: Path) -> Any:
    """mbm's own ViT holding the loaded fp32 model's image weights (shared, not copied): what the image side's
    ONNX export traces (open_clip's tower takes options the export does not need)."""
    from mbm.models import vit

    state = {f"visual.{k}": v for k, v in encoder.model.visual.state_dict().items()}
    return vit.build(read_checkpoint_config(folder)["model_cfg"], state, encoder.torch_dtype)


def _onnx_engine(record: dict[str, Any], precision: str) -> Path | None:
    from mbm.models.image_engines import ONNX_SWITCH, checked_export, image_side_path

    if "onnx" not in record["engines"] or precision != "fp32" or os.environ.get(ONNX_SWITCH, "1") == "0":
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    path = image_side_path(record["fingerprint"], int(record["image_size"]))
    return path if checked_export(path) else None


def start(spec: str, device: str, precision: str, full: Callable[[], Parts]) -> Encoder | None:
    """A fast-started encoder for ``spec`` when its start record allows one here, else None (load it fully)."""
    if not enabled() or device != "cpu" or precision not in ("fp32", "bf16"):
        return None
    with contextlib.suppress(OSError, ValueError, KeyError):
        record = read_record(spec)
        folder = spec_folder(spec)
        pixels = pixel_transform(record["preprocess"]) if record else None
        if record is None or folder is None or pixels is None:
            return None
        onnx = _onnx_engine(record, precision)
        if onnx is None and not record["engines"].get("vit"):
            return None
        fusion_cfg = FusionConfig(**record["fusion"]) if record.get("fusion") else None
        timings: dict[str, float] = {}
        heads = functools.lru_cache(maxsize=1)(lambda: _heads(folder))  # one copy for the image side and the encoder
        if onnx is not None:
            load = functools.partial(_load_onnx, onnx, timings)
        else:
            load = functools.partial(_load_vit, folder, precision, heads, timings)
        enc = Encoder.started(
            spec,
            device,
            precision,
            record["fingerprint"],
            int(record["dim"]),
            int(record["image_size"]),
            str(record.get("description", "")),
            engine=Background(load, "mbm-model-load"),
            pixels=pixels,
            full=full,
            heads=heads,
            fusion_cfg=fusion_cfg,
            text=lambda: _text_tower(record["fingerprint"]),
            text_cached=lambda: _text_tower_cached(record["fingerprint"]),
        )
        enc.load_seconds = timings  # filled in by the background load
        enc.logit_scale_value = record.get("logit_scale")
        return enc
    return None


def _load_onnx(path: Path, timings: dict[str, float]) -> Any:
    t0 = time.perf_counter()
    with fewer_collections():
        import onnxruntime  # noqa: F401 - its import is most of the start: timed on its own

    t1 = time.perf_counter()
    from mbm.models.image_engines import OnnxImage

    engine = OnnxImage(path)
    timings.update(imports=t1 - t0, build=time.perf_counter() - t1, weights=0.0)
    return engine


def _load_vit(folder: Path, precision: str, heads: Callable[[], dict[str, Any]], timings: dict[str, float]) -> Any:
    t0 = time.perf_counter()
    with fewer_collections():
        import torch

        from mbm.models import vit
        from mbm.models.image_engines import TorchImage

    t1 = time.perf_counter()
    state = vit.read_visual_state(folder / WEIGHTS_FILE)
    t2 = time.perf_counter()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tower = vit.build(read_checkpoint_config(folder)["model_cfg"], state, dtype)
    fusion = heads().get("fusion")
    timings.update(imports=t1 - t0, weights=t2 - t1, build=time.perf_counter() - t2)
    return TorchImage(tower, fusion, "cpu", dtype)


def _heads(folder: Path) -> dict[str, Any]:
    from mbm.models.heads import load_heads

    return load_heads(folder, "cpu")


def _text_tower(fingerprint: str) -> Any:
    from mbm.models.query_encoder import cached_query_encoder

    return cached_query_encoder(fingerprint)


def _text_tower_cached(fingerprint: str) -> bool:
    from mbm.models.query_encoder import has_cached_query_encoder

    return has_cached_query_encoder(fingerprint)
