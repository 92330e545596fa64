"""Retrieval metrics: Recall@K both directions (chunked), fusion re-ranking, zero-shot accuracy.

Conventions (the standard ones of CLIP / ALBEF evaluations):
- text -> image: each caption has one ground-truth image; a hit at K when it ranks < K.
- image -> text: a hit at K when ANY of the image's captions ranks < K. Images with
  no caption are left out.
- scores are exact and ties go to the lower index. Every compared score comes from one
  function (``exact_grid`` + a float64 product): the embeddings are rounded to a
  power-of-two fixed-point grid (2**-22 for unit vectors of dimension <= 256) on which
  every product and every partial sum of a dot product is an integer below 2**52, so a
  score is the same bits whatever BLAS kernel, blocking or chunk computed it, and equal
  embeddings score equally. A tie is then a real tie, decided by index (the lower
  index ranks first: the order ``argsort(-score, kind="stable")`` gives), and the
  chunked computation equals that brute-force sort exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

KS = (1, 5, 10)
Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (95 % by default); (0, 1) when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n hits:
    0 of 10 gives (0, 0.278), 5 of 10 (0.237, 0.763).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= hits <= n:
        raise ValueError(f"hits must be between 0 and n, got {hits} of {n}")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def exact_grid(x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
    """``x`` (rows, dim) rounded to a fixed-point grid: float64 holding integers, and the grid's scale.

    The scale is a power of two chosen from the largest magnitude in ``x`` so that each
    entry is at most 2**b in magnitude with dim * 2**(2b) <= 2**52: a dot product of two
    grid rows is then computed exactly in float64 in any summation order. Scores are
    ``dot / (scale_a * scale_b)``; within one matrix pair, the order of the grid scores
    is the order of the (rounded) cosine scores, and equal rows give equal scores.
    """
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = np.ascontiguousarray(x, np.float64).reshape(len(x), -1)
    dim = max(2, x.shape[1])
    bits = (52 - math.ceil(math.log2(dim))) // 2
    top = float(np.abs(x).max()) if x.size else 0.0
    if not math.isfinite(top):
        raise ValueError("embeddings contain NaN or infinity — check the model's output")
    scale = 2.0 ** (bits - math.frexp(top)[1]) if top > 0 else 1.0  # top < 2**frexp(top)[1]
    return np.rint(x * scale), scale


def _pair_scores(
    text_grid: np.ndarray, image_grid: np.ndarray, text_rows: np.ndarray, image_rows: np.ndarray
) -> np.ndarray:
    """Grid scores of the pairs (text_rows[j], image_rows[j]) (any matching shapes), exact like a block product."""
    return (text_grid[text_rows] * image_grid[image_rows]).sum(-1)


def _ranks(
    image_emb: np.ndarray, text_emb: np.ndarray, t2i: np.ndarray, chunk: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each caption's image (t2i) and of each image's best caption (i2t; -1: no caption).

    With ``groups`` (an id per image), images of the caption's own group, and captions of
    the image's own group, are not counted ahead: only other concepts compete.
    """
    img, _ = exact_grid(image_emb)
    txt, _ = exact_grid(text_emb)
    n_img, n_txt = len(img), len(txt)
    pos = _pair_scores(txt, img, np.arange(n_txt), t2i)  # each caption with its own image, exactly
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, t2i, pos)
    # the first caption reaching the best score: ties among other captions are broken against its index
    first = np.full(n_img, n_txt, np.int64)
    is_best = pos == best[t2i]
    np.minimum.at(first, t2i[is_best], np.nonzero(is_best)[0])
    t_rank = np.zeros(n_txt, np.int64)
    i_rank = np.zeros(n_img, np.int64)
    for t0 in range(0, n_txt, chunk):
        t_idx = np.arange(t0, min(t0 + chunk, n_txt))
        own_t, pos_t = t2i[t_idx][:, None], pos[t_idx][:, None]
        for i0 in range(0, n_img, chunk):
            i_idx = np.arange(i0, min(i0 + chunk, n_img))
            block = (
                txt[t0 : t0 + chunk] @ img[i0 : i0 + chunk].T
            )  # (texts, images), exact; never more than chunk x chunk
            other = own_t != i_idx[None, :] if groups is None else groups[own_t] != groups[i_idx][None, :]
            ahead = (block > pos_t) | ((block == pos_t) & (i_idx[None, :] < own_t))
            t_rank[t_idx] += (ahead & other).sum(1)
            s = best[i_idx][None, :]
            ahead = (block > s) | ((block == s) & (t_idx[:, None] < first[i_idx][None, :]))
            i_rank[i_idx] += (ahead & other).sum(0)
    i_rank[np.isinf(best)] = -1
    return t_rank, i_rank


def recall_at_k(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = KS,
    chunk: int = 4096,
    image_groups: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Recall@K in both directions for L2-normalized embeddings; ``text_to_image[t]`` is caption t's image row.

    Memory is O(chunk^2): 100k x 100k never exists. Returns ``t2i_R@K``, ``i2t_R@K``
    (fractions in [0, 1]), ``mean_recall`` (mean of all of them) and the counts.
    ``image_groups`` (one label per image, e.g. the manifest's ``group``: one concept drawn
    in several styles) makes it group-aware: another image of the caption's own group
    ranking first is no miss, nor is a caption of another picture of the image's group.
    """
    image_emb = np.ascontiguousarray(image_emb, np.float32)
    text_emb = np.ascontiguousarray(text_emb, np.float32)
    t2i = np.asarray(text_to_image, np.int64)
    if len(t2i) != len(text_emb) or (len(t2i) and (t2i.min() < 0 or t2i.max() >= len(image_emb))):
        raise ValueError("text_to_image must give, for every text row, an image row index")
    groups = None
    if image_groups is not None:
        if len(image_groups) != len(image_emb):
            raise ValueError("image_groups must give one group per image row")
        groups = np.unique(np.asarray([str(g) for g in image_groups]), return_inverse=True)[1].reshape(-1)
    t_rank, i_rank = _ranks(image_emb, text_emb, t2i, max(1, int(chunk)), groups)
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
    """(texts, n) image rows with the highest scores per text, best first (ties: the lower row first).

    Scores are the exact grid scores of ``recall_at_k`` (see the module docstring), computed
    in ``chunk`` x ``chunk`` blocks; each text keeps a running top n, so memory is
    O(chunk^2) and the image matrix is read once per text block, not once per text.
    """
    n = min(n, len(image_emb))
    out = np.zeros((len(text_emb), n), np.int64)
    if n == 0 or len(text_emb) == 0:
        return out
    images, _ = exact_grid(np.asarray(image_emb, np.float32))
    texts_all, _ = exact_grid(np.asarray(text_emb, np.float32))
    for t0 in range(0, len(texts_all), chunk):
        texts = texts_all[t0 : t0 + chunk]
        best_s = torch.empty((len(texts), 0), dtype=torch.float64)
        best_i = torch.empty((len(texts), 0), dtype=torch.int64)
        for i0 in range(0, len(images), chunk):
            block = torch.from_numpy(texts @ images[i0 : i0 + chunk].T)
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


def _same_rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """For each row, the first row with identical contents (itself when unique)."""
    flat = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x).reshape(len(x), -1)
    seen: dict[bytes, int] = {}
    return np.array(
        [seen.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), i) for i, row in enumerate(flat)],
        np.int64,
    )


@torch.no_grad()
def fusion_logits(
    fusion: torch.nn.Module,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    image_tokens: torch.Tensor,
    text_rows: np.ndarray,
    image_rows: np.ndarray,
    *,
    image_emb: np.ndarray | None = None,
    batch: int = 4096,
) -> np.ndarray:
    """Fusion match logits of the pairs (text_rows[k], image_rows[k]), float64, shaped like ``text_rows``.

    Every text and image is projected once (``project_text`` / ``project_image``, as an index
    stores them); images with identical tokens are scored once per text, so duplicates tie
    exactly instead of by float noise. ``image_emb``: the images' embeddings, for a head that
    reads them (``FusionConfig.embed_dim``).
    """
    fusion.eval()
    device = next(fusion.parameters()).device
    shape = np.shape(text_rows)
    same_image = _same_rows(image_tokens)
    n_img = len(image_tokens)
    pairs = (
        np.asarray(text_rows, np.int64).reshape(-1) * n_img + same_image[np.asarray(image_rows, np.int64).reshape(-1)]
    )
    unique, inverse = np.unique(pairs, return_inverse=True)
    emb = torch.as_tensor(np.asarray(image_emb, np.float32)).to(device) if image_emb is not None else None
    images = fusion.project_image(image_tokens.to(device).float(), emb)
    x, mask = fusion.project_text(text_tokens.to(device).float(), text_mask.to(device))
    scores = torch.empty(len(unique), dtype=torch.float64)
    for s in range(0, len(unique), batch):
        chunk = torch.as_tensor(unique[s : s + batch])
        ti, ii = chunk // n_img, chunk % n_img
        scores[s : s + batch] = (
            fusion.match(x, mask, images, text_index=ti.to(device), image_index=ii.to(device)).double().cpu()
        )
    return scores.numpy()[inverse.reshape(-1)].reshape(shape)


def dual_weight(fusion: Any) -> float:
    """How much the dual encoder's logit counts beside the fusion logit in the re-ranking order."""
    return float(getattr(getattr(fusion, "cfg", None), "dual_weight", 1.0))


def rerank_recall(
    fusion: torch.nn.Module,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    image_tokens: torch.Tensor,
    candidates: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = KS,
    batch: int = 4096,
    dual_logits: np.ndarray | None = None,
    image_emb: np.ndarray | None = None,
) -> dict[str, float]:
    """Text -> image Recall@K after re-scoring each text's candidate images with the fusion model.

    ``candidates`` (texts, N) are image rows from the dual encoder, best first; the
    fusion model re-orders them (its score, then the original order — the dual
    encoder's, whose own ties went to the lower row). An image outside the candidates
    counts as rank N, so R@K for K > N is a lower bound.
    With ``dual_logits`` (texts, N: the dual encoder's ``logit_scale * cosine`` of each
    candidate) also ``rerank_combined_t2i_R@K``: ordered by fusion logit + the fusion config's
    ``dual_weight`` x dual logit (what search uses).
    """
    rows = np.broadcast_to(np.arange(len(candidates))[:, None], candidates.shape)
    scores = fusion_logits(
        fusion, text_tokens, text_mask, image_tokens, rows, candidates, image_emb=image_emb, batch=batch
    )
    out = {f"rerank_t2i_R@{k}": v for k, v in _recall_after(scores, candidates, text_to_image, ks).items()}
    if dual_logits is not None:
        combined = _recall_after(
            scores + dual_weight(fusion) * np.asarray(dual_logits, np.float64), candidates, text_to_image, ks
        )
        out.update({f"rerank_combined_t2i_R@{k}": v for k, v in combined.items()})
    out["rerank_top"] = int(candidates.shape[1])
    return out


def _recall_owned(scores: np.ndarray, owner: np.ndarray, query: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """R@K once each row is sorted by ``scores`` (ties keep the original order); a hit is ``owner == query``."""
    n = scores.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)
    hit = np.take_along_axis(owner, order, 1) == np.asarray(query)[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), n)
    return {k: float((rank < k).mean()) for k in ks}


def _recall_after(
    scores: np.ndarray, candidates: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """R@K once each row of ``candidates`` is sorted by ``scores`` (ties keep the original order)."""
    return _recall_owned(scores, candidates, text_to_image, ks)


def rerank_sweep(
    fusion: Any, model: Any, data: dict[str, Any], tops: Sequence[int], ks: Sequence[int] = KS
) -> dict[str, Any]:
    """Both directions re-ranked over the dual encoder's top N for each N in ``tops``: the fusion head alone
    (``rerank_*``) and the order search uses (``rerank_combined_*``), one entry per N.

    The largest N is scored once: a smaller N's candidates are the first N of its rows (the same exact order)."""
    image_emb, text_emb, t2i = data["image_emb"], data["text_emb"], data["text_to_image"]
    tokens = (data["text_tokens"], data["text_mask"], data["image_tokens"])
    most = max(tops)
    t2i_c = top_candidates(image_emb, text_emb, most)
    i2t_c = top_candidates(text_emb, image_emb, most)
    rows_t = np.broadcast_to(np.arange(len(t2i_c))[:, None], t2i_c.shape)
    rows_i = np.broadcast_to(np.arange(len(i2t_c))[:, None], i2t_c.shape)
    s_t2i = fusion_logits(fusion, *tokens, rows_t, t2i_c, image_emb=image_emb)
    s_i2t = fusion_logits(fusion, *tokens, i2t_c, rows_i, image_emb=image_emb)
    d_t2i, d_i2t = (
        candidate_logits(image_emb, text_emb, t2i_c, model),
        candidate_logits(text_emb, image_emb, i2t_c, model),
    )
    w = dual_weight(fusion)
    owner = np.asarray(t2i)[i2t_c]
    own = np.arange(len(i2t_c))
    out: dict[str, Any] = {"dual_weight": w}
    for n in sorted(set(tops)):
        n_t, n_i = min(n, t2i_c.shape[1]), min(n, i2t_c.shape[1])
        row: dict[str, Any] = {"top": n}
        for name, scores, _cands, hits, query, m in (
            ("rerank_t2i", s_t2i, t2i_c, t2i_c, t2i, n_t),
            ("rerank_combined_t2i", s_t2i + w * d_t2i, t2i_c, t2i_c, t2i, n_t),
            ("rerank_i2t", s_i2t, i2t_c, owner, own, n_i),
            ("rerank_combined_i2t", s_i2t + w * d_i2t, i2t_c, owner, own, n_i),
        ):
            row.update({f"{name}_R@{k}": v for k, v in _recall_owned(scores[:, :m], hits[:, :m], query, ks).items()})
        out[str(n)] = row
    return out


def candidate_logits(image_emb: np.ndarray, text_emb: np.ndarray, candidates: np.ndarray, model: Any) -> np.ndarray:
    """The dual encoder's ``logit_scale * cosine`` of each (text, candidate image), shaped like ``candidates``.

    The cosines are the exact grid scores ``top_candidates`` ranked by, rescaled.
    """
    scale = float(model.logit_scale.detach().float().exp().clamp(max=100)) if hasattr(model, "logit_scale") else 1.0
    images, image_scale = exact_grid(np.asarray(image_emb, np.float32))
    texts, text_scale = exact_grid(np.asarray(text_emb, np.float32))
    rows = np.broadcast_to(np.arange(len(texts))[:, None], candidates.shape)
    cosine = _pair_scores(texts, images, rows, np.asarray(candidates)) / (text_scale * image_scale)
    return scale * cosine


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
        pixels = torch.stack([preprocess(load_eval_image(r["image"], size)) for r in rows[s : s + batch_size]]).to(
            device, dtype
        )
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
    precision: str | None = None,
) -> dict[str, Any]:
    """JSON-able metrics of a checkpoint folder, a model spec or an ``Encoder`` on a manifest split.

    Recall@1/5/10 both directions; with a fusion head and ``rerank_top > 0`` also the
    text -> image recall after fusion re-ranking of the top ``rerank_top``; with a
    classifier head, its accuracy on the labelled rows. ``precision`` (see ``_unpack``:
    fp32 unless named) is reported as ``precision``.
    """
    from mbm.train.data import load_rows

    model, preprocess, tokenizer, heads, name, used = _unpack(checkpoint_or_encoder, device, precision)
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


EVAL_PRECISION = "fp32"  # what a named model and a checkpoint folder both get unless told otherwise


def _unpack(source: Any, device: str, precision: str | None = None) -> tuple[Any, Any, Any, dict, str, str]:
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
