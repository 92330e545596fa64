"""Fusion re-ranking: the top-N of a nearest-neighbour search, re-scored by the cross-attention
fusion head (text tokens attending over image patch tokens) trained beside the encoders."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from mbm.errors import CollectionError, UsageError
from mbm.retrieval.query import QueryLike, as_query
from mbm.retrieval.searcher import Hit

DEFAULT_RERANK_TOP = 20


class FusionReranker:
    """Re-scores (text, image) pairs with ``encoder.heads["fusion"]``; ``Hit.match`` is its probability.

    Hits are ordered by fusion logit + the dual encoder's own logit (``logit_scale * cosine``):
    a product of the two experts, so a fusion head that knows little leaves the dual
    encoder's order mostly as it was instead of scrambling it (measured on the bundled
    model: see its MODEL_CARD.md).
    """

    def __init__(self, encoder: Any):
        if "fusion" not in encoder.heads:
            raise CollectionError(
                f"model {encoder.spec!r} has no fusion head — omit --rerank, or use a model trained by `mbm train`"
            )
        self.encoder = encoder
        self.fusion = encoder.heads["fusion"]

    def _text_tokens(self, texts: Sequence[str]) -> tuple[Any, Any]:
        from mbm.models.tokens import text_tokens

        ids = self.encoder.tokenizer(list(texts)).to(self.encoder.device)
        _, tokens, mask = text_tokens(self.encoder.model, ids)
        return tokens.float(), mask

    def _image_tokens(self, paths: Sequence[str]) -> Any:
        import torch

        from mbm.indexer.decode import decode, read_file
        from mbm.models.tokens import image_tokens

        pixels = []
        for path in paths:
            image, _ = decode(read_file(path)[0], self.encoder.image_size)
            pixels.append(self.encoder.preprocess(image))
        batch = torch.stack(pixels).to(self.encoder.device, next(self.encoder.model.parameters()).dtype)
        return image_tokens(self.encoder.model, batch)[1].float()

    def rerank(self, query: QueryLike, hits: list[Hit], text_collection: bool) -> list[Hit]:
        """Hits sorted by fusion match probability (cosine score kept), ranks renumbered.

        ``query`` is what the search was given (see :func:`mbm.retrieval.query.as_query`)."""
        import torch

        if not hits:
            return hits
        terms = as_query(query)
        if len(terms) != 1 or terms[0].weight <= 0:
            raise UsageError("--rerank needs a single text or image query, not a weighted combination")
        term = terms[0]
        with torch.inference_mode():
            if text_collection:  # image -> text: one image against each candidate caption
                if term.kind != "image":
                    raise UsageError("--rerank on a text collection needs an image query")
                image = self._image_tokens([term.value])
                tokens, mask = self._text_tokens([h.text or "" for h in hits])
                logits = self.fusion(tokens, mask, image.expand(len(hits), -1, -1)).float()
            else:  # text -> image: one caption against each candidate image
                if term.kind != "text":
                    raise UsageError("--rerank on an image collection needs a text query")
                tokens, mask = self._text_tokens([term.value])
                images = self._image_tokens([h.path for h in hits])
                logits = self.fusion(tokens.expand(len(hits), -1, -1), mask.expand(len(hits), -1), images).float()
        scale = float(self.encoder.model.logit_scale.detach().float().exp().clamp(max=100)) if hasattr(self.encoder.model, "logit_scale") else 1.0
        combined = [float(z) + scale * h.score for z, h in zip(logits.tolist(), hits)]
        scored = sorted(zip(combined, torch.sigmoid(logits).tolist(), hits), key=lambda x: (-x[0], -x[2].score))
        return [replace(h, rank=i + 1, match=round(float(p), 6)) for i, (_, p, h) in enumerate(scored)]
