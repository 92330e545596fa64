"""One optimisation step of a run: the learning-rate schedule, the losses of a batch, and the update.

Loss = w_contrastive * InfoNCE(image, text) + w_itm * BCE(fusion(pairs)) + w_cls * CE(classifier(image))
+ w_kd * KD(image tower's ImageNet classifier), with ITM negatives mined from in-batch similarities.
Every random draw of a step is a function of (seed, step), so a resumed run repeats the losses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mbm.models.fusion import FusionModel
from mbm.models.image_towers import ClassBridgeHead
from mbm.models.losses import (
    clamp_logit_scale_,
    classification_loss,
    contrastive_loss,
    distillation_loss,
    hard_negatives,
    itm_loss,
)
from mbm.models.tokens import hf_pool, image_tokens, is_hf_text, text_pad_id, text_tokens, trim_padding
from mbm.train.config import TrainConfig
from mbm.train.data import Batch
from mbm.train.features import trunk_features
from mbm.train.run import Run


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * base_lr * (1 + math.cos(math.pi * progress))


class _ImageSide(NamedTuple):
    """A batch's image embeddings, the image tokens the fusion head reads, and for distillation the class-bridge
    head with the trunk's pooled features it reads."""

    emb: torch.Tensor
    tokens: torch.Tensor | None
    teacher: tuple[ClassBridgeHead, torch.Tensor] | None = None


def _encode_image(run: Run, cfg: TrainConfig, batch: Batch, device: str, with_tokens: bool) -> _ImageSide:
    head = getattr(run.model.visual, "head", None)
    kd_head = head if cfg.w_kd > 0 and isinstance(head, ClassBridgeHead) else None
    if batch.image_tokens is not None:  # cached trunk features: only the head runs
        pooled, tokens = batch.pixels.to(device).float(), batch.image_tokens.to(device).float()
        assert head is not None, "trunk features are only cached for image towers with a trunk and a head"
        return _ImageSide(head(pooled), tokens, (kd_head, pooled) if kd_head is not None else None)
    if kd_head is not None:
        pooled, tokens = trunk_features(run.model, batch.pixels.to(device, non_blocking=True), grid=0)
        return _ImageSide(kd_head(pooled), tokens, (kd_head, pooled))
    pixels = batch.pixels.to(device, non_blocking=True)
    if with_tokens:
        emb, tokens = image_tokens(run.model, pixels)
        return _ImageSide(emb, tokens)
    return _ImageSide(run.model.encode_image(pixels), None)


def _encode_text(run: Run, batch: Batch, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if run.text_cache is not None:
        hidden, mask = run.text_cache.get(batch.caption_ids)
        return hf_pool(run.model, hidden, mask), hidden, mask
    ids = batch.token_ids
    if is_hf_text(run.model):  # HF towers take any length: drop all-padding columns (CLIP's table is fixed)
        ids = trim_padding(ids, text_pad_id(run.model))
    return text_tokens(run.model, ids.to(device))


def _itm(
    fusion: FusionModel,
    run: Run,
    img: torch.Tensor,
    txt: torch.Tensor,
    tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    same: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """ITM loss over B positives + B hard-negative texts + B hard-negative images."""
    txt_tok, mask, img_tok = tokens
    with torch.no_grad():
        scale = run.model.logit_scale.exp().clamp(max=100)
        sim = (
            scale
            * torch.nn.functional.normalize(img.float(), dim=-1)
            @ torch.nn.functional.normalize(txt.float(), dim=-1).T
        )
    neg_text, neg_image = hard_negatives(sim, gen, same=same)  # mined over the whole batch
    n = min(len(sim), run.itm_rows) if run.itm_rows > 0 else len(sim)  # scored for the first n rows only
    neg_text, neg_image = neg_text[:n], neg_image[:n]
    b = torch.arange(n, device=sim.device)
    ok_t, ok_i = neg_text >= 0, neg_image >= 0
    text_index = torch.cat([b, neg_text[ok_t], b[ok_i]])
    image_index = torch.cat([b, b[ok_t], neg_image[ok_i]])
    labels = torch.cat([torch.ones(len(b)), torch.zeros(len(text_index) - len(b))]).to(sim.device)
    logits = fusion(txt_tok, mask, img_tok, text_index=text_index, image_index=image_index)
    return itm_loss(logits, labels)


def losses(run: Run, cfg: TrainConfig, batch: Batch, device: str, step: int) -> dict[str, torch.Tensor]:
    """Each loss of one batch, and their weighted sum ``total``."""
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout draws depend on the step only
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    fusion = run.fusion if cfg.w_itm > 0 else None
    classifier = run.classifier if cfg.w_cls > 0 else None
    image = _encode_image(run, cfg, batch, device, with_tokens=fusion is not None)
    img = image.emb
    txt, txt_tok, mask = _encode_text(run, batch, device)
    same = batch.same().to(device)
    zero = img.sum() * 0.0
    # a zero-weight loss is not computed at all: its zero gradients would still let AdamW decay the weights it reaches
    out = {
        "contrastive": contrastive_loss(img, txt, run.model.logit_scale, same=same) if cfg.w_contrastive > 0 else zero
    }
    out["itm"] = _itm(fusion, run, img, txt, (txt_tok, mask, image.tokens), same, gen) if fusion is not None else zero
    out["cls"] = (
        classification_loss(classifier(img.float()), batch.labels.to(device)) if classifier is not None else zero
    )
    out["kd"] = zero
    if image.teacher is not None:
        head, pooled = image.teacher
        out["kd"] = distillation_loss(
            img, head.teacher_logits(pooled), head.get_buffer("class_emb"), run.model.logit_scale, cfg.kd_temperature
        )
    out["total"] = (
        cfg.w_contrastive * out["contrastive"] + cfg.w_itm * out["itm"] + cfg.w_cls * out["cls"] + cfg.w_kd * out["kd"]
    )
    return out


def set_train_mode(run: Run, cfg: TrainConfig, training: bool) -> None:
    """Train or eval mode for the model and heads; frozen towers stay in eval mode while training."""
    for module in (run.model, run.fusion, run.classifier):
        if module is not None:
            module.train(training)
    if training and cfg.freeze_text:  # a frozen tower must not apply dropout
        (run.model.text if hasattr(run.model, "text") else run.model.transformer).eval()
    if training and (cfg.freeze_image or cfg.image_trainable_blocks):  # BatchNorm keeps its ImageNet statistics
        run.model.visual.eval()


def train_step(run: Run, cfg: TrainConfig, batch: Batch, device: str, autocast: bool) -> dict[str, float]:
    """One update of every trainable weight; returns the batch's losses and the learning rate used."""
    lr = lr_at(run.step, cfg.lr, cfg.warmup_steps, run.steps_per_epoch * cfg.epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=autocast):
        batch_losses = losses(run, cfg, batch, device, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    batch_losses["total"].backward()
    if cfg.grad_clip > 0:
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.optimizer.step()
    clamp_logit_scale_(run.model.logit_scale)
    run.step += 1
    return {**{k: float(v.detach()) for k, v in batch_losses.items()}, "lr": lr}
