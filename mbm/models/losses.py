"""Training losses: symmetric InfoNCE, image-text matching, classification, and hard-negative mining.

All functions take and return plain tensors so that the training loop, tests and
benchmarks can call them without any model around.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: a temperature below 0.01 makes training unstable


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    same: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs; row i of each input is a positive pair.

    ``logit_scale`` is open_clip's learnable log-temperature (the loss uses ``exp``,
    clamped to 100). ``same`` (B, B, bool) marks other pairs that share a caption or
    group with row i: they are removed from the negatives, since pushing apart two
    copies of "red car" only teaches noise.
    """
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    scale = logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * image_emb @ text_emb.T
    if same is not None:
        off_diagonal = same & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def itm_loss(fusion_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of match logits against 1 (matching pair) / 0 (negative pair)."""
    return F.binary_cross_entropy_with_logits(fusion_logits.float(), labels.to(fusion_logits.device).float())


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy over the items that have a label; 0 (with a graph) when none has one."""
    labels = labels.to(logits.device)
    if not bool((labels != ignore_index).any()):
        # cross_entropy would return NaN (0/0); a zero that keeps the graph lets callers sum losses blindly
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def hard_negatives(
    sim: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    same: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one hard negative per image and per text from in-batch similarities.

    ``sim`` (B, B) holds image-to-text logits with the positives on the diagonal (pass
    the scaled logits: the softmax over them is the sampling distribution, as in
    ALBEF). ``same`` (B, B, bool) marks further pairs that must never be drawn
    (duplicate captions, same group). Returns ``(neg_text_for_image, neg_image_for_text)``,
    each (B,) long; -1 where a row has no allowed negative (e.g. a batch of one).
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (B, B) matrix, got shape {tuple(sim.shape)}")
    sim = sim.detach().float()
    excluded = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    if same is not None:
        excluded = excluded | same.to(sim.device)
    return _sample_rows(sim, excluded, generator), _sample_rows(sim.T, excluded.T, generator)


def _sample_rows(logits: torch.Tensor, excluded: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    valid = ~excluded.all(dim=1)
    # rows with nothing allowed get a dummy uniform row (softmax of all -inf is NaN) and -1 afterwards
    logits = logits.masked_fill(excluded, float("-inf")).masked_fill(~valid[:, None], 0.0)
    probs = torch.softmax(logits, dim=1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    picked = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
    return torch.where(valid, picked, torch.full_like(picked, -1))


def clamp_logit_scale_(logit_scale: torch.nn.Parameter) -> None:
    """Keep the stored log-temperature in [0, ln 100] after an optimizer step (open_clip does the same)."""
    with torch.no_grad():
        logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))


def distillation_loss(
    image_emb: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Knowledge distillation from an image classifier into the shared space.

    The student's class distribution is the softmax over its cosine similarities to the
    classes' text embeddings (``class_emb``, normalized rows, scaled like the contrastive
    logits); the loss is KL(teacher || student) at ``temperature``, times T^2 (Hinton et
    al.) so that its gradient scale does not depend on T.
    """
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    student = scale * F.normalize(image_emb.float(), dim=-1) @ class_emb.float().T
    t = float(temperature)
    target = torch.softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(F.log_softmax(student / t, dim=-1), target, reduction="batchmean") * t * t
