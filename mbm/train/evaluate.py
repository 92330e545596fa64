"""Retrieval metrics: Recall@K both directions (chunked), fusion re-ranking, zero-shot accuracy.

Conventions (the standard ones of CLIP / ALBEF evaluations):
- text -> image: each caption has one ground-truth image; a hit at K when it ranks < K.
- image -> text: a hit at K when ANY of the image's captions ranks < K. Images with
  no caption are left out.
- ties are broken by index (the order a stable sort of the scores gives), so the
  chunked computation equals a brute-force ``argsort(kind="stable")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

KS = (1, 5, 10)


def _ranks(image_emb: np.ndarray, text_emb: np.ndarray, t2i: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each caption's image (t2i) and of each image's best caption (i2t; -1: no caption)."""
    n_img, n_txt = len(image_emb), len(text_emb)
    pos = np.einsum("td,td->t", text_emb, image_emb[t2i])  # score of each caption with its own image
    best = np.full(n_img, -np.inf, np.float32)
    np.maximum.at(best, t2i, pos)
    # the first caption reaching the best score: ties among other captions are broken against its index
    first = np.full(n_img, n_txt, np.int64)
    is_best = pos >= best[t2i]
    np.minimum.at(first, t2i[is_best], np.nonzero(is_best)[0])
    t_rank = np.zeros(n_txt, np.int64)
    i_rank = np.zeros(n_img, np.int64)
    for t0 in range(0, n_txt, chunk):
        t_idx = np.arange(t0, min(t0 + chunk, n_txt))
        for i0 in range(0, n_img, chunk):
            i_idx = np.arange(i0, min(i0 + chunk, n_img))
            block = text_emb[t_idx] @ image_emb[i_idx].T  # (texts, images): never more than chunk x chunk
            own = t2i[t_idx][:, None] == i_idx[None, :]
            ahead = (block > pos[t_idx, None]) | ((block == pos[t_idx, None]) & (i_idx[None, :] < t2i[t_idx, None]))
            t_rank[t_idx] += (ahead & ~own).sum(1)
            s = best[i_idx][None, :]
            ahead = (block > s) | ((block == s) & (t_idx[:, None] < first[i_idx][None, :]))
            i_rank[i_idx] += (ahead & ~own).sum(0)
    i_rank[np.isinf(best)] = -1
    return t_rank, i_rank


def recall_at_k(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = KS,
    chunk: int = 4096,
) -> dict[str, float]:
    """Recall@K in both directions for L2-normalized embeddings; ``text_to_image[t]`` is caption t's image row.

    Memory is O(chunk^2): 100k x 100k never exists. Returns ``t2i_R@K``, ``i2t_R@K``
    (fractions in [0, 1]), ``mean_recall`` (mean of all of them) and the counts.
    """
    image_emb = np.ascontiguousarray(image_emb, np.float32)
    text_emb = np.ascontiguousarray(text_emb, np.float32)
    t2i = np.asarray(text_to_image, np.int64)
    if len(t2i) != len(text_emb) or (len(t2i) and (t2i.min() < 0 or t2i.max() >= len(image_emb))):
        raise ValueError("text_to_image must give, for every text row, an image row index")
    t_rank, i_rank = _ranks(image_emb, text_emb, t2i, max(1, int(chunk)))
    i_rank = i_rank[i_rank >= 0]
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_R@{k}"] = float((t_rank < k).mean()) if len(t_rank) else 0.0
    for k in ks:
        out[f"i2t_R@{k}"] = float((i_rank < k).mean()) if len(i_rank) else 0.0
    out["mean_recall"] = float(np.mean([out[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in ks]))
    out["n_texts"], out["n_images"] = len(t_rank), len(i_rank)
    return out


def _block_top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Columns of the n best scores of each row, by (score descending, column ascending), unordered."""
    cols = scores.shape[1]
    if n >= cols:
        return torch.arange(cols).expand(scores.shape[0], cols).clone()
    top = torch.topk(scores, n, dim=1, sorted=False).indices
    threshold = scores.gather(1, top).min(1).values
    # a tie at the boundary: topk may have kept a later column; settle those rows exactly
    for r in torch.nonzero((scores >= threshold[:, None]).sum(1) > n).flatten().tolist():
        top[r] = torch.sort(-scores[r], stable=True).indices[:n]
    return top


@torch.no_grad()
def top_candidates(image_emb: np.ndarray, text_emb: np.ndarray, n: int, chunk: int = 2048) -> np.ndarray:
    """(texts, n) image rows with the highest scores per text, best first (ties by index).

    Scores are computed in ``chunk`` x ``chunk`` blocks and each text keeps a running
    top n, so memory is O(chunk^2) and the image matrix is read once per text block,
    not once per text: 100k x 100k (dimension 256) takes well under a minute on 2 cores.
    """
    n = min(n, len(image_emb))
    out = np.zeros((len(text_emb), n), np.int64)
    if n == 0:
        return out
    images = torch.from_numpy(np.ascontiguousarray(image_emb, np.float32))
    texts_all = torch.from_numpy(np.ascontiguousarray(text_emb, np.float32))
    for t0 in range(0, len(text_emb), chunk):
        texts = texts_all[t0 : t0 + chunk]
        best_s, best_i = torch.empty((len(texts), 0)), torch.empty((len(texts), 0), dtype=torch.int64)
        for i0 in range(0, len(images), chunk):
            block = texts @ images[i0 : i0 + chunk].T
            top = _block_top(block, n)
            cand_s = torch.cat([best_s, block.gather(1, top)], 1)
            cand_i = torch.cat([best_i, top + i0], 1)
            # keep the total order (score desc, index asc): stable sort by index, then stable by score
            by_index = torch.sort(cand_i, dim=1, stable=True).indices
            cand_s, cand_i = cand_s.gather(1, by_index), cand_i.gather(1, by_index)
            keep = torch.sort(-cand_s, dim=1, stable=True).indices[:, :n]
            best_s, best_i = cand_s.gather(1, keep), cand_i.gather(1, keep)
        out[t0 : t0 + chunk] = best_i.numpy()
    return out


@torch.no_grad()
def rerank_recall(
    fusion: torch.nn.Module,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    image_tokens: torch.Tensor,
    candidates: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = KS,
    batch: int = 512,
    dual_logits: np.ndarray | None = None,
) -> dict[str, float]:
    """Text -> image Recall@K after re-scoring each text's candidate images with the fusion model.

    ``candidates`` (texts, N) are image rows from the dual encoder, best first; the
    fusion model re-orders them (its score, then the original order). An image
    outside the candidates counts as rank N, so R@K for K > N is a lower bound.
    With ``dual_logits`` (texts, N: the dual encoder's ``logit_scale * cosine`` of each
    candidate) also ``rerank_combined_t2i_R@K``: ordered by fusion logit + dual logit.
    """
    fusion.eval()
    n_txt, n = candidates.shape
    t_idx = torch.arange(n_txt).repeat_interleave(n)
    i_idx = torch.as_tensor(candidates.reshape(-1))
    scores = torch.empty(len(t_idx))
    device = next(fusion.parameters()).device
    for s in range(0, len(t_idx), batch):
        ti, ii = t_idx[s : s + batch], i_idx[s : s + batch]
        logits = fusion(text_tokens[ti].to(device).float(), text_mask[ti].to(device), image_tokens[ii].to(device).float())
        scores[s : s + batch] = logits.float().cpu()
    scores = scores.view(n_txt, n).numpy()
    out = {f"rerank_t2i_R@{k}": v for k, v in _recall_after(scores, candidates, text_to_image, ks).items()}
    if dual_logits is not None:
        combined = _recall_after(scores + np.asarray(dual_logits, np.float32), candidates, text_to_image, ks)
        out.update({f"rerank_combined_t2i_R@{k}": v for k, v in combined.items()})
    out["rerank_top"] = int(n)
    return out


def _recall_after(scores: np.ndarray, candidates: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """R@K once each row of ``candidates`` is sorted by ``scores`` (ties keep the original order)."""
    n = candidates.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)
    hit = np.take_along_axis(candidates, order, 1) == np.asarray(text_to_image)[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), n)
    return {k: float((rank < k).mean()) for k in ks}


def candidate_logits(image_emb: np.ndarray, text_emb: np.ndarray, candidates: np.ndarray, model: Any) -> np.ndarray:
    """The dual encoder's ``logit_scale * cosine`` of each (text, candidate image), shaped like ``candidates``."""
    scale = float(model.logit_scale.detach().float().exp().clamp(max=100)) if hasattr(model, "logit_scale") else 1.0
    return scale * np.einsum("td,tnd->tn", text_emb, image_emb[candidates])


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
    labels = np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {"top1": float((order[:, 0] == labels).mean()), "n": len(labels)}
    if len(classnames) >= 5:
        out["top5"] = float((order[:, :5] == labels[:, None]).any(1).mean())
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
    img_emb, img_tok, txt_emb, txt_tok, txt_mask = [], [], [], [], []
    dtype = next(model.visual.parameters()).dtype  # an Encoder may hold bf16 weights
    for s in range(0, len(rows), batch_size):
        pixels = torch.stack([preprocess(load_eval_image(r["image"], size)) for r in rows[s : s + batch_size]]).to(device, dtype)
        pooled, tokens = image_tokens(model, pixels) if with_tokens else (model.encode_image(pixels), None)
        img_emb.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if with_tokens:
            img_tok.append(tokens.float().cpu())
    for s in range(0, len(captions), batch_size):
        ids = tokenizer(captions[s : s + batch_size]).to(device)
        pooled, tokens, mask = text_tokens(model, ids) if with_tokens else (model.encode_text(ids), None, None)
        txt_emb.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if with_tokens:
            txt_tok.append(tokens.float().cpu())
            txt_mask.append(mask.cpu())
    out = {"image_emb": torch.cat(img_emb).numpy(), "text_emb": torch.cat(txt_emb).numpy(), "text_to_image": t2i}
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
) -> dict[str, Any]:
    """JSON-able metrics of a checkpoint folder, a model spec or an ``Encoder`` on a manifest split.

    Recall@1/5/10 both directions; with a fusion head and ``rerank_top > 0`` also the
    text -> image recall after fusion re-ranking of the top ``rerank_top``; with a
    classifier head, its accuracy on the labelled rows.
    """
    from mbm.train.data import load_rows

    model, preprocess, tokenizer, heads, name = _unpack(checkpoint_or_encoder, device)
    rows = load_rows(manifest, split, sources)
    if not rows:
        from mbm.errors import UsageError

        raise UsageError(f"split {split!r} of {manifest} has no image-caption rows{' from ' + ','.join(sources) if sources else ''}"
                         " — pick another --split/--sources or rebuild the manifest")
    fusion = heads.get("fusion") if rerank_top > 0 else None
    model.eval()
    data = embed_rows(model, preprocess, tokenizer, rows, device=device, batch_size=batch_size, with_tokens=fusion is not None)
    out: dict[str, Any] = {"model": name, "manifest": str(manifest), "split": split}
    out.update(recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"]))
    if fusion is not None:
        candidates = top_candidates(data["image_emb"], data["text_emb"], rerank_top)
        args = (data["text_tokens"], data["text_mask"], data["image_tokens"], candidates, data["text_to_image"])
        dual = candidate_logits(data["image_emb"], data["text_emb"], candidates, model)
        out.update(rerank_recall(fusion.to(device), *args, dual_logits=dual))
    if heads.get("classifier") is not None:
        out.update(_classifier_accuracy(heads["classifier"], data["image_emb"], rows))
    return out


def _classifier_accuracy(classifier: Any, image_emb: np.ndarray, rows: Sequence[dict]) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(classifier.labels)}
    keep = [i for i, r in enumerate(rows) if r.get("label") in index]
    if not keep:
        return {}
    device = next(classifier.parameters()).device
    with torch.no_grad():
        logits = classifier(torch.as_tensor(image_emb[keep]).to(device)).cpu()
    labels = torch.tensor([index[rows[i]["label"]] for i in keep])
    return {"classifier_top1": float((logits.argmax(1) == labels).float().mean()), "classifier_n": len(keep)}


def _unpack(source: Any, device: str) -> tuple[Any, Any, Any, dict, str]:
    """A checkpoint folder, any other model spec (through ``load_model``), or an ``Encoder``-like object."""
    from mbm.models.build import is_checkpoint_dir, load_checkpoint

    if isinstance(source, (str, Path)) and is_checkpoint_dir(source):

        model, preprocess, tokenizer, heads = load_checkpoint(source, device=device)
        return model.to(device), preprocess, tokenizer, heads, str(source)
    if isinstance(source, (str, Path)):
        from mbm.models import load_model

        source = load_model(str(source), device=device)
    return source.model, source.preprocess, source.tokenizer, dict(getattr(source, "heads", {}) or {}), getattr(source, "spec", "encoder")
