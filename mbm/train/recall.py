"""Exact retrieval scores and Recall@K: the dual encoder's half of every evaluation.

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

import math
from collections.abc import Sequence
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


def logit_scale_of(model: Any) -> float:
    """The dual encoder's logit scale as re-ranking uses it (``mbm.models.encoder.capped_logit_scale``)."""
    from mbm.models.encoder import capped_logit_scale

    scale = getattr(model, "logit_scale", None)
    return capped_logit_scale(None if scale is None else float(scale.detach().float().exp()))


def candidate_logits(image_emb: np.ndarray, text_emb: np.ndarray, candidates: np.ndarray, model: Any) -> np.ndarray:
    """The dual encoder's ``logit_scale * cosine`` of each (text, candidate image), shaped like ``candidates``.

    The cosines are the exact grid scores ``top_candidates`` ranked by, rescaled.
    """
    scale = logit_scale_of(model)
    images, image_scale = exact_grid(np.asarray(image_emb, np.float32))
    texts, text_scale = exact_grid(np.asarray(text_emb, np.float32))
    rows = np.broadcast_to(np.arange(len(texts))[:, None], candidates.shape)
    cosine = _pair_scores(texts, images, rows, np.asarray(candidates)) / (text_scale * image_scale)
    return scale * cosine
