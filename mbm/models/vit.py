"""open_clip's CLIP ``VisionTransformer`` rebuilt from torch modules alone, for a fast start.

Importing open_clip costs seconds (it imports torchvision, timm and transformers) and its
factory builds the text tower and random-initializes every weight before loading any. To index
images a CLIP checkpoint needs only its image tower, so for the plain configuration (class
token, learnable positions, pre-LN, ``nn.MultiheadAttention`` blocks, ``ln_post`` + ``proj``;
``supported`` says which) this module builds the same modules under the same names
(``visual.*`` of the state dict), on the meta device, and assigns the checkpoint's tensors
read from its safetensors file. The modules are torch's own (``nn.MultiheadAttention``,
``nn.GELU``, LayerNorm cast back to its input dtype, as open_clip does for fp32-built models),
so the outputs equal open_clip's; ``mbm.models.light`` checks that on a probe batch before
it records a checkpoint as startable this way.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# CLIPVisionCfg fields and the values this module reproduces (open_clip's defaults)
_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None,
    "patch_dropout": 0.0,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
}
_SHAPE_KEYS = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"}
_IGNORED_KEYS = {"attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool", "timm_proj"}
_IGNORED_KEYS |= {"timm_proj_bias", "timm_drop", "timm_drop_path"}
_MODEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale"}
_MODEL_KEYS |= {"init_logit_bias", "nonscalar_logit_scale"}


def supported(model_cfg: dict[str, Any]) -> bool:
    """Whether ``build`` reproduces open_clip's image tower for this model config."""
    vision = model_cfg.get("vision_cfg")
    if not isinstance(vision, dict) or set(model_cfg) - _MODEL_KEYS:
        return False
    if set(vision) - _SHAPE_KEYS - set(_DEFAULTS) - _IGNORED_KEYS:
        return False
    if any(vision.get(k, v) != v and not (k == "block_type" and vision[k] == "default") for k, v in _DEFAULTS.items()):
        return False
    return all(isinstance(vision.get(k, 1), int) for k in ("layers", "patch_size", "image_size"))


class LayerNorm(nn.LayerNorm):
    """open_clip's LayerNorm: computed in the input dtype and cast back to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, act: type[nn.Module]):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: type[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(width, heads, mlp_ratio, act) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTower(nn.Module):
    """``forward(pixels) -> (pooled (B, embed_dim), patch tokens (B, P, width))``, as open_clip's
    ``VisionTransformer`` with ``output_tokens``; ``pooled`` equals ``model.encode_image(pixels)``."""

    def __init__(self, model_cfg: dict[str, Any]):
        super().__init__()
        cfg = model_cfg["vision_cfg"]
        width, patch, size = int(cfg.get("width", 768)), int(cfg.get("patch_size", 16)), int(cfg.get("image_size", 224))
        heads = width // int(cfg.get("head_width", 64))
        act = QuickGELU if model_cfg.get("quick_gelu") else nn.GELU
        self.image_size = size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((size // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = _Transformer(width, int(cfg.get("layers", 12)), heads, float(cfg.get("mlp_ratio", 4.0)), act)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, int(model_cfg["embed_dim"])))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_post(self.transformer(self.ln_pre(x)))
        return x[:, 0] @ self.proj, x[:, 1:]


def build(model_cfg: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype) -> VisionTower:
    """The image tower with ``state``'s ``visual.*`` tensors (no random initialization), cast to ``dtype``."""
    with torch.device("meta"):
        tower = VisionTower(model_cfg)
    visual = {k[len("visual.") :]: v.to(dtype) for k, v in state.items() if k.startswith("visual.")}
    tower.load_state_dict(visual, strict=True, assign=True)
    return tower.eval().requires_grad_(False)


def read_visual_state(weights: Path) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of a safetensors checkpoint (the text tower's are never read)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("visual.")}
