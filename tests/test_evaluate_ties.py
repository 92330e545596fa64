"""Exact score ties (duplicate embeddings) are decided by index, the same way in every code path.

Before scores were exact, a caption's score with its own image (an einsum) was compared
with its score against an identical image (a matmul): float rounding noise, not the
index, decided which of two equal pictures ranked first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PairFusion

from mbm.train.recall import candidate_logits, exact_grid, recall_at_k, top_candidates
from mbm.train.rerank_metrics import rerank_recall


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _twins(seed: int = 0, n: int = 60, d: int = 48, pairs: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Unit image rows where ``pairs`` rows are copies of an earlier row; returns (images, later-twin mask)."""
    rng = np.random.default_rng(seed)
    img = _unit_rows(rng, n, d)
    later = np.zeros(n, bool)
    for j in rng.choice(np.arange(1, n), pairs, replace=False):
        img[j] = img[rng.integers(0, j)]
        later[j] = True
    # a copy of a copy is still a later twin; an earlier row that was overwritten is one too
    for j in range(n):
        later[j] = any(np.array_equal(img[j], img[i]) for i in range(j))
    return img, later


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_caption_equal_to_a_duplicated_image_ranks_behind_the_earlier_copy(seed):
    img, later = _twins(seed)
    t2i = np.arange(len(img))
    # each caption IS its image's embedding: cosine 1 with its image and with every identical copy,
    # < 1 with anything else; the lower index wins a tie, so a later copy's caption ranks second
    out = recall_at_k(img, img.copy(), t2i, ks=(1, 2, 3))
    assert later.sum() >= 15
    assert out["t2i_R@1"] == pytest.approx(1 - later.mean()), "ties must go to the lower image index"
    # image -> text: a later copy's own caption ties with the earlier copy's caption, which has the lower index
    assert out["i2t_R@1"] == pytest.approx(1 - later.mean())
    three_copies = any(sum(np.array_equal(img[i], img[j]) for i in range(len(img))) > 2 for j in range(len(img)))
    if not three_copies:
        assert out["t2i_R@2"] == 1.0 and out["i2t_R@2"] == 1.0


def test_recall_with_ties_is_the_same_in_any_chunk_size():
    img, _ = _twins(3)
    rng = np.random.default_rng(3)
    t2i = np.concatenate([np.arange(len(img)), rng.integers(0, len(img), 30)])
    txt = img[t2i] + rng.normal(scale=0.3, size=(len(t2i), img.shape[1])).astype(np.float32)
    txt = np.concatenate([txt, txt[:10]])  # duplicate captions too
    t2i = np.concatenate([t2i, t2i[:10]])
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    full = recall_at_k(img, txt, t2i)
    for chunk in (1, 3, 7, 64):
        assert recall_at_k(img, txt, t2i, chunk=chunk) == full


def test_exact_grid_scores_do_not_depend_on_the_product_shape():
    rng = np.random.default_rng(4)
    a, b = exact_grid(_unit_rows(rng, 37, 256))[0], exact_grid(_unit_rows(rng, 53, 256))[0]
    full = a @ b.T
    assert np.array_equal(full[5:6], a[5:6] @ b.T) and np.array_equal(full[:, 7:8], a @ b[7:8].T)
    assert full[3, 11] == (a[3] * b[11]).sum()
    assert np.array_equal(full, np.round(full))  # integers: exact in float64


def test_top_candidates_puts_identical_images_in_index_order_across_blocks():
    rng = np.random.default_rng(5)
    img = _unit_rows(rng, 23, 40)
    img[9] = img[2]
    img[21] = img[2]  # three copies, in three different blocks of 5 (the last one a short block)
    txt = img[[21, 9, 2, 5]].copy()
    for chunk in (2048, 1, 4, 5, 7):
        top = top_candidates(img, txt, 4, chunk=chunk)
        assert top[:3, :3].tolist() == [[2, 9, 21]] * 3, chunk
        assert top[3, 0] == 5


def test_candidate_logits_of_identical_images_are_identical():
    rng = np.random.default_rng(6)
    img = _unit_rows(rng, 12, 32)
    img[7] = img[1]
    txt = _unit_rows(rng, 5, 32)
    cands = top_candidates(img, txt, 12)
    logits = candidate_logits(img, txt, cands, torch.nn.Module())
    by_image = {}
    for t in range(len(txt)):
        for n, i in enumerate(cands[t]):
            by_image[(t, int(i))] = logits[t, n]
        assert list(cands[t]).index(1) < list(cands[t]).index(7)
        assert by_image[(t, 1)] == by_image[(t, 7)]
        np.testing.assert_allclose(logits[t], txt[t] @ img[cands[t]].T, atol=1e-5)


class _PositionNoiseFusion(PairFusion):
    """A fusion head whose logit depends on the image, plus float noise that depends on the row's
    place in the batch (as batched kernels can): only scoring identical inputs once makes them tie."""

    def pair_logits(self, text_tokens, image_tokens):
        return image_tokens[:, 0, 0] + 1e-6 * torch.arange(len(image_tokens), dtype=torch.float32)


def test_rerank_keeps_identical_images_in_index_order():
    # images 0 and 3 are identical and the best for every text; image 1 and 2 are worse
    image_tokens = torch.tensor([5.0, 1.0, 2.0, 5.0])[:, None, None].expand(4, 2, 1).contiguous()
    text_tokens = torch.zeros(3, 2, 1)
    mask = torch.ones(3, 2, dtype=torch.bool)
    candidates = np.array([[0, 3, 2, 1]] * 3)  # the dual order: ties by index, 0 before 3
    t2i = np.array([0, 3, 0])
    out = rerank_recall(_PositionNoiseFusion(), text_tokens, mask, image_tokens, candidates, t2i, ks=(1, 2))
    # image 0 stays first for every text: texts 0 and 2 hit at 1, text 1 (image 3) at 2
    assert out["rerank_t2i_R@1"] == pytest.approx(2 / 3) and out["rerank_t2i_R@2"] == 1.0
    dual = np.tile([2.0, 2.0, 1.0, 0.5], (3, 1))
    out = rerank_recall(
        _PositionNoiseFusion(), text_tokens, mask, image_tokens, candidates, t2i, ks=(1,), dual_logits=dual
    )
    assert out["rerank_combined_t2i_R@1"] == pytest.approx(2 / 3)
