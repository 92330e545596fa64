"""Fusion re-ranking metrics: the dual encoder's top candidates re-ordered by the fusion head.

Scores and ties follow ``mbm.train.recall``: candidates come from its exact grid scores
(ties to the lower row) and a re-ordered row keeps that order among equal fusion scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mbm.retrieval.hubness import combined_scores, expert_weights
from mbm.train.recall import KS, candidate_logits, logit_scale_of, top_candidates

if TYPE_CHECKING:
    from mbm.models.fusion import FusionModel
    from mbm.retrieval.hubness import RerankCalibration


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
    fusion: FusionModel,
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
    fusion: FusionModel,
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
    fusion: Any,
    model: Any,
    data: dict[str, Any],
    tops: Sequence[int],
    ks: Sequence[int] = KS,
    calibration: RerankCalibration | None = None,
) -> dict[str, Any]:
    """Both directions re-ranked over the dual encoder's top N for each N in ``tops``: the fusion head alone
    (``rerank_*``) and the order search uses (``rerank_combined_*``), one entry per N.

    With the model's ``calibration`` (``mbm.retrieval.hubness``) both directions combine as search does then:
    ``fusion_weight`` x fusion logit + the dual logit, hubness-corrected for text -> image, where
    ``rerank_hub_t2i_*`` is the correction alone, without the fusion head. Where pictures share a concept group (``data["groups"]``),
    ``*_concept_t2i_*`` count a hit where the first candidate of the caption's group (its own picture or
    another drawing of its concept) ranks, for the dual encoder's order (``dual_concept_t2i_*``) and the
    re-ranked ones: a caption such as "heart" names 29 test pictures, and only one of them can be first.

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
    fw, dw = expert_weights(calibration, w)  # as search weighs the experts
    penalty = None if calibration is None else logit_scale_of(model) * calibration.penalty(image_emb)[t2i_c]
    orders = [("rerank_t2i", s_t2i), ("rerank_combined_t2i", combined_scores(s_t2i, d_t2i, fw, dw, penalty))]
    if penalty is not None:  # the correction alone, without the fusion head
        orders.append(("rerank_hub_t2i", combined_scores(s_t2i, d_t2i, 0.0, dw, penalty)))
    combined_i2t = combined_scores(s_i2t, d_i2t, fw, dw)  # pictures are the queries here: no hubness term
    groups: list[Any] = list(data.get("groups") or [])
    group_of: np.ndarray | None = None
    if len(set(groups)) < len(groups):  # some pictures share a concept group
        group_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    owner = np.asarray(t2i)[i2t_c]
    own = np.arange(len(i2t_c))
    out: dict[str, Any] = {"dual_weight": w}
    if calibration is not None:
        out["calibration"] = {
            "beta": calibration.beta,
            "hub_weight": calibration.hub_weight,
            "fusion_weight": calibration.fusion_weight,
            "bank": len(calibration.bank),
        }
    for n in sorted(set(tops)):
        n_t, n_i = min(n, t2i_c.shape[1]), min(n, i2t_c.shape[1])
        row: dict[str, Any] = {"top": n}
        for name, scores in orders:
            row.update({f"{name}_R@{k}": v for k, v in _recall_owned(scores[:, :n_t], t2i_c[:, :n_t], t2i, ks).items()})
        if group_of is not None:  # the first candidate of the caption's concept group, in each order
            for name, scores in [("dual_t2i", d_t2i), *orders[1:]]:
                got = _recall_owned(scores[:, :n_t], group_of[t2i_c[:, :n_t]], group_of[np.asarray(t2i)], ks)
                row.update({f"{name.replace('_t2i', '_concept_t2i')}_R@{k}": v for k, v in got.items()})
        for name, scores in (("rerank_i2t", s_i2t), ("rerank_combined_i2t", combined_i2t)):
            row.update({f"{name}_R@{k}": v for k, v in _recall_owned(scores[:, :n_i], owner[:, :n_i], own, ks).items()})
        out[str(n)] = row
    return out
