"""``TrainConfig``: everything a training run depends on, and how its open choices are settled.

``resolve_frozen_towers`` decides ``freeze_text=None`` / ``freeze_image=None`` from the
starting weights; ``device_and_autocast`` checks the remaining choices and picks the
device and precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from mbm.errors import UsageError
from mbm.models.build import is_checkpoint_dir, load_model_cfg, read_checkpoint_config
from mbm.models.image_towers import mbm_section

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``out_dir/config.json``."""

    manifest: str
    out_dir: str
    model: str = "mbm-lite0"  # a config name/JSON file (fresh model) or a checkpoint folder (fine-tune)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    w_contrastive: float = 1.0
    w_itm: float = 1.0
    w_cls: float = 0.5
    # LiT: keep the pretrained text transformer (its projection still trains). None: freeze a pretrained tower
    # (a Hugging Face one such as MiniLM, or a checkpoint's), train a freshly initialised open_clip one
    freeze_text: bool | None = None
    # None: frozen when the image tower starts pretrained (a config's packaged weights)
    freeze_image: bool | None = None
    augment: float = 0.5  # strength of mbm.train.augment (0 = none); 0.5 measured best (bundled model card)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on CPU (bf16 is slower without AMX)
    val_every: int = 1  # epochs between validations (0 = never)
    num_workers: int = 0
    max_steps: int | None = None  # stop early (tests); the LR schedule still spans all epochs
    resume: bool = False
    log_every: int = 10
    # FusionConfig fields (text_dim/image_dim are filled in); 128 wide and 16 text tokens keep ITM to ~1/3 of
    # a CPU step for mbm-small (256 wide: 2x slower); on a GPU the FusionConfig defaults cost little
    # image_grid 3: a 7x7 CNN map (or a ViT's patch grid) is pooled to 9 tokens: 5x less to cache and to store per item
    fusion: dict = field(
        default_factory=lambda: {"width": 128, "layers": 2, "heads": 4, "max_text_tokens": 16, "image_grid": 3}
    )
    cache_text: bool = True  # frozen HF text: compute each caption's hidden states once
    val_rerank_top: int = 0  # also report fusion re-ranked R@K on validation (costs time)
    # the validation metric that picks best/: mean_recall, or rerank_mean (needs val_rerank_top)
    select_on: str = "mean_recall"
    sources: list = field(default_factory=list)  # train/validate on these sources only; "-name" leaves one out
    # knowledge distillation from the image tower's ImageNet classifier (models with a class-bridge head only)
    w_kd: float = 1.0
    kd_temperature: float = 2.0
    # a folder of cached frozen-trunk features (mbm.train.features): filled on first use, then each epoch runs the
    # heads only; views 0..views-1 are trained on (0 = the picture as indexed, 1.. = augmented)
    feature_cache: str | None = None
    views: int = 1
    image_trainable_blocks: int = 0  # fine-tune the image trunk's last N block groups (no feature cache then)
    # score ITM pairs for the first N rows of a batch only (0 = all; negatives are still mined over the whole batch):
    # the fusion head costs 3 forward passes per row, and a big contrastive batch need not pay it for every row
    itm_rows: int = 0


def resolve_frozen_towers(cfg: TrainConfig) -> TrainConfig:
    """Settle ``freeze_text=None`` / ``freeze_image=None``: frozen when the tower starts from trained weights."""
    model_cfg = (
        read_checkpoint_config(cfg.model)["model_cfg"] if is_checkpoint_dir(cfg.model) else load_model_cfg(cfg.model)
    )
    if cfg.freeze_image is None:
        pretrained_image = bool(mbm_section(model_cfg).get("image_weights")) and not cfg.image_trainable_blocks
        cfg = replace(cfg, freeze_image=pretrained_image)
    pretrained = is_checkpoint_dir(cfg.model) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if cfg.freeze_text is None:
        return replace(cfg, freeze_text=pretrained)
    if cfg.freeze_text and not pretrained:
        log.warning(
            "the text tower of %s starts from random weights and freeze_text keeps it so; "
            "train it (--train-text) unless that is the point",
            cfg.model,
        )
    return cfg


def device_and_autocast(cfg: TrainConfig) -> tuple[str, bool]:
    """(device, bf16 autocast?) of the run; a choice that cannot work is a UsageError naming it."""
    device = cfg.device if cfg.device not in ("", "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but no CUDA GPU is visible — use device='cpu'")
    if cfg.select_on not in ("mean_recall", "rerank_mean") or (
        cfg.select_on == "rerank_mean" and cfg.val_rerank_top <= 0
    ):
        raise UsageError(
            f"select_on={cfg.select_on!r} — use mean_recall, or rerank_mean together with val_rerank_top > 0"
        )
    if cfg.feature_cache and (cfg.image_trainable_blocks or not cfg.freeze_image):
        raise UsageError(
            "a feature cache needs a frozen image trunk — drop --feature-cache, or --image-trainable-blocks"
        )
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"precision {cfg.precision!r} is not supported for training — use auto, fp32 or bf16")
    return device, cfg.precision == "bf16" or (cfg.precision == "auto" and device.startswith("cuda"))
