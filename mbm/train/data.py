"""Image-caption pairs from JSONL manifests, as a torch Dataset with deterministic sampling.

A manifest row: ``{"image": path relative to the manifest, "captions": [...],
"label": str | null, "source": str, "group": str, "split": "train|val|test|heldout"}``.

Every random choice (which caption, the augmentation, the batch order) is a function
of (seed, epoch, index), so a resumed run sees exactly the batches an uninterrupted
one would, whatever the number of loader workers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from mbm.errors import UsageError

IGNORE_LABEL = -100
SPLITS = ("train", "val", "test", "heldout")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(
                        f"{path}:{line_no} is not valid JSON ({e.msg}) — fix or rebuild the manifest"
                    ) from e
    return rows


def _read_manifest(path: Path) -> list[dict]:
    try:  # the dataset builders' reader, when present, knows about format changes
        from mbm.train.sources.common import load_manifest
    except ImportError:
        return _read_jsonl(path)
    try:
        return list(load_manifest(path))
    except ValueError as e:  # its messages already name the file, the line and the fix
        raise UsageError(str(e)) from e


def load_rows(manifest_path: str | Path, split: str | None = None, sources: Sequence[str] | None = None) -> list[dict]:
    """Rows of one split (all rows when ``split`` is None) with ``image`` made absolute.

    ``sources`` keeps only rows whose ``source`` is listed; a name prefixed with ``-``
    drops that source instead (``["-symbola"]``: everything but Symbola).
    """
    path = Path(manifest_path).expanduser()
    if not path.is_file():
        raise UsageError(f"manifest {path} does not exist — build one first (see data/)")
    if split is not None and split not in SPLITS:
        raise UsageError(f"split {split!r} is not known — use one of {', '.join(SPLITS)}")
    rows = []
    for row in _read_manifest(path):
        if split is not None and row.get("split") != split:
            continue
        if sources and not source_selected(row.get("source"), sources):
            continue
        captions = [c.strip() for c in row.get("captions") or [] if isinstance(c, str) and c.strip()]
        if not row.get("image") or not captions:
            continue  # a picture without words (or words without a picture) cannot be a pair
        rows.append({**row, "captions": captions, "image": str(path.parent / row["image"])})
    return rows


def source_selected(source: str | None, sources: Sequence[str]) -> bool:
    """True when ``source`` passes a ``sources`` filter (names to keep, or ``-name`` to drop)."""
    keep = [s for s in sources if not s.startswith("-")]
    drop = {s[1:] for s in sources if s.startswith("-")}
    return source not in drop and (not keep or source in keep)


def label_index(rows: Sequence[dict]) -> dict[str, int]:
    """Label name -> class index over the rows that have a label (sorted, so stable across runs)."""
    return {name: i for i, name in enumerate(sorted({r["label"] for r in rows if r.get("label")}))}


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (Python's ``hash`` is salted per run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def open_train_image(path: str, max_side: int) -> Image.Image:
    """Open keeping transparency (the augmentation picks the background), upright, at most ~2x ``max_side``."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        img.load()
        img = ImageOps.exif_transpose(img)
    if img.mode not in ("RGB", "RGBA"):
        keep_alpha = img.mode in ("LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        img = img.convert("RGBA" if keep_alpha else "RGB")
    if max(img.size) > 2 * max_side:
        img.thumbnail((2 * max_side, 2 * max_side), Image.Resampling.BILINEAR)
    return img


def load_eval_image(path: str, min_side: int) -> Image.Image:
    """Decode exactly as the indexer does (draft mode, EXIF, transparency on white), so eval matches search."""
    from mbm.indexer.decode import decode, read_file

    data, _ = read_file(path)
    return decode(data, min_side)[0]


class Batch(NamedTuple):
    pixels: torch.Tensor  # (B, 3, S, S)
    token_ids: torch.Tensor  # (B, context_length)
    labels: torch.Tensor  # (B,) class index or -100
    caption_ids: torch.Tensor  # (B,) index into PairDataset.captions: equal ids = the same caption text
    groups: torch.Tensor  # (B,) stable hash of the row's group: equal = duplicate pictures
    describes: torch.Tensor  # (B, B) bool: caption j is also one of row i's captions
    image_tokens: torch.Tensor | None = None  # (B, P, C) cached trunk tokens; then ``pixels`` holds pooled features

    def same(self) -> torch.Tensor:
        """(B, B) bool, [image i, text j]: pairs that must not serve as negatives.

        Text j also describes image i (a shared caption: 200 Fashion-MNIST items are all
        "ankle boot"), or i and j are the same picture (group).
        """
        return self.describes | (self.groups[:, None] == self.groups[None])


def collate(items: Sequence[tuple]) -> Batch:
    """Stack ``PairDataset`` items into a ``Batch``."""
    pixels, tokens, labels, captions, groups, row_captions = zip(*items)
    describes = torch.tensor([[c in own for c in captions] for own in row_captions], dtype=torch.bool)
    return Batch(
        torch.stack(pixels),
        torch.stack(tokens),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(captions, dtype=torch.long),
        torch.tensor(groups, dtype=torch.long),
        describes,
    )


class PairDataset(torch.utils.data.Dataset):
    """Manifest rows -> ``(pixels, token_ids, label_index or -100, caption_index, group_hash, row_caption_ids)``.

    One caption per item and epoch, drawn with a seeded generator. Captions are
    tokenized once up front (identical captions share one index). ``transform`` is
    either caption-aware (``transform.wants_caption``: called as ``t(image, caption,
    rng)`` on an image that may keep transparency) or a plain PIL -> tensor callable
    applied to the image decoded as for indexing.
    """

    def __init__(
        self,
        rows: Sequence[dict],
        transform: Callable[..., torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        label_to_index: dict[str, int] | None = None,
        *,
        seed: int = 0,
        image_size: int = 224,
    ):
        self.rows, self.transform, self.seed, self.image_size = list(rows), transform, int(seed), int(image_size)
        self.label_to_index = label_to_index or {}
        self.epoch = 0
        self.captions: list[str] = []
        ids: dict[str, int] = {}
        self.row_captions = [np.array([ids.setdefault(c, len(ids)) for c in r["captions"]]) for r in self.rows]
        self.captions = list(ids)
        self.caption_sets = [frozenset(c.tolist()) for c in self.row_captions]
        self.tokens = (
            torch.cat([tokenizer(self.captions[i : i + 1024]) for i in range(0, len(self.captions), 1024)])
            if self.captions
            else torch.zeros(0, 1, dtype=torch.long)
        )
        self.labels = [self.label_to_index.get(r.get("label") or "", IGNORE_LABEL) for r in self.rows]
        self.groups = [stable_hash(str(r.get("group") or r["image"])) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose captions and augmentations ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int, int, frozenset[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        caption_id = int(rng.choice(self.row_captions[index]))
        path = self.rows[index]["image"]
        try:
            if getattr(self.transform, "wants_caption", False):
                image = open_train_image(path, self.image_size)
                pixels = self.transform(image, self.captions[caption_id], rng)
            else:
                pixels = self.transform(load_eval_image(path, self.image_size))
        except Exception as e:  # noqa: BLE001 - name the file: a bare PIL error in a worker is useless
            raise UsageError(f"cannot load training image {path}: {e} — fix or drop it from the manifest") from e
        # the row's caption set travels along so that collate can tell which other captions also fit this picture
        return (
            pixels,
            self.tokens[caption_id],
            self.labels[index],
            caption_id,
            self.groups[index],
            self.caption_sets[index],
        )


class EpochBatches(torch.utils.data.Sampler):
    """Batches of one epoch in a seeded order, optionally starting at batch ``start`` (resume); drops the last partial batch."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, 1_000_003, self.epoch]).permutation(self.n)
        for b in range(self.start, len(self) + self.start):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.n // self.batch_size - self.start)


def describe(rows: Sequence[dict]) -> dict[str, Any]:
    """Counts by source and split, for the run's config.json."""
    out: dict[str, Any] = {"pairs": len(rows), "captions": sum(len(r["captions"]) for r in rows), "by_source": {}}
    for r in rows:
        out["by_source"][r.get("source", "?")] = out["by_source"].get(r.get("source", "?"), 0) + 1
    return out
