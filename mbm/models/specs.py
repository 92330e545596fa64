"""Model specs: what a ``--model`` string names, in its one spelling, and which model a new collection gets.

A spec is one of
- a config shipped in ``mbm/models/configs`` (``mbm-tiny``: random weights, for tests only),
- a model bundled with mbm (``mbm/models/bundled/<name>``, open_clip local-dir format),
- a local checkpoint folder (open_clip local-dir: ``open_clip_config.json`` + weights),
- an open_clip name with a pretrained tag or weights file (``ViT-B-32-256:datacomp_s34b_b86k``),
  or ``NAME:random`` for the architecture with random weights (speed benchmarks only).

Nothing here imports torch; open_clip only to ask whether pretrained weights are cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbm.errors import ModelError
from mbm.models.loading import environ_kept, network_reachable, offline_reason, pretrained_weights

CONFIG_DIR = Path(__file__).parent / "configs"
BUNDLED_DIR = Path(__file__).parent / "bundled"
PRETRAINED_DEFAULT = "ViT-B-32-256:datacomp_s34b_b86k"


@dataclass(frozen=True)
class ModelInfo:
    """One loadable model, as listed by ``list_models``."""

    spec: str
    kind: str  # "architecture", "bundled", "open_clip pretrained"
    weights_present: bool
    note: str = ""


def import_open_clip() -> Any:
    """open_clip, with mbm's own configs registered; the host's environment left as it was."""
    try:
        with environ_kept():
            import open_clip
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ModelError(f"open_clip cannot be imported ({e}) — run: pip install open_clip_torch") from e
    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def is_local_dir(path: Path) -> bool:
    return (path / "open_clip_config.json").is_file()


def weights_file(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if is_local_dir(p) and weights_file(p))


def is_name(spec: str) -> bool:
    """A plain name (``mbm-tiny``), not a path: only names pick bundled models and shipped configs."""
    return bool(spec) and "/" not in spec and os.sep not in spec and spec not in (".", "..")


def config_file(spec: str) -> Path | None:
    """The shipped config a spec names (``mbm-tiny`` -> ``configs/mbm-tiny.json``), or None."""
    path = CONFIG_DIR / f"{spec}.json"
    return path if is_name(spec) and path.is_file() else None


def spec_folder(spec: str) -> Path | None:
    """The checkpoint folder a spec names (a bundled model or a local-dir folder), or None."""
    if is_name(spec) and is_local_dir(BUNDLED_DIR / spec):
        return BUNDLED_DIR / spec
    path = Path(spec).expanduser()
    return path if path.is_dir() and is_local_dir(path) else None


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))  # normalizes "./x" and "a/../x"; keeps symlinks


def normalize_spec(spec: str) -> str:
    """The spec's one spelling: a local checkpoint folder or a ``NAME:/path/weights`` file as an
    absolute path; bundled names, config names and ``NAME:TAG`` unchanged. Imports no torch."""
    if (is_name(spec) and is_local_dir(BUNDLED_DIR / spec)) or config_file(spec):
        return spec
    if spec_folder(spec) is not None:
        return _absolute(spec)
    name, sep, tag = spec.partition(":")
    if sep and name and tag and ("/" in tag or tag.startswith("~") or os.path.isfile(os.path.expanduser(tag))):
        return f"{name}:{_absolute(tag)}"
    return spec


def pretrained_cached(name: str, tag: str) -> bool:
    return pretrained_weights(import_open_clip(), name, tag) is not None


def choose_default_model() -> tuple[str, str]:
    """``(spec, reason)``: the model a new collection gets when none is named, and why.

    Probes the network (one connect, at most 1 s) only when the default weights are not
    cached and neither MBM_OFFLINE nor HF_HUB_OFFLINE is set. Logs nothing: the caller
    tells the user the reason once.
    """
    if os.environ.get("MBM_MODEL"):
        return normalize_spec(os.environ["MBM_MODEL"]), "MBM_MODEL is set"
    name, tag = PRETRAINED_DEFAULT.split(":")
    if pretrained_cached(name, tag):
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


def bundled_hint() -> str:
    bundled = bundled_models()
    return f", or use the bundled offline model: --model {bundled[0]}" if bundled else ""
