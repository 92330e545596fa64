"""Token-level outputs of open_clip towers, for the fusion model.

``image_tokens`` / ``text_tokens`` return the pooled embedding exactly as
``model.encode_image`` / ``model.encode_text`` compute it (unnormalized) together with
the per-token features it was pooled from:

- open_clip ``VisionTransformer`` and ``TextTransformer`` / ``HFTextEncoder`` have an
  ``output_tokens`` flag that makes ``forward`` return ``(pooled, tokens)``; it is
  switched on for one call. Vision tokens are the patch tokens after ``ln_post``
  (class token dropped); HF tokens are ``last_hidden_state``.
- open_clip ``CLIP`` keeps its text tower's parts on the model itself, so the tokens
  are captured from ``ln_final`` while ``encode_text`` runs.

Masks are True for real tokens: ``token_id != pad`` (0 for CLIP BPE and BERT).

For a frozen HF text transformer the training loop caches ``hf_hidden`` once per
caption and re-applies only the trainable pooler + projection (``hf_pool``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from mbm.errors import ModelError

# poolers that depend on last_hidden_state and the mask only, so a cached hidden state reproduces them
_CACHEABLE_POOLERS = ("MeanPooler", "ClsLastHiddenStatePooler")


@contextlib.contextmanager
def _tokens_on(module: Any) -> Iterator[None]:
    previous = module.output_tokens
    module.output_tokens = True
    try:
        yield
    finally:
        module.output_tokens = previous


def image_tokens(model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (B,E), patch_tokens (B,P,D))``; pooled equals ``model.encode_image(pixels)``.

    open_clip ``VisionTransformer``: the patch tokens after ``ln_post``. open_clip ``TimmModel``
    (a timm CNN such as ConvNeXt): the last feature map, one token per cell.
    """
    visual = model.visual
    if hasattr(visual, "trunk") and hasattr(visual, "head") and hasattr(visual.trunk, "forward_features"):
        features = visual.trunk.forward_features(pixels)  # TimmModel.forward is head(trunk(x)), trunk = head(features)
        pooled = visual.head(visual.trunk.forward_head(features))
        return pooled, features.flatten(2).transpose(1, 2) if features.ndim == 4 else features
    if not hasattr(visual, "output_tokens"):
        raise ModelError(
            f"image tower {type(visual).__name__} cannot return patch tokens — fusion needs an open_clip "
            "VisionTransformer or a timm model"
        )
    with _tokens_on(visual):
        pooled, tokens = visual(pixels)
    return pooled, tokens


def is_hf_text(model: Any) -> bool:
    """True when the text tower is open_clip's ``HFTextEncoder`` (a Hugging Face transformer)."""
    text = getattr(model, "text", None)
    return text is not None and hasattr(text, "transformer") and hasattr(text, "config") and hasattr(text, "pooler")


def text_pad_id(model: Any) -> int:
    text = getattr(model, "text", None)
    if text is None:
        return 0  # open_clip CLIP with the BPE tokenizer pads with 0
    if is_hf_text(model):
        return int(text.config.pad_token_id or 0)
    return int(getattr(text, "pad_id", 0))


def text_tokens(model: Any, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled (B,E), tokens (B,T,D), mask (B,T) bool)``; pooled equals ``model.encode_text(token_ids)``."""
    mask = token_ids != text_pad_id(model)
    text = getattr(model, "text", None)
    if text is None:
        captured: dict[str, torch.Tensor] = {}
        handle = model.ln_final.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
        try:
            pooled = model.encode_text(token_ids)
        finally:
            handle.remove()
        return pooled, captured["x"], mask
    if not hasattr(text, "output_tokens"):
        raise ModelError(f"text tower {type(text).__name__} cannot return token features")
    with _tokens_on(text):
        pooled, tokens = text(token_ids)
    if tokens.shape[1] == mask.shape[1] - 1:  # a CLS pooler drops the first token from the sequence
        mask = mask[:, 1:]
    return pooled, tokens, mask


def trim_padding(token_ids: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop the columns that are padding in every row (HF towers only: CLIP's positional table is fixed-size)."""
    real = (token_ids != pad_id).any(0).nonzero()
    return token_ids[:, : int(real.max()) + 1] if len(real) else token_ids[:, :1]


def supports_hidden_cache(model: Any) -> bool:
    """Whether ``hf_hidden`` + ``hf_pool`` reproduce ``encode_text`` (HF tower with a cacheable pooler)."""
    return is_hf_text(model) and type(model.text.pooler).__name__ in _CACHEABLE_POOLERS


def hf_hidden(model: Any, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of the HF transformer ``(B,T,D)`` and the mask ``(B,T)``: the part that a frozen tower fixes."""
    text = model.text
    mask = token_ids != text_pad_id(model)
    out = text.transformer(input_ids=token_ids, attention_mask=mask.long())
    return out.last_hidden_state, mask


def hf_pool(model: Any, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The HF tower's pooler + projection over given hidden states: ``encode_text`` from ``hf_hidden``'s output."""
    text = model.text
    pooled = text.pooler(SimpleNamespace(last_hidden_state=hidden), mask.long())
    return text.proj(pooled)
