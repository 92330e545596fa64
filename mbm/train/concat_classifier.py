"""The concat-fusion classifier: ``softmax(W [f_image; f_text] + b)`` over an item's image embedding and
the embedding of its own text (file name, sidecar caption, XMP/IPTC keywords), both from the
collection's model.

Trained on labelled data in a folder-per-class layout (``ROOT/<class>/<image>``) by
:func:`train_from_folder`; the class folder never enters the text (it *is* the label), so an item's
text is its file name's words plus its caption and keywords (:func:`own_text`), at training time
and when tagging alike. Saved beside the collection's catalog (``concat_classifier.safetensors`` +
``.json``) and recorded in its meta, after which index runs tag with it (``mbm.indexer.tagging``).
``text=False`` trains the image half alone (``softmax(W f_image + b)``), the baseline that shows what
the text adds (``benchmarks/concat_classifier.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbm.atomic import write_bytes, write_text
from mbm.errors import UsageError

WEIGHTS = "concat_classifier.safetensors"
CONFIG = "concat_classifier.json"
META_KEY = "concat_classifier"
MIN_PER_CLASS = 2


def own_text(path: str) -> str:
    """An image's own words for the classifier: its file name, caption and keywords (no folder names)."""
    from mbm.indexer.sidecar import item_text, split_words

    text = item_text(path)
    stem = split_words(os.path.splitext(os.path.basename(path))[0])
    return " ".join(x for x in (stem, text.caption, text.keywords) if x)


def labelled_folder(root: str | Path) -> tuple[list[str], list[str]]:
    """``(image paths, class names)`` of a folder-per-class layout (images anywhere below each class folder)."""
    from mbm.indexer.scan import IMAGE_EXTENSIONS, scan

    root = Path(root).expanduser()
    classes = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    )
    paths, labels = [], []
    for name in classes:
        for entry in scan([root / name], IMAGE_EXTENSIONS).files:
            paths.append(entry.path)
            labels.append(name)
    counts = {c: labels.count(c) for c in classes}
    usable = [c for c, n in counts.items() if n >= MIN_PER_CLASS]
    if len(usable) < 2:
        raise UsageError(
            f"{root} holds {len(usable)} class folders with at least {MIN_PER_CLASS} images — lay it out as "
            "ROOT/<class>/<image>, two classes or more"
        )
    keep = [i for i, c in enumerate(labels) if c in usable]
    return [paths[i] for i in keep], [labels[i] for i in keep]


class ConcatClassifier:
    """``W [normalize(f_image); normalize(f_text)] + b``, or ``W normalize(f_image) + b`` when ``text`` is False."""

    def __init__(self, labels: Sequence[str], weight: np.ndarray, bias: np.ndarray, text: bool):
        self.labels = tuple(labels)
        self.weight = np.asarray(weight, np.float32)
        self.bias = np.asarray(bias, np.float32)
        self.text = text

    @staticmethod
    def features(image: np.ndarray, text: np.ndarray | None) -> np.ndarray:
        parts = [_unit(image)] + ([_unit(text)] if text is not None else [])
        return np.concatenate(parts, axis=1).astype(np.float32)

    def logits(self, image: np.ndarray, text: np.ndarray | None = None) -> np.ndarray:
        return self.features(image, text if self.text else None) @ self.weight.T + self.bias

    def probabilities(self, image: np.ndarray, text: np.ndarray | None = None) -> np.ndarray:
        z = self.logits(image, text)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # -- files ----------------------------------------------------------------------------------
    def save(self, folder: Path) -> str:
        """Write the two files into ``folder``; returns a digest naming this classifier (for the meta)."""
        from safetensors.numpy import save

        data = save({"weight": self.weight, "bias": self.bias})
        write_bytes(folder / WEIGHTS, data)
        write_text(folder / CONFIG, json.dumps({"labels": list(self.labels), "text": self.text}, indent=2))
        return hashlib.sha256(data).hexdigest()[:16]

    @classmethod
    def load(cls, folder: Path) -> ConcatClassifier | None:
        from safetensors.numpy import load

        try:
            config = json.loads((folder / CONFIG).read_text())
            tensors = load((folder / WEIGHTS).read_bytes())
        except (OSError, ValueError):
            return None
        return cls(config["labels"], tensors["weight"], tensors["bias"], bool(config.get("text", True)))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit(
    image: np.ndarray,
    text: np.ndarray | None,
    y: Sequence[int],
    labels: Sequence[str],
    *,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ConcatClassifier:
    """Full-batch AdamW on the cross-entropy of ``softmax(W x + b)`` (x: the normalized, concatenated halves)."""
    import torch

    x = torch.from_numpy(ConcatClassifier.features(image, text))
    target = torch.as_tensor(np.asarray(y), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], len(labels))
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=gen)
        linear.bias.zero_()
    scale = 10.0  # inputs are unit vectors: a fixed temperature lets plain weights reach confident logits
    opt = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x * scale), target)
        loss.backward()
        opt.step()
    weight = linear.weight.detach().numpy() * scale
    return ConcatClassifier(labels, weight, linear.bias.detach().numpy(), text is not None)


def embed(encoder: Any, paths: Sequence[str], batch: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(image embeddings, own-text embeddings, texts)`` of ``paths`` with the collection's model."""
    from mbm.retrieval.searcher import decode_query_image

    images, texts = [], []
    for i in range(0, len(paths), batch):
        chunk = paths[i : i + batch]
        images.append(encoder.encode_images([decode_query_image(p, encoder.image_size) for p in chunk]))
        texts += [own_text(p) for p in chunk]
    return np.concatenate(images), encoder.encode_texts(texts), texts


def train_from_folder(encoder: Any, root: str | Path, *, text: bool = True) -> ConcatClassifier:
    paths, names = labelled_folder(root)
    labels = sorted(set(names))
    image, text_emb, _ = embed(encoder, paths)
    return fit(image, text_emb if text else None, [labels.index(n) for n in names], labels)


class StoredScorer:
    """What tagging calls: confidences for items from their stored embeddings and their stored item text."""

    def __init__(self, model: ConcatClassifier, encoder: Any, catalog: Any):
        self.model, self.encoder, self.catalog = model, encoder, catalog
        self.labels = model.labels

    def scores(self, image: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        text = None
        if self.model.text:
            from mbm.indexer.sidecar import split_words
            from mbm.store.keywords import texts_of

            stored = texts_of(self.catalog, ids)
            rows = self.catalog.rows(list(ids))
            words = []
            for i in ids:
                t = stored.get(int(i))
                stem = (
                    split_words(os.path.splitext(os.path.basename(rows[int(i)]["path"]))[0]) if int(i) in rows else ""
                )
                words.append(" ".join(x for x in (stem, t.caption if t else "", t.keywords if t else "") if x))
            text = self.encoder.encode_texts(words)
        return self.model.probabilities(image, text)


def stored_scorer(folder: Path, catalog: Any, encoder: Any) -> StoredScorer | None:
    model = ConcatClassifier.load(Path(folder))
    return None if model is None else StoredScorer(model, encoder, catalog)
