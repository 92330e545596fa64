"""``Encoder``: one dual encoder behind ``encode_image*`` / ``encode_text*`` (L2-normalized float32 rows).

An Encoder is either loaded whole (the open_clip model, its preprocess, tokenizer and heads) or
*started fast* (``mbm.models.light``): its identity (spec, fingerprint, dim, image size,
preprocess, fusion config) is known from a record of an earlier full load, its image side
loads in a background thread (ONNX Runtime, or mbm's own ViT) while the caller already decodes
images, and the open_clip parts load only when something asks for them (``model``,
``tokenizer``, ``encode_text_batch`` with fusion tokens...). Both give the same vectors: a fast
start is only recorded after its image side agreed with the full model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mbm.errors import CollectionError
from mbm.models.fusion_config import FusionConfig

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from mbm.models.preprocess import PixelTransform

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What a full load builds: the open_clip model, its transform and tokenizer, and the heads."""

    model: Any
    preprocess: Any
    tokenizer: Any
    heads: dict[str, Any] = field(default_factory=dict)


class Background:
    """A function run once in a daemon thread; ``result()`` waits for it and re-raises its error."""

    def __init__(self, fn: Callable[[], Any], name: str):
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class FusionHandle:
    """The fusion head of a fast-started encoder: its config without torch; anything else loads the head."""

    def __init__(self, cfg: FusionConfig, load: Callable[[], Any]):
        self.cfg = cfg
        self._load = load

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_load":  # copy/pickle probes, and a half-built handle
            raise AttributeError(name)
        return getattr(self._load(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._load()(*args, **kwargs)


class _TensorPixels:
    """``preprocess`` of a fast-started encoder: the numpy transform, as a torch tensor (what callers stack)."""

    def __init__(self, pixels: PixelTransform):
        self.pixels = pixels

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.pixels(image))


@dataclass
class _FastStart:
    """How a fast-started encoder gets its parts: the image side loading now, the rest when asked for."""

    engine: Background | None
    full: Callable[[], Parts]
    heads: Callable[[], dict[str, Any]]
    text: Callable[[], Any] | None
    text_cached: Callable[[], bool] | None = None  # whether ``text`` has an export to load (without loading it)
    lock: threading.RLock = field(default_factory=threading.RLock)


_LAZY = ("model", "preprocess", "tokenizer", "heads")


@dataclass(eq=False)
class Encoder:
    """A dual encoder: ``encode_*`` return L2-normalized float32 rows (see the module docstring).

    For a fast-started encoder ``model``, ``tokenizer`` and ``preprocess`` load on first access (``preprocess``
    is then the numpy transform ``pixels`` as torch tensors until the model is loaded), ``heads`` only the heads.
    """

    spec: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    precision: str
    fingerprint: str
    dim: int
    image_size: int
    description: str = ""
    heads: dict[str, Any] = field(default_factory=dict)  # fusion / classifier when the checkpoint has them
    load_seconds: dict[str, float] = field(default_factory=dict)  # where loading went: imports, build, weights...
    image_onnx: Any = None  # mbm.models.image_onnx.ImageSideExport: fp32 CPU timm towers in ONNX Runtime
    pixels: PixelTransform | None = None  # torch-free preprocess (numpy), equal to ``preprocess``
    preprocess_cfg: dict[str, Any] | None = None  # what ``pixels`` was made from (size, mean, std, interpolation)
    fusion_cfg: FusionConfig | None = None
    logit_scale_value: float | None = None
    _fast: _FastStart | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "started fast"
        return f"Encoder({self.spec!r}, {self.device}, {self.precision}, {self.fingerprint}, dim {self.dim}, {state})"

    @classmethod
    def started(
        cls,
        spec: str,
        device: str,
        precision: str,
        fingerprint: str,
        dim: int,
        image_size: int,
        description: str,
        *,
        engine: Background,
        pixels: PixelTransform,
        full: Callable[[], Parts],
        heads: Callable[[], dict[str, Any]],
        fusion_cfg: FusionConfig | None,
        text: Callable[[], Any] | None = None,
        text_cached: Callable[[], bool] | None = None,
    ) -> Encoder:
        """A fast-started encoder (``mbm.models.light``): ``engine`` yields the image side, ``full`` the rest."""
        enc = cls(spec, None, None, None, device, precision, fingerprint, dim, image_size, description)
        enc.pixels, enc.fusion_cfg = pixels, fusion_cfg
        for name in _LAZY:  # looked up through __getattr__ from now on
            delattr(enc, name)
        enc._fast = _FastStart(engine, full, heads, text, text_cached)
        return enc

    # -- the parts, loaded when asked for ------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        fast = self.__dict__.get("_fast")
        if name not in _LAZY or fast is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name == "preprocess" and self.pixels is not None:
            return _TensorPixels(self.pixels)
        with fast.lock:
            if name == "heads":
                if "heads" not in self.__dict__:
                    self.heads = fast.heads()
                return self.__dict__["heads"]
            self.parts()
        return self.__dict__[name]

    @property
    def loaded(self) -> bool:
        """Whether the open_clip model is loaded (always, unless the encoder was started fast)."""
        return "model" in self.__dict__

    def parts(self) -> Parts:
        """The open_clip model, transform, tokenizer and heads (loaded now if the encoder was started fast)."""
        fast = self._fast
        if fast is not None and not self.loaded:
            with fast.lock:
                if not self.loaded:
                    parts = fast.full()
                    self.model, self.preprocess, self.tokenizer, self.heads = (
                        parts.model, parts.preprocess, parts.tokenizer, parts.heads
                    )  # fmt: skip
        return Parts(self.model, self.preprocess, self.tokenizer, self.heads)

    @property
    def has_fusion(self) -> bool:
        if "heads" in self.__dict__:
            return "fusion" in self.heads
        return self.fusion_cfg is not None

    @property
    def fusion(self) -> Any:
        """The fusion re-ranking head (``mbm.models.fusion.FusionModel``), or None when the checkpoint has none."""
        if "heads" in self.__dict__:
            return self.heads.get("fusion")
        if self.fusion_cfg is None:
            return None
        return FusionHandle(self.fusion_cfg, lambda: self.heads["fusion"])

    def require_fusion(self) -> Any:
        """The fusion head, or a CollectionError naming the model and how to get one."""
        if self.fusion is None:
            raise no_fusion_head(self.spec)
        return self.fusion

    @property
    def logit_scale(self) -> float | None:
        """``exp(model.logit_scale)`` (CLIP's temperature), without loading the model when it is recorded."""
        if not self.loaded and self.logit_scale_value is not None:
            return self.logit_scale_value
        scale = getattr(self.model, "logit_scale", None)
        return None if scale is None else float(scale.detach().float().exp())

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the weights (``precision``)."""
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    # -- images ---------------------------------------------------------------------------------
    def encode_image_tensors(self, pixels: Any) -> np.ndarray:
        """Encode a preprocessed batch ``(N, 3, H, W)`` (numpy or torch)."""
        return self.encode_image_batch(pixels, tokens=False)[0]

    def encode_image_batch(self, pixels: Any, tokens: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``(embeddings (N, dim) float32, fusion image tokens (N, G, width) float16 or None)`` of a preprocessed
        batch (numpy or torch), from one forward pass; tokens only when asked and the model has a fusion head."""
        engine = self._started_engine()
        if engine is not None:
            return engine.encode(pixels, tokens)
        import torch

        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        if self.image_onnx is not None and self.image_onnx.fusion is self.fusion:  # exported with this head
            out = self.image_onnx.encode(pixels.to(self.torch_dtype), tokens, self._torch_image_batch)
            if out is not None:
                return out
        return self._torch_image_batch(pixels, tokens)

    def _started_engine(self) -> Any:
        """The fast start's image side (waiting for it to load), or None: never started, or it failed to load."""
        fast = self._fast
        if fast is None or fast.engine is None:
            return None
        try:
            return fast.engine.result()
        except Exception as e:  # noqa: BLE001 - the full model computes the same vectors
            log.info("fast start failed (%s): loading the whole model", e)
            fast.engine = None
            return None

    def _torch_image_batch(self, pixels: torch.Tensor, tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        from mbm.models.image_towers import is_conv_tower
        from mbm.models.tokens import image_tokens

        model, fusion = self.model, self.fusion if tokens else None
        with torch.inference_mode():
            pixels = pixels.to(self.device, self.torch_dtype, non_blocking=True)
            if is_conv_tower(model):
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            if fusion is None:
                return torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1).cpu().numpy(), None
            pooled, cells = image_tokens(model, pixels)
            emb = torch.nn.functional.normalize(pooled.float(), dim=-1)
            # a head with FusionConfig.embed_dim reads the embedding as one more token (others ignore it)
            projected = fusion.project_image(cells.to(self.device, torch.float32), emb.to(self.device))
            return emb.cpu().numpy(), projected.to(torch.float16).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        if self.pixels is not None:
            return self.encode_image_tensors(np.stack([self.pixels(im) for im in images]))
        import torch

        return self.encode_image_tensors(torch.stack([self.preprocess(im) for im in images]))

    # -- texts ----------------------------------------------------------------------------------
    @property
    def text_engine(self) -> str:
        """What ``encode_texts`` runs on, told without loading it: "onnx" (a fast start's exported query tower)
        or "torch-<precision>". The two give vectors equal only within their precision."""
        fast = self._fast
        if fast is not None and fast.text is not None and fast.text_cached is not None and not self.loaded:
            if fast.text_cached():
                return "onnx"
        return f"torch-{self.precision}"

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        fast = self._fast
        if fast is not None and fast.text is not None and not self.loaded:  # the model's cached query tower, no torch
            tower = fast.text()
            if tower is not None:
                return tower.encode_texts(list(texts))
        return self.encode_text_batch(texts, tokens=False, batch_size=batch_size)[0]

    def encode_text_batch(
        self, texts: Sequence[str], tokens: bool = True, batch_size: int = 256
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """``(embeddings (N, dim) float32, fusion text tokens or None)`` from one forward pass: per text its real
        tokens only, ``(n_i, width)`` float16; tokens only when asked and the model has a fusion head."""
        import torch

        from mbm.models.tokens import text_tokens

        fusion = self.fusion if tokens else None
        if not texts:
            return np.zeros((0, self.dim), np.float32), None if fusion is None else []
        model, tokenizer = self.model, self.tokenizer
        chunks: list[np.ndarray] = []
        kept: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                ids = tokenizer(list(texts[i : i + batch_size])).to(self.device)
                if fusion is None:
                    out = model.encode_text(ids)
                else:
                    out, cells, mask = text_tokens(model, ids)
                    x, mask = fusion.project_text(cells.float(), mask)
                    x = x.to(torch.float16).cpu().numpy()
                    kept.extend(row[m] for row, m in zip(x, mask.cpu().numpy()))
                chunks.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks), None if fusion is None else kept


MAX_LOGIT_SCALE = 100.0  # CLIP training's clamp on exp(logit_scale)


def capped_logit_scale(scale: float | None) -> float:
    """What re-ranking and its metrics multiply the dual encoder's cosines by: ``scale`` (``exp(logit_scale)``) at
    most ``MAX_LOGIT_SCALE``, 1 for a model without one."""
    return 1.0 if scale is None else min(float(scale), MAX_LOGIT_SCALE)


def rerank_logit_scale(encoder: Encoder) -> float:
    """``capped_logit_scale`` of a loaded or fast-started encoder."""
    return capped_logit_scale(encoder.logit_scale)


def no_fusion_head(spec: str) -> CollectionError:
    return CollectionError(
        f"model {spec!r} has no fusion head, so it cannot re-rank — search without --rerank, or index into a new "
        "--collection with a model that has one: the bundled mbm-offline, one trained by `mbm train`, or this one "
        "given a head by `mbm train-fusion` (see README, `mbm train`)"
    )
