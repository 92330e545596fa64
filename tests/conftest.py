"""Shared fixtures: a tiny real model (random weights) and generated images. No network, no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MBM_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder():
    from mbm.models import load_model

    return load_model("mbm-tiny", device="cpu", precision="fp32")


def pattern_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A distinct picture per seed: random blocks, so a random-weight model still tells them apart."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize(size, Image.NEAREST)


def make_images(folder: Path, n: int, *, start: int = 0, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.{ext}"
        pattern_image(i).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def engine_factory(tmp_path, tiny_encoder):
    from mbm import Engine

    opened = []

    def make(collection: str = "default"):
        eng = Engine.open(tmp_path / "store", collection, model="mbm-tiny", encoder=tiny_encoder)
        opened.append(eng)
        return eng

    yield make
    for eng in opened:
        eng.close()


class PairFusion:
    """A stand-in fusion head for metric tests: tokens pass through ``project_*`` unchanged and
    ``pair_logits(text_tokens, image_tokens)`` (per pair, rows aligned) decides each logit."""

    cfg = None

    def parameters(self):
        import torch

        yield torch.zeros(1)  # the device the metric code moves inputs to

    def eval(self):
        return self

    def project_image(self, image_tokens, embedding=None):
        return image_tokens

    def project_text(self, text_tokens, text_mask):
        return text_tokens, text_mask

    def match(self, x, text_mask, image, *, text_index=None, image_index=None):
        x = x if text_index is None else x[text_index]
        image = image if image_index is None else image[image_index]
        return self.pair_logits(x, image)

    def pair_logits(self, text_tokens, image_tokens):
        raise NotImplementedError
