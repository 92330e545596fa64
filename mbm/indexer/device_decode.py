"""JPEG decoding on the model's GPU (nvJPEG through ``torchvision.io.decode_jpeg``) for CUDA encoders.

With a CUDA encoder the model is no longer what limits indexing: on one H200, ViT-B-32 embedded 6,827
images/s while decoding 2400x1600 JPEGs on 16 CPU cores held ``mbm index`` to 350 images/s
(``benchmarks/gpu.py``). So for a CUDA encoder the decoding threads read, hash and parse only the
header of a plain JPEG (size, EXIF date, camera, orientation: ``decode.jpeg_header``) and hand on its
bytes; the embedding stage decodes a batch of them on the GPU, turns them upright, and applies the
model's preprocessing there: the short side resized to the model's size (bicubic or bilinear, with
antialiasing, rounded to 8 bits as Pillow's resize is), the centre crop, ``/ 255`` and the mean/std
normalization, as ``mbm.models.preprocess`` does on the CPU. The pixels differ a little from the CPU
path's (that one decodes at a reduced DCT scale first), as different hardware's floats do.

Everything else (PNG, WebP, HEIC, CMYK or multi-picture JPEGs) and any JPEG nvJPEG refuses is decoded on
the CPU as before. ``MBM_DEVICE_DECODE=0`` turns this off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

ENV_SWITCH = "MBM_DEVICE_DECODE"
CHUNK = 32  # JPEGs decoded at once at most: their full-size pixels are on the GPU together
CHUNK_PIXELS = 400_000_000  # and at most this many of them (1.2 GB of RGB; a 12 MP photo is 36 MB)


def device_pixels(device: str, cfg: Mapping[str, Any] | None) -> DevicePixels | None:
    """A GPU JPEG decoder for an encoder on ``device`` with preprocess config ``cfg``, or None (the CPU decodes)."""
    if not device.startswith("cuda") or cfg is None or os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    from mbm.models.preprocess import supported

    if not supported(cfg):
        return None
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401 - its GPU path is what is asked for
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return DevicePixels(cfg, device)


class DevicePixels:
    """``pixels(datas, orientations)``: preprocessed ``(3, S, S)`` float32 tensors on the device, None where a
    JPEG could not be decoded there (the caller decodes those on the CPU)."""

    def __init__(self, cfg: Mapping[str, Any], device: str):
        import torch

        size = cfg["size"]
        self.size = int(size if isinstance(size, int) else size[0])
        self.mode = cfg.get("interpolation") or "bicubic"
        self.device = device
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=device).view(3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=device).view(3, 1, 1)

    def __call__(
        self, datas: Sequence[bytes], orientations: Sequence[int], pixels: Sequence[int] | None = None
    ) -> list[Any]:
        """``pixels``: each JPEG's width x height, to bound what is decoded at once (see ``CHUNK_PIXELS``)."""
        out: list[Any] = []
        for chunk in chunks(pixels or [0] * len(datas)):
            images = self._decode([datas[i] for i in chunk])
            for image, i in zip(images, chunk):
                out.append(None if image is None else self._preprocess(upright(image, orientations[i])))
        return out

    def _decode(self, datas: Sequence[bytes]) -> list[Any]:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
        except (RuntimeError, ValueError) as e:  # one bad file fails the batch: find it
            log.debug("GPU JPEG batch failed (%s); decoding one by one", e)
        images: list[Any] = []
        for data in encoded:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except (RuntimeError, ValueError):
                images.append(None)
        return images

    def _preprocess(self, image: Any) -> Any:
        import torch
        import torch.nn.functional as F

        _, h, w = image.shape
        size = self.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        x = image.float()
        if (new_w, new_h) != (w, h):
            x = F.interpolate(x[None], size=(new_h, new_w), mode=self.mode, antialias=True, align_corners=False)[0]
            x = x.clamp_(0, 255).round_()  # 8-bit pixels, as Pillow's resize returns them
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        x = x[:, top : top + size, left : left + size]
        return ((x / 255.0 - self.mean) / self.std).to(torch.float32)


def chunks(pixels: Sequence[int]) -> list[list[int]]:
    """Consecutive indexes, at most ``CHUNK`` and ``CHUNK_PIXELS`` pixels a group (a larger picture alone)."""
    out: list[list[int]] = []
    total = 0
    for i, n in enumerate(pixels):
        if not out or len(out[-1]) >= CHUNK or total + n > CHUNK_PIXELS:
            out.append([])
            total = 0
        out[-1].append(i)
        total += n
    return out


def upright(image: Any, orientation: int) -> Any:
    """``(3, H, W)`` turned as EXIF ``orientation`` says (Pillow's transposes in ``decode._TRANSPOSE``)."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def decode_on_device(batch: list[Any], decoder: DevicePixels, min_side: int, cpu_pixels: Any, max_pixels: int) -> None:
    """Replace each ``Encoded`` JPEG of ``batch`` (in place) by a ``Decoded`` one with pixels on the device; a
    JPEG the GPU refuses is decoded on the CPU, and one that fails there too becomes ``Failed``."""
    from mbm.indexer.decode import DecodeError, decode
    from mbm.indexer.embed import Decoded, Encoded, Failed

    where = [i for i, r in enumerate(batch) if isinstance(r, Encoded)]
    if not where:
        return
    sizes = [batch[i].facts.width * batch[i].facts.height for i in where]
    pixels = decoder([batch[i].data for i in where], [batch[i].orientation for i in where], sizes)
    for i, p in zip(where, pixels):
        r = batch[i]
        if p is None:
            try:
                image, _ = decode(r.data, min_side, max_pixels=max_pixels)
                p = cpu_pixels(image)
            except DecodeError as e:
                batch[i] = Failed(r.entry, str(e))
                continue
        batch[i] = Decoded(r.entry, r.hash, p, r.facts)
