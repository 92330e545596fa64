"""The fusion head's architecture as data: read from ``mbm_heads.json`` without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

POOLS = ("mean", "query")


@dataclass
class FusionConfig:
    """Architecture of a ``FusionModel``; stored in ``mbm_heads.json`` beside the weights."""

    width: int = 256
    layers: int = 2
    heads: int = 4
    text_dim: int = 384
    image_dim: int = 256
    dropout: float = 0.0
    mlp_ratio: float = 4.0
    pool: str = "mean"  # "mean": masked mean over text tokens; "query": a learned attention query
    # read only the first N text tokens (0 = all): on CPU a few 32-token keyword lists would pad every pair
    # of a batch to 32 and double the cost; training and re-ranking see the same cut since it lives here
    max_text_tokens: int = 0
    # pool a square map of image tokens (a CNN's 7x7 feature map) to grid x grid before attending (0 = as is):
    # fewer tokens to store per image and to attend over; the cut lives here so training and search agree
    image_grid: int = 0
    # re-ranking orders by fusion logit + dual_weight * the dual encoder's logit (logit_scale * cosine): a product
    # of the two experts; `mbm train-fusion` calibrates the weight on validation (0: the fusion head alone)
    dual_weight: float = 1.0
    # > 0: the image's dual-encoder embedding (this many dimensions) joins its tokens as one more token, so the
    # head starts from what the dual encoder knows (for mbm-lite0, the ImageNet class bridge) instead of
    # relearning it from the trunk's grid
    embed_dim: int = 0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"fusion width {self.width} is not divisible by heads {self.heads}")
        if self.pool not in POOLS:
            raise ValueError(f"fusion pool {self.pool!r} is not known — use one of {POOLS}")

    def to_dict(self) -> dict:
        return asdict(self)
