"""Evaluation of a model on a manifest split: embeddings, Recall@K, fusion re-ranking, zero-shot accuracy.

The metrics themselves live in ``mbm.train.recall`` (exact scores, Recall@K, top
candidates) and ``mbm.train.rerank_metrics`` (fusion re-ranking).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# top_candidates and wilson_interval: re-exported for benchmarks/, which import them from here
from mbm.train.recall import recall_at_k, top_candidates, wilson_interval
from mbm.train.rerank_metrics import rerank_sweep

__all__ = [
    "EVAL_PRECISION",
    "classifier_accuracy",
    "embed_rows",
    "evaluate",
    "recall_at_k",
    "top_candidates",
    "unpack_model",
    "wilson_interval",
    "zero_shot_accuracy",
]


def zero_shot_accuracy(
    encoder_like: Any,
    images: Sequence[Any] | np.ndarray,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str] = ("{}", "a picture of a {}."),
) -> dict[str, float]:
    """Top-1/top-5 accuracy of classifying images by the nearest class prompt embedding.

    ``encoder_like`` has ``encode_images(list[PIL]) -> (N, D)`` and ``encode_texts(list[str])``
    (both L2-normalized, as ``mbm.models.Encoder``); ``images`` may also be an (N, D)
    array of image embeddings. Each class is the normalized mean of its templates.
    """
    img = np.asarray(images, np.float32) if isinstance(images, np.ndarray) else encoder_like.encode_images(list(images))
    prompts = [t.format(c) for c in classnames for t in templates]
    txt = encoder_like.encode_texts(prompts).reshape(len(classnames), len(templates), -1).mean(1)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    scores = img @ txt.T
    truth = np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {"top1": float((order[:, 0] == truth).mean()), "n": len(truth)}
    if len(classnames) >= 5:
        out["top5"] = float((order[:, :5] == truth[:, None]).any(1).mean())
    return out


@torch.no_grad()
def embed_rows(
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    *,
    device: str = "cpu",
    batch_size: int = 64,
    with_tokens: bool = False,
) -> dict[str, Any]:
    """Normalized embeddings of a split's images and of ALL their captions, plus ``text_to_image``.

    With ``with_tokens`` also the patch tokens and text tokens the fusion model needs
    (held in memory: meant for evaluation splits, not for a whole corpus).
    """
    from mbm.models.tokens import image_tokens, text_tokens
    from mbm.train.data import load_eval_image

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    captions = [c for r in rows for c in r["captions"]]
    t2i = np.array([i for i, r in enumerate(rows) for _ in r["captions"]], np.int64)
    img_emb: list[torch.Tensor] = []
    img_tok: list[torch.Tensor] = []
    txt_emb: list[torch.Tensor] = []
    txt_tok: list[torch.Tensor] = []
    txt_mask: list[torch.Tensor] = []
    dtype = next(model.visual.parameters()).dtype  # an Encoder may hold bf16 weights
    for s in range(0, len(rows), batch_size):
        pixels = torch.stack([preprocess(load_eval_image(r["image"], size)) for r in rows[s : s + batch_size]]).to(
            device, dtype
        )
        if with_tokens:
            pooled, tokens = image_tokens(model, pixels)
            img_tok.append(tokens.float().cpu())
        else:
            pooled = model.encode_image(pixels)
        img_emb.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
    for s in range(0, len(captions), batch_size):
        ids = tokenizer(captions[s : s + batch_size]).to(device)
        if with_tokens:
            pooled, tokens, mask = text_tokens(model, ids)
            txt_tok.append(tokens.float().cpu())
            txt_mask.append(mask.cpu())
        else:
            pooled = model.encode_text(ids)
        txt_emb.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
    out: dict[str, Any] = {
        "image_emb": torch.cat(img_emb).numpy(),
        "text_emb": torch.cat(txt_emb).numpy(),
        "text_to_image": t2i,
    }
    if with_tokens:
        out.update(image_tokens=torch.cat(img_tok), text_tokens=torch.cat(txt_tok), text_mask=torch.cat(txt_mask))
    return out


def evaluate(
    checkpoint_or_encoder: Any,
    manifest: str | Path,
    split: str = "test",
    rerank_top: int = 10,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    sources: Sequence[str] = (),
    precision: str | None = None,
) -> dict[str, Any]:
    """JSON-able metrics of a checkpoint folder, a model spec or an ``Encoder`` on a manifest split.

    Recall@1/5/10 both directions; with a fusion head and ``rerank_top > 0`` also the
    text -> image recall after fusion re-ranking of the top ``rerank_top``; with a
    classifier head, its accuracy on the labelled rows. ``precision`` (see ``unpack_model``:
    fp32 unless named) is reported as ``precision``.
    """
    from mbm.train.data import load_rows

    model, preprocess, tokenizer, heads, name, used = unpack_model(checkpoint_or_encoder, device, precision)
    rows = load_rows(manifest, split, sources)
    if not rows:
        from mbm.errors import UsageError

        raise UsageError(
            f"split {split!r} of {manifest} has no image-caption rows{' from ' + ','.join(sources) if sources else ''}"
            " — pick another --split/--sources or rebuild the manifest"
        )
    fusion = heads.get("fusion") if rerank_top > 0 else None
    model.eval()
    data = embed_rows(
        model, preprocess, tokenizer, rows, device=device, batch_size=batch_size, with_tokens=fusion is not None
    )
    out: dict[str, Any] = {"model": name, "precision": used, "manifest": str(manifest), "split": split}
    out.update(recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"]))
    if fusion is not None:
        result = rerank_sweep(fusion.to(device), model, data, [rerank_top])
        out.update(
            {k: v for k, v in result[str(rerank_top)].items() if k != "top"},
            rerank_top=rerank_top,
            dual_weight=result["dual_weight"],
        )
    if heads.get("classifier") is not None:
        out.update(classifier_accuracy(heads["classifier"], data["image_emb"], rows))
    return out


def classifier_accuracy(classifier: Any, image_emb: np.ndarray, rows: Sequence[dict]) -> dict[str, Any]:
    """Top-1 accuracy of the classifier head on the rows whose ``label`` it knows ({} when none)."""
    index = {name: i for i, name in enumerate(classifier.labels)}
    keep = [i for i, r in enumerate(rows) if r.get("label") in index]
    if not keep:
        return {}
    device = next(classifier.parameters()).device
    with torch.no_grad():
        logits = classifier(torch.as_tensor(image_emb[keep]).to(device)).cpu()
    labels = torch.tensor([index[rows[i]["label"]] for i in keep])
    return {"classifier_top1": float((logits.argmax(1) == labels).float().mean()), "classifier_n": len(keep)}


EVAL_PRECISION = "fp32"  # what a named model and a checkpoint folder both get unless told otherwise


def unpack_model(source: Any, device: str, precision: str | None = None) -> tuple[Any, Any, Any, dict, str, str]:
    """``(model, preprocess, tokenizer, heads, name, precision)`` of a checkpoint folder, any other model
    spec (through ``load_model``), or an ``Encoder``-like object.

    A folder and a name are loaded the same way (``load_model``) with the same weights
    precision: ``precision`` (fp32, bf16, fp16 or auto — what ``--precision auto`` picks for
    search on this hardware), fp32 when None, so that ``mbm eval mbm-offline`` and
    ``mbm eval <its folder>`` report the same figures.
    An ``Encoder`` is evaluated as it was loaded; naming another precision for it is an error.
    """
    from mbm.errors import UsageError
    from mbm.models import load_model

    if not isinstance(source, (str, Path)):
        have = getattr(source, "precision", None) or _dtype_name(next(source.model.parameters()).dtype)
        if precision not in (None, have):
            raise UsageError(
                f"this encoder was loaded in {have}; load it with precision={precision!r} to evaluate that"
            )
        return (
            source.model,
            source.preprocess,
            source.tokenizer,
            dict(getattr(source, "heads", {}) or {}),
            getattr(source, "spec", "encoder"),
            have,
        )
    # one loader for names and folders alike (load_model reads checkpoint folders with their heads)
    enc = load_model(str(source), device=device, precision=precision or EVAL_PRECISION)
    return enc.model, enc.preprocess, enc.tokenizer, dict(enc.heads or {}), enc.spec, enc.precision


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
