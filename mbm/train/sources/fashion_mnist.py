"""Fashion-MNIST (Debian ``dataset-fashion-mnist``, MIT): 28x28 grayscale product pictures.

Ten classes, 60k train + 10k test in idx format. Rows keep the data set's own split
("train"/"test"). Only a class-balanced subset is written by default (2,000 train + 1,000
test): 70k near-identical PNGs would swamp the other sources and cost disk for little gain.
Pixels are inverted back: the data set was made by negating product photos on white, and
every other source here is drawn on white.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from .common import LICENCES, BuildJob, SourceMissing, article

ROOT = Path("/usr/share/datasets/fashion-mnist")
APT = "apt-get install -y dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# how each class reads in a sentence ("a photo of a pair of trousers")
NOUNS = ["t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
DEFAULT_LIMIT = 3000  # 2/3 train, 1/3 test


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): big-endian header, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {data[:4].hex()})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def captions_for(label: int) -> list[str]:
    """``["a photo of a sandal", "sandal"]``; T-shirt/top also gets "a photo of a top"."""
    noun = NOUNS[label]
    caps = [f"a photo of {article(noun)} {noun}", noun]
    if label == 0:
        caps.append("a photo of a top")
    return caps


def balanced_indices(labels: np.ndarray, n: int) -> list[int]:
    """The first ``n`` indices taking classes in turn (file order is already shuffled)."""
    per_class = [np.flatnonzero(labels == c).tolist() for c in range(len(CLASSES))]
    out: list[int] = []
    k = 0
    while len(out) < n and any(k < len(p) for p in per_class):
        out.extend(p[k] for p in per_class if k < len(p) and len(out) < n)
        k += 1
    return sorted(out)


def _picture(pixels: np.ndarray, size: int) -> Image.Image:
    """An item inverted back onto white, scaled to ``size``."""
    return Image.fromarray(255 - pixels).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def build(job: BuildJob, *, root: Path = ROOT, everything: bool = False) -> list[dict]:
    """Write a class-balanced subset of Fashion-MNIST as ``size`` PNGs; rows carry their split.

    ``job.limit`` is the total (default 3,000: two thirds from train, one third from test);
    ``everything=True`` writes all 70,000. Raises SourceMissing when the files are absent.
    """
    root = Path(root)
    missing = [name for pair in FILES.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise SourceMissing(f"Fashion-MNIST not found under {root} (no {missing[0]}) — install it with: {APT}")
    total = None if everything else (DEFAULT_LIMIT if job.limit is None else job.limit)
    rows: list[dict] = []
    for split, (img_name, lab_name) in FILES.items():
        images, labels = read_idx(root / img_name), read_idx(root / lab_name)
        if len(images) != len(labels):
            raise ValueError(f"{root}: {img_name} has {len(images)} images but {lab_name} {len(labels)} labels")
        if total is None:
            take = list(range(len(images)))
        else:
            want = total - total // 3 if split == "train" else total // 3
            take = balanced_indices(labels, want)
        left_out = len(images) - len(take)
        job.report[f"fashion-mnist: {split} items left out of the subset (not an error; see limit)"] += left_out
        for i in take:
            dest = job.image_file("fashion-mnist", f"{split}/{i:05d}.png")
            sha = job.png(dest, _picture, images[i], job.size)
            label = int(labels[i])
            rows.append(
                {
                    "image": job.relative(dest),
                    "captions": captions_for(label),
                    "label": CLASSES[label],
                    "source": "fashion-mnist",
                    "style": "fashion-mnist",
                    "group": f"fashion-mnist:{split}:{i}",
                    "split": split,
                    "licence": LICENCES["fashion-mnist"],
                    "sha256": sha,
                    "origin": f"dataset-fashion-mnist:{img_name}[{i}]",
                }
            )
    return rows
