"""``Run``: the mutable pieces of one training run, and ``build_run``, which builds them from a ``TrainConfig``.

A run starts from a fresh config, a checkpoint folder (fine-tuning) or its own
``out_dir/last`` (``resume``); it reads its rows from the manifest, adds the heads the
loss weights ask for, freezes the towers the config keeps, and builds the training set
(pictures, or cached trunk features) and the optimizer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mbm.errors import UsageError
from mbm.models.build import (
    create_from_config,
    is_checkpoint_dir,
    load_checkpoint,
    load_model_cfg,
    read_checkpoint_config,
)
from mbm.models.fusion import FusionConfig, FusionModel
from mbm.models.heads import ClassifierHead
from mbm.models.tokens import image_tokens, supports_hidden_cache, text_tokens
from mbm.train.augment import train_transform
from mbm.train.config import TrainConfig
from mbm.train.data import PairDataset, label_index, load_rows
from mbm.train.features import preprocess_of
from mbm.train.text_cache import TextCache
from mbm.train.trainer_state import STATE_JSON, load_trainer_state

if TYPE_CHECKING:
    from mbm.train.cached_training import CachedPairs

log = logging.getLogger(__name__)


class Run:
    """The mutable pieces of one run, built once by ``build_run``."""

    model: Any
    fusion: FusionModel | None
    classifier: ClassifierHead | None
    optimizer: torch.optim.Optimizer
    model_cfg: dict
    preprocess_val: Any
    tokenizer: Any
    train_set: PairDataset | CachedPairs
    val_rows: list
    text_cache: TextCache | None
    val_cache: Any = None  # cached val features (feature_cache runs)
    itm_rows: int = 0
    step: int = 0
    best: float = -1.0
    steps_per_epoch: int = 0


def build_run(cfg: TrainConfig, device: str) -> Run:
    """Model, heads, data, optimizer (and, when resuming, the saved optimizer state and step) of a run."""
    run = Run()
    run.itm_rows = cfg.itm_rows
    out = Path(cfg.out_dir)
    resume_from = out / "last" if cfg.resume and (out / "last" / STATE_JSON).is_file() else None
    heads = _load_model(run, cfg, resume_from)
    train_rows = _load_rows(run, cfg)
    labels = _add_heads(run, cfg, heads, train_rows)
    for module in (run.model, run.fusion, run.classifier):
        if module is not None:
            module.to(device)
    _freeze_towers(run, cfg)
    _add_training_set(run, cfg, train_rows, labels)
    run.steps_per_epoch = len(train_rows) // cfg.batch_size
    run.optimizer = torch.optim.AdamW(_param_groups(run, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    run.text_cache = _text_cache(run, cfg, device)
    if resume_from is not None:
        load_trainer_state(run, resume_from)
        log.info("resuming %s from step %d", cfg.out_dir, run.step)
    return run


def _load_model(run: Run, cfg: TrainConfig, resume_from: Path | None) -> dict:
    """Set the model, its preprocessing, tokenizer and config; returns the heads a checkpoint brought along."""
    source = Path(cfg.model).expanduser()
    torch.manual_seed(cfg.seed)  # the fresh image tower and heads start from the same weights every run
    run.model, run.preprocess_val, run.tokenizer, heads, run.model_cfg = _build_model(
        cfg, resume_from or (source if is_checkpoint_dir(source) else None)
    )
    return heads


def _load_rows(run: Run, cfg: TrainConfig) -> list[dict]:
    """The training rows (returned) and the validation rows (``run.val_rows``) of the manifest."""
    train_rows, run.val_rows = (
        load_rows(cfg.manifest, "train", cfg.sources),
        load_rows(cfg.manifest, "val", cfg.sources),
    )
    if len(train_rows) < cfg.batch_size:
        raise UsageError(f"{cfg.manifest} has {len(train_rows)} training pairs, fewer than batch_size={cfg.batch_size}")
    return train_rows


def _add_heads(run: Run, cfg: TrainConfig, heads: dict, train_rows: list[dict]) -> dict[str, int]:
    """The fusion and classifier heads (a checkpoint's, or fresh ones the loss weights ask for); returns the
    classifier's label -> class index."""
    labels = label_index(train_rows) if cfg.w_cls > 0 else {}
    embed_dim, text_dim, image_dim = _token_dims(run.model, run.tokenizer)
    run.fusion = heads.get("fusion") or (
        FusionModel(FusionConfig(**{**cfg.fusion, "text_dim": text_dim, "image_dim": image_dim}))
        if cfg.w_itm > 0
        else None
    )
    run.classifier = heads.get("classifier") or (ClassifierHead(embed_dim, list(labels)) if labels else None)
    if run.classifier is not None:
        labels = {name: i for i, name in enumerate(run.classifier.labels)}
    return labels


def _freeze_towers(run: Run, cfg: TrainConfig) -> None:
    if cfg.freeze_text:
        run.model.lock_text_tower()
    if cfg.freeze_image or cfg.image_trainable_blocks:
        # not freeze_bn_stats: open_clip swaps in torchvision's FrozenBatchNorm2d, which drops the activation of timm's
        # BatchNormAct2d (EfficientNet's ReLU6); the tower runs in eval mode instead (step.set_train_mode)
        run.model.lock_image_tower(unlocked_groups=cfg.image_trainable_blocks)


def _add_training_set(run: Run, cfg: TrainConfig, train_rows: list[dict], labels: dict[str, int]) -> None:
    """Augmented pictures, or (``feature_cache``) cached trunk features together with the val features."""
    if cfg.feature_cache:
        from mbm.train.cached_training import cached_sets

        run.train_set, run.val_cache = cached_sets(run, cfg, train_rows, labels)
        return
    pp = preprocess_of(run.model)
    transform = train_transform(pp["size"], pp["mean"], pp["std"], cfg.augment)
    run.train_set = PairDataset(train_rows, transform, run.tokenizer, labels, seed=cfg.seed, image_size=pp["size"])


def _text_cache(run: Run, cfg: TrainConfig, device: str) -> TextCache | None:
    """A frozen HF text tower's hidden states of every caption, once (kept beside a feature cache)."""
    if not (cfg.freeze_text and cfg.cache_text and supports_hidden_cache(run.model)):
        return None
    text_store = None
    if cfg.feature_cache:
        from mbm.train.cached_training import TextStore

        text_store = TextStore(cfg.feature_cache, run.model_cfg.get("text_cfg", {}))
    return TextCache(run.model, run.train_set.tokens, device, store=text_store)


def _token_dims(model: Any, tokenizer: Any) -> tuple[int, int, int]:
    """(embed dim, text token dim, image token dim), probed with one dummy pair."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    was_training = model.training
    model.eval()  # in train mode the dummy picture would move BatchNorm's running statistics
    with torch.no_grad():
        device = next(model.parameters()).device
        _, img = image_tokens(model, torch.zeros(1, 3, size, size, device=device))
        pooled, txt, _ = text_tokens(model, tokenizer(["x"]).to(device))
    model.train(was_training)
    return pooled.shape[-1], txt.shape[-1], img.shape[-1]


def _build_model(cfg: TrainConfig, folder: Path | None) -> tuple[Any, Any, Any, dict, dict]:
    """(model, preprocess_val, tokenizer, heads, unresolved model cfg): from a checkpoint folder or a fresh config."""
    if folder is not None:
        model, preprocess_val, tokenizer, heads = load_checkpoint(folder)
        return model, preprocess_val, tokenizer, heads, read_checkpoint_config(folder)["model_cfg"]
    model, _, preprocess_val, tokenizer = create_from_config(cfg.model)
    return model, preprocess_val, tokenizer, {}, load_model_cfg(cfg.model)


def _param_groups(run: Run, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on 1-d tensors (norms, biases, logit_scale) and embeddings open_clip names."""
    skip = set(run.model.no_weight_decay())
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for prefix, module in (("", run.model), ("fusion.", run.fusion), ("classifier.", run.classifier)):
        for name, p in module.named_parameters() if module is not None else ():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or prefix + name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
