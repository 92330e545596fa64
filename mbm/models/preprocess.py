"""open_clip's evaluation preprocessing in Pillow + numpy: the same pixels without torch or torchvision.

open_clip's ``image_transform(size, is_train=False)`` for the usual configuration (resize mode
"shortest" to a square, bicubic or bilinear) is ``Resize(size)`` (the short side to ``size``,
the long side ``int(size * long / short)``; Pillow does the resampling, with antialiasing),
``CenterCrop(size)`` (offsets ``int(round((side - size) / 2))``), ``ToTensor`` (``/ 255`` in
float32) and ``Normalize`` (``(x - mean) / std`` in float32). ``pixel_transform`` repeats those
steps on the same Pillow calls, so the arrays equal torchvision's tensors value for value
(``tests/test_startup.py`` compares them). Other configurations (``longest``, ``squash``,
non-square sizes) return None: the caller keeps open_clip's own transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

PixelTransform = Callable[[Image.Image], np.ndarray]


def _square_size(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return None


def supported(cfg: Mapping[str, Any]) -> bool:
    """Whether ``pixel_transform`` reproduces open_clip's transform for this preprocess config."""
    return (
        _square_size(cfg.get("size")) is not None
        and (cfg.get("resize_mode") or "shortest") == "shortest"
        and (cfg.get("interpolation") or "bicubic") in _RESAMPLE
        and (cfg.get("mode") or "RGB") == "RGB"
        and len(cfg.get("mean") or ()) == 3
        and len(cfg.get("std") or ()) == 3
    )


def pixel_transform(cfg: Mapping[str, Any]) -> PixelTransform | None:
    """A function from a Pillow image to a float32 ``(3, size, size)`` array, or None (see module docstring)."""
    if not supported(cfg):
        return None
    size = _square_size(cfg["size"])
    assert size is not None
    resample = _RESAMPLE[cfg.get("interpolation") or "bicubic"]
    mean = np.asarray(cfg["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg["std"], np.float32).reshape(3, 1, 1)

    def transform(image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)  # a new C-ordered array
        np.divide(pixels, np.float32(255), out=pixels)  # in place, each step rounded as torchvision rounds it
        np.subtract(pixels, mean, out=pixels)
        return np.divide(pixels, std, out=pixels)

    return transform
