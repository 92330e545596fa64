"""Style-changing augmentations that keep the caption true.

The calibration run in OFFLINE.md learned each source's drawing style instead of the
objects; these augmentations vary style (line art, posterized flat colour, blur, a new
background, scale and position) while keeping what captions say true:

- no hue shift or colour jitter: "red car" must stay red;
- grayscale only when the caption names no colour;
- horizontal flip only when the caption has no left/right/east/west/clockwise word
  and no letters or digits (a flipped "b" is a "d", a flipped "left arrow" points right);
- a new background colour only behind transparent pixels (or behind a white
  background connected to the border, when the caption does not mention white).

All randomness comes from the ``rng`` passed per call (``numpy.random.Generator``),
so a dataset can make every item's augmentation a function of (seed, epoch, index).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

COLOUR_WORDS = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey gold golden silver "
    "cyan magenta beige turquoise teal navy maroon lime olive indigo tan colorful colourful rainbow "
    "blond blonde crimson scarlet".split()
)
# words whose meaning a mirror image changes; letters/digits/text come out mirrored
MIRROR_WORDS = frozenset(
    "left right leftwards rightwards east west clockwise anticlockwise counterclockwise letter letters "
    "keycap digit number numbers text word words sign".split()
)
_WORD = re.compile(r"[a-z]+")
_WHITE_WORDS = frozenset({"white", "snow", "snowy", "blank", "paper"})


def caption_words(caption: str) -> frozenset[str]:
    """Lower-case words of a caption (split on anything that is not a letter, so 'left-facing' has 'left')."""
    return frozenset(_WORD.findall(caption.lower()))


def has_colour_word(caption: str) -> bool:
    return bool(caption_words(caption) & COLOUR_WORDS)


def flip_is_safe(caption: str) -> bool:
    words = caption_words(caption)
    return not (words & MIRROR_WORDS) and not re.search(r"\d", caption)


@dataclass
class TrainTransform:
    """Caption-aware training transform: ``transform(image, caption, rng) -> (3, S, S)`` float tensor.

    ``strength`` in [0, 1] scales every probability and range; 0 gives the plain
    resize + centre crop of evaluation (on white, like the indexer's decode).
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    strength: float = 1.0
    p_background: float = 0.5
    p_zoom_out: float = 0.3
    p_flip: float = 0.5
    p_grayscale: float = 0.1
    p_style: float = 0.4  # one of edges / contour / posterize / blur
    wants_caption: bool = field(default=True, init=False)  # tells PairDataset to pass caption and rng

    def __call__(self, image: Image.Image, caption: str = "", rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = rng if rng is not None else np.random.default_rng()
        s = min(max(self.strength, 0.0), 1.0)
        # work near the output size: every PIL op below is then cheap
        if max(image.size) > 2 * self.image_size:
            image = image.copy()
            image.thumbnail((2 * self.image_size, 2 * self.image_size), Image.Resampling.BILINEAR)
        background = self._background_colour(rng, s)
        image = _composite(image, background, caption)
        image = self._geometry(image, background, caption, rng, s)
        image = self._style(image, caption, rng, s)
        return self._to_tensor(image)

    def _background_colour(self, rng: np.random.Generator, s: float) -> tuple[int, int, int]:
        if rng.random() >= s * self.p_background:
            return (255, 255, 255)
        # pale or mid-grey tones: a loud background would compete with the object's own colour words
        base = rng.uniform(150, 255)
        return tuple(int(np.clip(base + rng.uniform(-40, 40), 0, 255)) for _ in range(3))  # type: ignore[return-value]

    def _geometry(
        self, image: Image.Image, background: tuple[int, int, int], caption: str, rng: np.random.Generator, s: float
    ) -> Image.Image:
        size = self.image_size
        if rng.random() < s * self.p_zoom_out:
            return _zoom_out(image, size, background, rng, 1.0 - 0.4 * s)
        image = _resized_crop(image, size, rng, scale_min=1.0 - 0.3 * s)
        if rng.random() < s * self.p_flip and flip_is_safe(caption):
            image = ImageOps.mirror(image)
        return image

    def _style(self, image: Image.Image, caption: str, rng: np.random.Generator, s: float) -> Image.Image:
        if rng.random() < s * self.p_grayscale and not has_colour_word(caption):
            image = ImageOps.grayscale(image).convert("RGB")
        if rng.random() >= s * self.p_style:
            return image
        kind = rng.integers(4)
        if kind == 0:  # coloured edges on black: the outline keeps the object's hue
            return image.filter(ImageFilter.FIND_EDGES)
        if kind == 1:  # line drawing on white
            return image.filter(ImageFilter.CONTOUR)
        if kind == 2:  # flat-colour clip-art look; hues survive posterization
            return ImageOps.posterize(image, int(rng.integers(2, 5)))
        return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        arr = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], strength: float = 1.0
) -> TrainTransform:
    """The training transform (see ``TrainTransform``); call it as ``t(image, caption, rng)``."""
    return TrainTransform(int(image_size), tuple(mean), tuple(std), float(strength))


def _composite(image: Image.Image, background: tuple[int, int, int], caption: str) -> Image.Image:
    """RGB on ``background``: behind transparent pixels, else behind the white region touching the border."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    image = image.convert("RGB")
    if background == (255, 255, 255) or caption_words(caption) & _WHITE_WORDS:
        return image
    return _replace_white_border(image, background)


def _replace_white_border(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    try:
        from scipy import ndimage
    except ImportError:  # optional: without scipy opaque images keep their white background
        return image
    arr = np.asarray(image).copy()
    white = (arr >= 245).all(axis=2)
    labels, _ = ndimage.label(white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    region = np.isin(labels, border[border > 0])
    # an image that is mostly "white border" is likely a white object cut by the frame: leave it alone
    if region.mean() > 0.85:
        return image
    arr[region] = background
    return Image.fromarray(arr)


def _resized_crop(image: Image.Image, size: int, rng: np.random.Generator, scale_min: float) -> Image.Image:
    """Random crop of a square area fraction in [scale_min, 1] of the short side's square, resized to size."""
    w, h = image.size
    short = min(w, h)
    side = max(1, int(round(short * np.sqrt(rng.uniform(scale_min, 1.0)))))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def _zoom_out(
    image: Image.Image, size: int, background: tuple[int, int, int], rng: np.random.Generator, scale_min: float
) -> Image.Image:
    """The whole image shrunk to a fraction of the canvas and placed at a random position."""
    w, h = image.size
    target = max(8, int(size * rng.uniform(scale_min, 1.0)))
    ratio = target / max(w, h)
    small = image.resize((max(1, int(w * ratio)), max(1, int(h * ratio))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(small, (int(rng.integers(0, size - small.width + 1)), int(rng.integers(0, size - small.height + 1))))
    return canvas
