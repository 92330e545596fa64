"""A fusion (re-ranking) head trained for a fixed dual encoder, on that encoder's own mistakes.

``mbm train-fusion BASE MANIFEST --out DIR``: both towers stay frozen; only the fusion head
learns. BASE is any model spec: an mbm checkpoint (its fusion head is the starting point
unless ``--fresh``) or an open_clip model such as a pretrained CLIP, which has no fusion
head of its own.

Why a stage of its own: trained beside the encoders on in-batch negatives, the fusion head
learns to tell a caption's picture from a random picture, which the dual encoder already
does; at search time it only ever sees the dual encoder's top N, pictures that the dual
encoder found similar. Here every caption's negatives are mined from its own top
``mine_top`` by the frozen dual encoder (its positives, every picture that carries the
same caption, left out), and the loss is listwise: softmax cross-entropy over the positive
and ``negatives`` mined candidates, the task re-ranking solves.

The re-ranking order is ``fusion logit + dual_weight * logit_scale * cosine``; after each
epoch ``dual_weight`` is calibrated on the validation split (the value that gives the best
text->image R@1 over the dual encoder's top ``val_top``; 0 is the fusion head alone) and
stored in the head's config. The best epoch by that figure is kept.

Features: with ``feature_cache`` (the folder ``mbm train --feature-cache`` fills) the
trunk's pooled features and token grid are read from it after a check that they
reproduce the model's own on a sample of pictures; otherwise they are computed here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbm.errors import UsageError
from mbm.models.fusion import FusionConfig, FusionModel, pool_image_tokens

log = logging.getLogger(__name__)

DUAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SAMPLE_CHECK = 16  # pictures whose cached features are compared with the model's own
MIN_COSINE = 0.999


@dataclass
class FusionStageConfig:
    base: str
    manifest: str
    out_dir: str
    feature_cache: str | None = None
    epochs: int = 4
    batch_size: int = 64  # captions per step
    negatives: int = 7  # mined candidates scored against each caption's positive
    mine_top: int = 50  # negatives come from the dual encoder's top N of each caption
    random_negatives: int = 1  # plus a few pictures drawn at random, so far-off pictures stay low
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 100
    val_top: int = 50
    fresh: bool = False  # a new fusion head even when BASE has one
    embedding_token: bool = (
        True  # the image embedding joins the image tokens (FusionConfig.embed_dim); BASE's head without it is replaced
    )
    fusion: dict = field(
        default_factory=lambda: {"width": 128, "layers": 2, "heads": 4, "max_text_tokens": 16, "image_grid": 3}
    )
    sources: list[str] | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass
class Side:
    """Frozen features of one split: image embeddings and token grids, caption embeddings and tokens."""

    image_emb: np.ndarray  # (I, D) normalized
    image_tokens: torch.Tensor  # (I, G, C) fp16, pooled to the fusion grid
    text_emb: np.ndarray  # (U, D) normalized, one per distinct caption
    text_tokens: torch.Tensor  # (U, T, Dt) fp16, zero-padded
    text_mask: torch.Tensor  # (U, T) bool
    positives: list[np.ndarray]  # per distinct caption: the image rows that carry it


def _image_side(enc: Any, rows: Sequence[dict], grid: int, cache: str | None) -> tuple[np.ndarray, torch.Tensor]:
    from mbm.models.tokens import image_tokens
    from mbm.train.data import load_eval_image

    head = enc.model.visual.head if hasattr(enc.model.visual, "trunk") else None
    if cache is not None and head is not None:
        got = _cached_image_side(enc, rows, grid, cache)
        if got is not None:
            return got
    emb, tok = [], []
    with torch.inference_mode():
        for s in range(0, len(rows), 64):
            pixels = torch.stack(
                [enc.preprocess(load_eval_image(r["image"], enc.image_size)) for r in rows[s : s + 64]]
            )
            pooled, tokens = image_tokens(enc.model, pixels.to(enc.device))
            emb.append(F.normalize(pooled.float(), dim=-1).cpu())
            tok.append(pool_image_tokens(tokens.float(), grid).to(torch.float16).cpu())
            if s and s % 2048 == 0:
                log.info("features: %d / %d pictures", s, len(rows))
    return torch.cat(emb).numpy(), torch.cat(tok)


def _cached_image_side(enc: Any, rows: Sequence[dict], grid: int, cache: str) -> tuple[np.ndarray, torch.Tensor] | None:
    """Features from a ``mbm.train.features`` cache, when they reproduce the model's own on a sample."""
    from mbm.models.tokens import image_tokens
    from mbm.train.data import load_eval_image
    from mbm.train.features import STORE_FILE, FeatureStore, picture_key

    folder = Path(cache)
    if not (folder / STORE_FILE).is_file():
        raise UsageError(
            f"--feature-cache {folder} holds no feature cache — fill one with `python -m mbm.train.features` "
            "or omit the option"
        )
    identity = json.loads((folder / STORE_FILE).read_text())
    if identity.get("grid") != grid:
        raise UsageError(
            f"feature cache {folder} holds a {identity.get('grid')}x{identity.get('grid')} token grid, the "
            f"fusion head reads {grid}x{grid} — use another --feature-cache or omit it"
        )
    store = FeatureStore(folder, identity)
    keys = [picture_key(r) for r in rows]
    pooled, tokens = store.load(keys, 0)
    sample = np.random.default_rng(0).choice(len(rows), min(SAMPLE_CHECK, len(rows)), replace=False)
    with torch.inference_mode():
        pixels = torch.stack([enc.preprocess(load_eval_image(rows[i]["image"], enc.image_size)) for i in sample])
        _, own = image_tokens(enc.model, pixels.to(enc.device))
        own = pool_image_tokens(own.float(), grid).cpu()
    cosine = float(F.cosine_similarity(own.flatten(1), tokens[torch.as_tensor(sample)].float().flatten(1)).min())
    if cosine < MIN_COSINE:
        log.warning(
            "feature cache %s does not match this model's trunk (cosine %.4f): computing the features", folder, cosine
        )
        return None
    with torch.inference_mode():
        emb = torch.cat(
            [
                F.normalize(enc.model.visual.head(pooled[s : s + 4096].float()), dim=-1)
                for s in range(0, len(pooled), 4096)
            ]
        )
    return emb.numpy(), tokens


def _text_side(enc: Any, captions: Sequence[str], max_tokens: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    from mbm.models.tokens import is_hf_text, text_pad_id, text_tokens, trim_padding

    order = np.argsort([len(c) for c in captions], kind="stable")  # similar lengths together: little padding
    emb = torch.empty(len(captions), enc.dim)
    width = max_tokens if max_tokens > 0 else None
    toks: list[torch.Tensor | None] = [None] * len(captions)
    pad = text_pad_id(enc.model)
    with torch.inference_mode():
        for s in range(0, len(order), 256):
            idx = order[s : s + 256]
            ids = enc.tokenizer([captions[i] for i in idx])
            if is_hf_text(enc.model):
                ids = trim_padding(ids, pad)
            pooled, tokens, mask = text_tokens(enc.model, ids.to(enc.device))
            emb[torch.as_tensor(idx)] = F.normalize(pooled.float(), dim=-1).cpu()
            for j, i in enumerate(idx):
                keep = int(mask[j].sum())
                toks[i] = tokens[j, : min(keep, width or keep)].to(torch.float16).cpu()
    padded = torch.nn.utils.rnn.pad_sequence([t for t in toks if t is not None], batch_first=True)
    lengths = torch.tensor([len(t) for t in toks if t is not None])
    return emb.numpy(), padded, torch.arange(padded.shape[1])[None, :] < lengths[:, None]


def build_side(enc: Any, rows: Sequence[dict], fusion_cfg: dict, cache: str | None) -> Side:
    grid = int(fusion_cfg.get("image_grid", 0) or 0)
    image_emb, image_tok = _image_side(enc, rows, grid, cache)
    distinct: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        for c in r["captions"]:
            if i not in distinct.setdefault(c, []):
                distinct[c].append(i)
    captions = list(distinct)
    text_emb, text_tok, mask = _text_side(enc, captions, int(fusion_cfg.get("max_text_tokens", 0) or 0))
    return Side(image_emb, image_tok, text_emb, text_tok, mask, [np.array(distinct[c], np.int64) for c in captions])


def mine(side: Side, top: int) -> np.ndarray:
    """(captions, top) image rows the dual encoder ranks highest for each caption, positives dropped (-1 pads)."""
    from mbm.train.recall import top_candidates

    cands = top_candidates(side.image_emb, side.text_emb, top + max(len(p) for p in side.positives))
    out = np.full((len(cands), top), -1, np.int64)
    for i, (row, pos) in enumerate(zip(cands, side.positives)):
        neg = row[~np.isin(row, pos)][:top]
        out[i, : len(neg)] = neg
    return out


@torch.no_grad()
def validate(fusion: FusionModel, side: Side, scale: float, top: int) -> dict[str, Any]:
    """Text->image R@1/5/10 over the dual encoder's top ``top`` per caption, for each dual weight (and dual alone).

    A caption counts as found at the rank of its first positive; a caption whose positives are all outside
    the top is a miss for every order."""
    from mbm.train.recall import top_candidates
    from mbm.train.rerank_metrics import fusion_logits

    cands = top_candidates(side.image_emb, side.text_emb, top)
    top = cands.shape[1]  # at most the number of pictures
    cosine = np.einsum("ud,ukd->uk", side.text_emb, side.image_emb[cands])
    rows = np.broadcast_to(np.arange(len(cands))[:, None], cands.shape)
    logits = fusion_logits(
        fusion, side.text_tokens, side.text_mask, side.image_tokens, rows, cands, image_emb=side.image_emb
    )
    hit = np.stack([np.isin(cands[i], p) for i, p in enumerate(side.positives)])
    out: dict[str, Any] = {"top": top, "captions": len(cands), "dual": _recall(np.zeros_like(logits), cosine, hit)}
    for w in DUAL_WEIGHTS:
        out[f"w={w}"] = _recall(logits, w * scale * cosine, hit)
    best = max(DUAL_WEIGHTS, key=lambda w: (out[f"w={w}"]["R@1"], out[f"w={w}"]["R@5"], w))
    out["best_dual_weight"] = best
    return out


def _recall(logits: np.ndarray, dual: np.ndarray, hit: np.ndarray) -> dict[str, float]:
    score = logits + dual
    n = score.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), score.shape), -score), axis=1)  # ties keep the dual order
    ranked = np.take_along_axis(hit, order, 1)
    rank = np.where(ranked.any(1), ranked.argmax(1), n)
    return {f"R@{k}": float((rank < k).mean()) for k in (1, 5, 10)}


def _batch(
    side: Side, mined: np.ndarray, captions: np.ndarray, cfg: FusionStageConfig, rng: np.random.Generator
) -> torch.Tensor:
    """(B, 1 + negatives + random) image rows: the positive first."""
    out = np.empty((len(captions), 1 + cfg.negatives + cfg.random_negatives), np.int64)
    n_images = len(side.image_emb)
    for j, c in enumerate(captions):
        pool = mined[c][mined[c] >= 0]
        neg = rng.choice(pool, min(cfg.negatives, len(pool)), replace=False) if len(pool) else np.empty(0, np.int64)
        while len(neg) < cfg.negatives + cfg.random_negatives:  # random pictures that are not positives
            r = int(rng.integers(n_images))
            if r not in side.positives[c]:
                neg = np.append(neg, r)
        out[j, 0] = rng.choice(side.positives[c])
        out[j, 1:] = neg
    return torch.as_tensor(out)


def train_fusion(cfg: FusionStageConfig) -> dict[str, Any]:
    """Train, calibrate and save; returns the report written to ``out_dir/fusion_stage.json``."""
    from mbm.models import load_model
    from mbm.models.build import is_checkpoint_dir, save_checkpoint
    from mbm.models.heads import save_heads
    from mbm.retrieval.hubness import RERANK_FILE
    from mbm.train.data import load_rows
    from mbm.train.recall import logit_scale_of

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    enc = load_model(cfg.base, device=cfg.device, precision="fp32")
    enc.model.eval().requires_grad_(False)
    train_rows = load_rows(cfg.manifest, "train", cfg.sources)
    val_rows = load_rows(cfg.manifest, "val", cfg.sources)
    if not train_rows or not val_rows:
        raise UsageError(
            f"manifest {cfg.manifest} needs train and val rows (found {len(train_rows)} / {len(val_rows)})"
        )
    train = build_side(enc, train_rows, cfg.fusion, cfg.feature_cache)
    val = build_side(enc, val_rows, cfg.fusion, cfg.feature_cache)
    log.info(
        "features: %d train pictures, %d captions; %d val pictures (%.0f s)",
        len(train.image_emb),
        len(train.text_emb),
        len(val.image_emb),
        time.perf_counter() - started,
    )
    mined = mine(train, cfg.mine_top)
    base = enc.heads.get("fusion")
    if base is not None and not cfg.fresh and (base.cfg.embed_dim > 0) == cfg.embedding_token:
        fusion = base
    else:
        fusion = FusionModel(
            FusionConfig(
                **{
                    **cfg.fusion,
                    "text_dim": int(train.text_tokens.shape[-1]),
                    "image_dim": int(train.image_tokens.shape[-1]),
                    "embed_dim": enc.dim if cfg.embedding_token else 0,
                }
            )
        )
    fusion.to(cfg.device).requires_grad_(True)
    scale = logit_scale_of(enc.model)
    report: dict[str, Any] = {"config": asdict(cfg), "epochs": [], "start": validate(fusion, val, scale, cfg.val_top)}
    log.info("start: %s", _line(report["start"]))
    opt = torch.optim.AdamW(fusion.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(train.text_emb) // cfg.batch_size)
    total = steps * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    best_score, best_state, best_weight = _score(report["start"]), _copy(fusion), report["start"]["best_dual_weight"]
    for epoch in range(cfg.epochs):
        fusion.train()
        order = rng.permutation(len(train.text_emb))
        losses = []
        for step in range(steps):
            caps = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            images = _batch(train, mined, caps, cfg, rng)
            x, mask = fusion.project_text(train.text_tokens[caps].float(), train.text_mask[caps])
            flat, inverse = torch.unique(images.reshape(-1), return_inverse=True)
            img = fusion.project_image(
                train.image_tokens[flat].float(), torch.from_numpy(train.image_emb[flat.numpy()])
            )
            text_index = torch.arange(len(caps)).repeat_interleave(images.shape[1])
            logits = fusion.match(x, mask, img, text_index=text_index, image_index=inverse).view(images.shape)
            loss = F.cross_entropy(logits.float(), torch.zeros(len(caps), dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(fusion.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % 200 == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch + 1, step, steps, float(np.mean(losses[-200:])))
        metrics = validate(fusion, val, scale, cfg.val_top)
        report["epochs"].append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics})
        log.info("epoch %d: loss %.4f %s", epoch + 1, float(np.mean(losses)), _line(metrics))
        if _score(metrics) > best_score:
            best_score, best_state, best_weight = _score(metrics), _copy(fusion), metrics["best_dual_weight"]
    fusion.load_state_dict(best_state)
    fusion.cfg.dual_weight = float(best_weight)
    out = Path(cfg.out_dir)
    source = Path(cfg.base).expanduser()
    if is_checkpoint_dir(source) or (enc.description or "").startswith("checkpoint "):
        folder = source if is_checkpoint_dir(source) else Path(enc.description.split(" ", 1)[1])
        if out.resolve() != folder.resolve():
            shutil.copytree(folder, out, dirs_exist_ok=True)
        # BASE's re-ranking calibration weighs BASE's head: the new head re-ranks by its own dual_weight
        (out / RERANK_FILE).unlink(missing_ok=True)
        save_heads(out, fusion.eval(), enc.heads.get("classifier"))
    else:
        save_checkpoint(enc.model, out, _model_cfg(enc), heads=(fusion.eval(), None))
    report.update(
        seconds=round(time.perf_counter() - started, 1),
        dual_weight=fusion.cfg.dual_weight,
        chosen=_line(next((e for e in report["epochs"] if _score(e) == best_score), report["start"])),
    )
    (out / "fusion_stage.json").write_text(json.dumps(report, indent=2))
    return report


def _model_cfg(enc: Any) -> dict:
    import open_clip

    name = enc.spec.split(":", 1)[0]
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UsageError(f"model {enc.spec!r} has no open_clip config to save beside the fusion head")
    return cfg


def _score(metrics: dict[str, Any]) -> tuple[float, float]:
    best = metrics[f"w={metrics['best_dual_weight']}"]
    return best["R@1"], best["R@5"]


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _line(metrics: dict[str, Any]) -> str:
    w = metrics["best_dual_weight"]
    dual, best, alone = metrics["dual"], metrics[f"w={w}"], metrics["w=0.0"]
    return (
        f"val t2i R@1/5 over the top {metrics['top']}: dual {100 * dual['R@1']:.1f}/{100 * dual['R@5']:.1f}, "
        f"fusion alone {100 * alone['R@1']:.1f}/{100 * alone['R@5']:.1f}, "
        f"fusion + {w} x dual {100 * best['R@1']:.1f}/{100 * best['R@5']:.1f}"
    )
