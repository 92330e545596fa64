"""One factory: ``load_model(spec) -> Encoder``.

A spec is one of
- a config shipped in ``mbm/models/configs`` (``mbm-tiny``: random weights, for tests only),
- a model bundled with mbm (``mbm/models/bundled/<name>``, open_clip local-dir format),
- a local checkpoint folder (open_clip local-dir: ``open_clip_config.json`` + weights),
- an open_clip name with a pretrained tag or weights file (``ViT-B-32-256:datacomp_s34b_b86k``),
  or ``NAME:random`` for the architecture with random weights (speed benchmarks only).

torch and open_clip are imported lazily so that commands which never encode stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from mbm.errors import ModelError, UsageError

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


def _sampled_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hash size + head + middle + tail: identifies a weights file without reading 600 MB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(offset)
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


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

    @property
    def _dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def encode_image_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a preprocessed batch ``(N, 3, H, W)``."""
        import torch

        with torch.inference_mode():
            out = self.model.encode_image(pixels.to(self.device, self._dtype, non_blocking=True))
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_image_tensors(torch.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
                out = self.model.encode_text(tokens)
                chunks.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks)


def _import_open_clip() -> Any:
    # Decide offline-ness before huggingface_hub reads its constants: a cached file loads at
    # once, a missing one fails in milliseconds instead of a 47-second retry loop.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ModelError(f"open_clip cannot be imported ({e}) — run: pip install open_clip_torch") from e
    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def _network_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    if os.environ.get("MBM_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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


def _pretrained_cached(name: str, tag: str) -> bool:
    open_clip = _import_open_clip()
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg or not cfg.get("hf_hub"):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(cfg["hf_hub"].strip("/").split("/")[:2])
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo_id, fname)
            if isinstance(hit, str):
                return True
    except Exception:  # noqa: BLE001 - any cache-probe failure means "not cached"
        return False
    return False


def default_model_spec() -> str:
    """The model a new collection gets when none is named."""
    if os.environ.get("MBM_MODEL"):
        return os.environ["MBM_MODEL"]
    name, tag = PRETRAINED_DEFAULT.split(":")
    if _pretrained_cached(name, tag) or _network_reachable():
        return PRETRAINED_DEFAULT
    bundled = bundled_models()
    if bundled:
        log.warning(
            "no pretrained CLIP weights cached and no network: using the bundled offline model %r "
            "(name another with --model, e.g. --model %s once it can be downloaded)",
            bundled[0],
            PRETRAINED_DEFAULT,
        )
        return bundled[0]
    raise ModelError(
        f"no model is available offline: {PRETRAINED_DEFAULT} is not cached and the network is "
        "unreachable — pass --model /path/to/checkpoint (an open_clip local-dir folder with "
        "open_clip_config.json + open_clip_model.safetensors), or set MBM_MODEL"
    )


def load_model(spec: str | None = None, *, device: str | None = None, precision: str | None = None) -> Encoder:
    """Load an encoder from a spec (see module docstring); ``None`` means the default model."""
    started = time.perf_counter()
    import torch

    open_clip = _import_open_clip()
    imported = time.perf_counter()
    spec = spec or default_model_spec()
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    heads: dict[str, Any] = {}
    folder = _spec_folder(spec)
    if folder is not None:  # mbm's own checkpoints: packaged text towers and fusion/classifier heads
        from mbm.models.build import load_checkpoint

        weights = _weights_file(folder)
        if weights is None:
            raise ModelError(f"checkpoint folder {folder} has no open_clip_model.safetensors — retrain or copy the weights there")
        model, preprocess, tokenizer, heads = load_checkpoint(folder)
        fingerprint, description = f"file:{_sampled_sha256(weights)}", f"checkpoint {folder}"
    else:
        model, preprocess, tokenizer, fingerprint, description = _create(open_clip, spec)
    model.eval().to(device)
    if precision != "fp32":
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    for head in heads.values():
        head.eval().to(device)
    encoder = Encoder(spec, model, preprocess, tokenizer, device, precision, fingerprint, dim, image_size, description, heads)
    encoder.load_seconds = {"imports": imported - started, "model_load": time.perf_counter() - imported}
    return encoder


def _spec_folder(spec: str) -> Path | None:
    if (BUNDLED_DIR / spec).is_dir() and _is_local_dir(BUNDLED_DIR / spec):
        return BUNDLED_DIR / spec
    path = Path(spec).expanduser()
    return path if path.is_dir() and _is_local_dir(path) else None


def _create(open_clip: Any, spec: str) -> tuple[Any, Any, Any, str, str]:
    import torch

    if (CONFIG_DIR / f"{spec}.json").is_file() and "pkg:" in (CONFIG_DIR / f"{spec}.json").read_text():
        from mbm.models.build import create_from_config

        torch.manual_seed(0)
        model, _, preprocess, tokenizer = create_from_config(spec)
        digest = hashlib.sha256((CONFIG_DIR / f"{spec}.json").read_bytes()).hexdigest()[:16]
        return model, preprocess, tokenizer, f"init:{digest}", "untrained architecture (tests and training only)"
    if (CONFIG_DIR / f"{spec}.json").is_file():
        torch.manual_seed(0)  # random but reproducible: the same spec gives the same weights
        with _quiet_root_logger():  # open_clip warns "initialized randomly": that is the point here
            model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=None)
        digest = hashlib.sha256((CONFIG_DIR / f"{spec}.json").read_bytes()).hexdigest()[:16]
        return model, preprocess, open_clip.get_tokenizer(spec), f"init:{digest}", "random weights (tests only)"
    name, sep, tag = spec.partition(":")
    if name not in open_clip.list_models():
        known = ", ".join(["mbm-tiny", *bundled_models(), "ViT-B-32-256:datacomp_s34b_b86k", "..."])
        raise ModelError(f"model {spec!r} is not known — use a checkpoint folder or one of: {known} (see `mbm models`)")
    if not sep:
        raise ModelError(f"model {spec!r} has no pretrained tag — use e.g. {name}:{_first_tag(open_clip, name)} (see `mbm models`)")
    if tag == "random":  # the architecture's speed and size without its weights: benchmarks only
        torch.manual_seed(0)
        with _quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        return model, preprocess, open_clip.get_tokenizer(name), f"init:{name}:seed0", "random weights (benchmarks only)"
    if Path(tag).expanduser().is_file():
        path = Path(tag).expanduser()
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(path))
        return model, preprocess, open_clip.get_tokenizer(name), f"file:{_sampled_sha256(path)}", f"{name} weights {path}"
    if not open_clip.get_pretrained_cfg(name, tag):
        raise ModelError(f"pretrained tag {tag!r} is not known for {name} — known tags: {', '.join(open_clip.list_pretrained_tags_by_model(name))}")
    if not _pretrained_cached(name, tag):
        if not _network_reachable():
            raise ModelError(
                f"weights for {spec} are not cached and the network is unreachable — download them on a "
                "connected machine (they are cached under ~/.cache/huggingface) or pass a local checkpoint "
                f"folder with --model{_bundled_hint()}"
            )
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = False
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
    except RuntimeError as e:
        raise ModelError(f"could not load {spec}: {e}") from e
    return model, preprocess, open_clip.get_tokenizer(name), f"openclip:{name}:{tag}", f"open_clip {name} ({tag})"


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _first_tag(open_clip: Any, name: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    return tags[0] if tags else "TAG"


def _bundled_hint() -> str:
    bundled = bundled_models()
    return f", or use the bundled offline model: --model {bundled[0]}" if bundled else ""


@functools.lru_cache(maxsize=1)
def list_models(include_pretrained: bool = True) -> tuple[ModelInfo, ...]:
    """Models that can be named in ``--model``, with whether their weights are present here."""
    rows = [ModelInfo(p.stem, "architecture", True, "random weights: to train with `mbm train`, or for tests; not for search") for p in sorted(CONFIG_DIR.glob("*.json"))]
    rows += [ModelInfo(name, "bundled", True, "trained offline by `mbm train`; see its MODEL_CARD.md") for name in bundled_models()]
    if include_pretrained:
        open_clip = _import_open_clip()
        for name, tag in open_clip.list_pretrained():
            rows.append(ModelInfo(f"{name}:{tag}", "open_clip pretrained", _pretrained_cached(name, tag)))
    return tuple(rows)


def read_local_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "open_clip_config.json").read_text())
