"""Cross-attention fusion model: text tokens attend over image patch tokens -> one match logit per pair.

Used to re-rank the top-N candidates of a dual-encoder search, and trained beside the
encoders as image-text matching (ITM) with hard negatives.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mbm.models.fusion_config import POOLS, FusionConfig

__all__ = ["POOLS", "FusionConfig", "FusionModel", "pool_image_tokens"]


def pool_image_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, P, D)`` tokens of a square map -> ``(B, grid*grid, D)`` by adaptive average pooling (no-op when
    ``grid`` is 0, when the map is already that size, or when P is not a square)."""
    side = math.isqrt(tokens.shape[1])
    if grid <= 0 or side == grid or side * side != tokens.shape[1]:
        return tokens
    b, p, d = tokens.shape
    square = tokens.transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(square, grid).flatten(2).transpose(1, 2)


class _Block(nn.Module):
    """Pre-LN block: self-attention over text, cross-attention text -> image, MLP."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        w, self.heads, self.dropout = cfg.width, cfg.heads, cfg.dropout
        self.ln_self = nn.LayerNorm(w)
        self.self_qkv = nn.Linear(w, 3 * w)
        self.self_out = nn.Linear(w, w)
        self.ln_cross = nn.LayerNorm(w)
        self.ln_image = nn.LayerNorm(w)
        self.cross_q = nn.Linear(w, w)
        self.cross_kv = nn.Linear(w, 2 * w)
        self.cross_out = nn.Linear(w, w)
        self.ln_mlp = nn.LayerNorm(w)
        hidden = int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(), nn.Linear(hidden, w))
        self.drop = nn.Dropout(cfg.dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def image_kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of image tokens: computed once per distinct image, then shared by its pairs."""
        k, v = self.cross_kv(self.ln_image(image)).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        q, ks, vs = (self._split(t) for t in self.self_qkv(self.ln_self(x)).chunk(3, dim=-1))
        x = x + self.drop(self.self_out(self._merge(F.scaled_dot_product_attention(q, ks, vs, key_mask, dropout_p=p))))
        q = self._split(self.cross_q(self.ln_cross(x)))
        x = x + self.drop(self.cross_out(self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=p))))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


class FusionModel(nn.Module):
    """Scores (text, image) pairs from token-level features of both towers."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.width))
        self.image_in = nn.Sequential(nn.LayerNorm(cfg.image_dim), nn.Linear(cfg.image_dim, cfg.width))
        self.embed_in = nn.Linear(cfg.embed_dim, cfg.width) if cfg.embed_dim > 0 else None
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(cfg.width)
        self.query = nn.Parameter(torch.randn(cfg.width) / math.sqrt(cfg.width)) if cfg.pool == "query" else None
        self.head = nn.Linear(cfg.width, 1)

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        *,
        text_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        image_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Match logits ``(B,)`` for text tokens ``(B,T,Dt)`` with mask ``(B,T)`` (True = real) and image tokens ``(B,P,Dv)``
        (and, for a head with ``embed_dim``, the images' dual-encoder embeddings ``(B,E)``).

        With ``text_index`` / ``image_index`` (both (B,) long) the inputs hold distinct
        texts and images and pair k is (text_index[k], image_index[k]): each image's
        keys/values are then computed once however many pairs use it (ITM scores every
        image three times).
        """
        x, text_mask = self.project_text(text_tokens, text_mask)
        image = self.project_image(image_tokens, image_embedding)
        return self.match(x, text_mask, image, text_index=text_index, image_index=image_index)

    def project_image(self, image_tokens: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Tower tokens ``(B,P,Dv)`` -> the fusion's own image tokens ``(B,G,width)``: what an index stores per
        image (pooled to the config's grid and projected; the rest of the model reads nothing else).

        ``embedding`` ``(B,E)``: the images' normalized dual-encoder embeddings; needed (and then the
        last of the G tokens) when the config has ``embed_dim``, ignored otherwise."""
        image = self.image_in(pool_image_tokens(image_tokens, self.cfg.image_grid))
        if self.embed_in is None:
            return image
        if embedding is None:
            raise ValueError("this fusion head reads the image embedding too: pass project_image(tokens, embedding)")
        return torch.cat([image, self.embed_in(embedding.to(image.dtype))[:, None]], dim=1)

    def project_text(self, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tower tokens ``(B,T,Dt)`` and mask -> the fusion's own text tokens ``(B,T',width)`` and mask (cut to
        ``max_text_tokens``): what an index of texts stores per text."""
        if self.cfg.max_text_tokens > 0:
            text_tokens, text_mask = (
                text_tokens[:, : self.cfg.max_text_tokens],
                text_mask[:, : self.cfg.max_text_tokens],
            )
        text_mask = text_mask.to(torch.bool)
        real = text_mask.any(0).nonzero()
        if len(real):  # columns that are padding in every row change nothing but the cost
            cut = int(real.max()) + 1
            text_tokens, text_mask = text_tokens[:, :cut], text_mask[:, :cut]
        return self.text_in(text_tokens), text_mask

    def match(
        self,
        x: torch.Tensor,
        text_mask: torch.Tensor,
        image: torch.Tensor,
        *,
        text_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Match logits from projected tokens (``project_text`` / ``project_image`` outputs, possibly stored)."""
        x = x.to(self.ln_out.weight.dtype)
        image = image.to(x.dtype)
        text_mask = text_mask.to(torch.bool)
        if text_index is not None:
            x, text_mask = x[text_index], text_mask[text_index]
        # at least one real key per row, or the softmax of an all-masked row is NaN (an empty caption)
        text_mask = text_mask.clone()
        text_mask[:, 0] = True
        key_mask = text_mask[:, None, None, :]
        for block in cast("list[_Block]", self.blocks):
            k, v = block.image_kv(image)
            if image_index is not None:
                k, v = k[image_index], v[image_index]
            x = block(x, key_mask, k, v)
        return self.head(self._pool(self.ln_out(x), text_mask)).squeeze(-1)

    def _pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(x.dtype)
        if self.query is not None:
            scores = (x @ self.query) / math.sqrt(x.shape[-1])
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
            return (x * weights[..., None]).sum(1)
        return (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)

    @torch.no_grad()
    def score(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Match probabilities in [0, 1], without gradients (call ``eval()`` first when dropout is set)."""
        return torch.sigmoid(self.forward(text_tokens, text_mask, image_tokens).float())
