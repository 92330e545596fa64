"""Tags at index time, computed from the stored embeddings (no image is read again).

Where the tags come from, first match wins:
1. a vocabulary set for the collection (``mbm tags --vocabulary FILE``): zero-shot over those labels;
2. a concat-fusion classifier trained for the collection (``mbm.train.concat_classifier``);
3. the model's classification head (``encoder.heads["classifier"]``): its own labels;
4. zero-shot over :data:`EVERYDAY_TAGS`, for models without labels of their own.

Zero-shot: each label becomes "a photo of a {label}", encoded by the collection's text tower
once per model and vocabulary on a machine (``mbm.indexer.label_embeddings`` caches it); an
item's confidences are ``softmax(logit_scale * cosine(image, label))`` over the vocabulary. A
classifier's confidences are its softmax. An item keeps at most :data:`MAX_TAGS` tags with a
confidence of at least :data:`MIN_CONFIDENCE`.

Incremental like indexing: only items not tagged under the current vocabulary key (the
model's fingerprint + the source + the labels) are tagged, in committed batches, so an
interrupted run resumes; a changed vocabulary re-tags every item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbm.errors import UsageError
from mbm.indexer.embed import StageClock
from mbm.indexer.label_embeddings import label_embeddings
from mbm.store.catalog import Catalog, read_snapshot
from mbm.store.tags import LABELS_KEY, VOCABULARY_KEY, Tagged, hashes_of, set_tags, untagged

CONCAT_KEY = "concat_classifier"  # meta: the digest of the collection's trained concat classifier, if any

log = logging.getLogger(__name__)

PROMPT = "a photo of a {}"
MAX_TAGS = 5
MIN_CONFIDENCE = 0.1
BATCH = 2048
MAX_LABELS = 20_000
TAGGER_VERSION = "1"  # bump when the scoring changes: every collection is re-tagged

# Everyday photo subjects: the zero-shot vocabulary of a model with no labels of its own.
EVERYDAY_TAGS: tuple[str, ...] = tuple(
    """
    person people child baby man woman face selfie crowd wedding party concert
    dog cat bird horse cow sheep fish insect butterfly bee flower tree plant grass leaf forest
    beach sea ocean lake river waterfall mountain hill desert snow ice sky cloud sunset sunrise night
    rain fog storm rainbow moon star galaxy field garden park road street bridge city building
    house skyscraper church castle tower ruins monument statue room kitchen bedroom office shop market
    restaurant food fruit vegetable bread cake coffee tea wine beer drink breakfast
    car truck bus train bicycle motorcycle boat ship airplane rocket
    computer phone camera book newspaper painting drawing text document screenshot map chart sign
    toy ball clock lamp chair table bed sofa window door wall floor stairs
    sport football basketball tennis swimming running skiing hiking camping
    clothes shoe hat bag glasses jewelry
    water fire smoke light shadow reflection pattern texture wood stone metal glass plastic paper
    """.split()
)


@dataclass(frozen=True)
class Vocabulary:
    """What tags an embedding: ``scores(embeddings) -> (N, len(labels))`` confidences."""

    source: str  # "labels", "concat-classifier", "classifier" or "everyday"
    labels: tuple[str, ...]
    scores: Callable[[np.ndarray, Sequence[int]], np.ndarray]  # (embeddings, their item ids) -> confidences


def read_labels(path: str | Path) -> list[str]:
    """Labels from a text file: one per line; blank lines and ``#`` comments are ignored, duplicates dropped."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UsageError(
            f"tag vocabulary {p} cannot be read ({e.strerror}) — give a text file, one tag per line"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"tag vocabulary {p} is not UTF-8 text — save it as UTF-8, one tag per line") from None
    labels = list(dict.fromkeys(" ".join(line.split("#", 1)[0].split()) for line in text.splitlines()))
    labels = [x for x in labels if x]
    if not labels:
        raise UsageError(f"tag vocabulary {p} holds no tags — write one tag per line")
    if len(labels) > MAX_LABELS:
        raise UsageError(f"tag vocabulary {p} holds {len(labels):,} tags — the limit is {MAX_LABELS:,}")
    return labels


def vocabulary_key(meta: dict[str, str], extra: str = "") -> str:
    """The key items are tagged under: known from the catalog's meta alone, so a run with nothing new to tag
    never loads the model to find out."""
    labels = meta.get(LABELS_KEY) or "model"
    digest = hashlib.sha256(f"{TAGGER_VERSION}\0{meta.get('fingerprint', '')}\0{labels}\0{extra}".encode()).hexdigest()
    return digest[:20]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot(encoder: Any, labels: Sequence[str], source: str) -> Vocabulary:
    text = label_embeddings(encoder, [PROMPT.format(x) for x in labels])  # cached per model: no text tower to load
    scale = getattr(encoder, "logit_scale", None)  # recorded with a fast-started model: reading loads nothing
    logit_scale = min(float(scale), 100.0) if scale is not None else 100.0
    return Vocabulary(source, tuple(labels), lambda emb, ids: softmax(logit_scale * (emb @ text.T)))


def classifier_vocabulary(head: Any, source: str = "classifier") -> Vocabulary:
    """The labels and softmax of a classification head (a ``ClassifierHead``, or its ``CosineClassifier``)."""
    from mbm.models.classifier_numpy import CosineClassifier

    classifier = head if isinstance(head, CosineClassifier) else CosineClassifier.from_head(head)

    def scores(emb: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        return softmax(classifier.logits(emb))

    return Vocabulary(source, classifier.labels, scores)


def model_classifier(encoder: Any) -> Any:
    """The model's classification head, or None: the loaded one when the heads are in memory (a model fresh from
    training, too), else read from its checkpoint folder without torch (``CosineClassifier.from_folder``)."""
    from mbm.models.classifier_numpy import CosineClassifier
    from mbm.models.specs import spec_folder

    spec = getattr(encoder, "spec", None)
    folder = spec_folder(spec) if isinstance(spec, str) and "heads" not in getattr(encoder, "__dict__", {}) else None
    if folder is not None:
        return CosineClassifier.from_folder(folder)
    heads = getattr(encoder, "heads", None)  # in memory, or not from a folder: the encoder's own (loads them)
    return heads.get("classifier") if isinstance(heads, dict) else None


def vocabulary(encoder: Any, meta: dict[str, str], concat: Any = None) -> Vocabulary:
    """The collection's vocabulary (see the module docstring for the order)."""
    if meta.get(LABELS_KEY):
        return zero_shot(encoder, json.loads(meta[LABELS_KEY]), "labels")
    if concat is not None:
        return Vocabulary("concat-classifier", tuple(concat.labels), concat.scores)
    head = model_classifier(encoder)
    if head is not None:
        return classifier_vocabulary(head)
    return zero_shot(encoder, EVERYDAY_TAGS, "everyday")


def top_tags(labels: Sequence[str], scores: np.ndarray) -> list[list[tuple[str, float]]]:
    """Per row: the at most MAX_TAGS labels with confidence >= MIN_CONFIDENCE, most confident first."""
    k = min(MAX_TAGS, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(row[j])) for j in idx if row[j] >= MIN_CONFIDENCE] for row, idx in zip(scores, top)]


def tag_items(
    catalog: Catalog,
    encoder: Callable[[], Any],
    *,
    concat: Callable[[], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Tag the items not yet tagged under the collection's vocabulary; returns how many were tagged.

    ``encoder`` (and ``concat``, a trained concat classifier's loader) are called only when some item needs tags."""
    meta = catalog.meta()
    if meta.get("kind") == "text" or catalog.readonly:
        return 0
    concat_key = meta.get(CONCAT_KEY, "")
    key = vocabulary_key(meta, concat_key)
    todo = untagged(catalog, key)
    if not todo:
        return 0
    vocab = vocabulary(encoder(), meta, concat() if concat is not None and concat_key else None)
    done = 0
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        with read_snapshot(catalog):
            ids, vecs = catalog.embeddings_of(chunk)
            hashes = hashes_of(catalog, ids.tolist())
        tags = top_tags(vocab.labels, vocab.scores(vecs, ids.tolist())) if len(ids) else []
        done += set_tags(catalog, key, [Tagged(int(i), hashes[int(i)], t) for i, t in zip(ids, tags)])
        if progress is not None:
            progress(start + len(chunk), len(todo))
    if meta.get(VOCABULARY_KEY) != key:
        catalog.set_meta(**{VOCABULARY_KEY: key, "tags_source": vocab.source})
    log.info("tagged %d items (%s vocabulary, %d labels)", done, vocab.source, len(vocab.labels))
    return done


def after_index(catalog: Catalog, encoder: Callable[[], Any], roots: Sequence[str], clock: StageClock) -> None:
    """The steps after an index run's vectors are saved: tags for untagged items, then the item text (names,
    sidecar captions, XMP/IPTC keywords) of the items under ``roots``. Times show as stages "tags" and "text"."""
    from mbm.indexer.sidecar import refresh_item_text

    t0 = time.perf_counter()
    refresh_item_text(catalog, roots)  # first: a concat classifier tags from the item text too
    t1 = time.perf_counter()
    tag_items(catalog, encoder, concat=lambda: _concat_scorer(catalog, encoder()))
    clock.add("text", t1 - t0)
    clock.add("tags", time.perf_counter() - t1)


def _concat_scorer(catalog: Catalog, encoder: Any) -> Any:
    from mbm.train.concat_classifier import stored_scorer

    return stored_scorer(catalog.path.parent, catalog, encoder)


def retag(engine: Any, labels: Sequence[str] | None = None, *, reset: bool = False, notify: Any = None) -> int:
    """Tag what is untagged in ``engine``'s collection now, under the collection's lock; ``labels`` first sets
    its vocabulary (zero-shot over them), ``reset`` goes back to the model's own. Returns how many were tagged."""
    from mbm.store.lock import CollectionLock

    with CollectionLock(engine.folder, engine.name).hold(wait=True, on_wait=notify):
        catalog = engine.catalog(write=True)
        if labels is not None:
            catalog.set_meta(**{LABELS_KEY: json.dumps(list(labels), ensure_ascii=False)})
        elif reset:
            catalog.set_meta(**{LABELS_KEY: ""})
        return tag_items(catalog, engine.encoder, concat=lambda: _concat_scorer(catalog, engine.encoder()))


def train_concat(engine: Any, folder: str | Path, *, text: bool = True, notify: Any = None) -> int:
    """Train the collection's concat-fusion classifier on a folder-per-class layout (its labels become the
    tags), save it beside the catalog and re-tag every item with it; returns how many were tagged."""
    from mbm.store.lock import CollectionLock
    from mbm.train.concat_classifier import train_from_folder

    model = train_from_folder(engine.encoder(), folder, text=text)
    with CollectionLock(engine.folder, engine.name).hold(wait=True, on_wait=notify):
        catalog = engine.catalog(write=True)
        digest = model.save(Path(engine.folder))
        catalog.set_meta(**{CONCAT_KEY: digest, LABELS_KEY: ""})
        return tag_items(catalog, engine.encoder, concat=lambda: _concat_scorer(catalog, engine.encoder()))
