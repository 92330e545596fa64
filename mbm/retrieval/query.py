"""Queries: plain text, an image path, or a weighted sum such as ``2:red car + ./beach.jpg - night``.

Terms are joined by `` + `` or `` - `` (with spaces, so "t-shirt" stays one term);
``W:`` before a term weights it. Each term is encoded and L2-normalized, the signed,
weighted sum is normalized again, and that vector is searched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mbm.errors import UsageError
from mbm.indexer.scan import IMAGE_EXTENSIONS

_SPLIT = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*:\s*(.+)$", re.S)


@dataclass(frozen=True)
class Term:
    weight: float  # signed: negative terms subtract
    kind: str  # "text" or "image"
    value: str


def _looks_like_image(value: str) -> bool:
    return os.path.splitext(value)[1].lower() in IMAGE_EXTENSIONS and (os.sep in value or value.startswith(("~", ".")))


def parse_query(query: str) -> list[Term]:
    """Split a query string into signed, weighted text and image terms."""
    if not query or not query.strip():
        raise UsageError("the query is empty — give some text or an image path")
    tokens = _SPLIT.split(" " + query.strip())  # [term, sign, term, ...] or ["", sign, term, ...]
    if tokens[0] == "":  # the query starts with a sign
        signs, values = tokens[1::2], tokens[2::2]
    else:
        signs, values = ["+", *tokens[1::2]], tokens[0::2]
    terms = []
    for sign, raw in zip(signs, values):
        weight, value = 1.0, raw.strip()
        m = _WEIGHT.match(value)
        if m:
            weight, value = float(m.group(1)), m.group(2).strip()
        if not value:
            raise UsageError(f"query {query!r} has an empty term — remove the extra '+' or '-'")
        path = os.path.expanduser(value)
        if os.path.isfile(path) and os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
            kind, value = "image", os.path.abspath(path)
        elif _looks_like_image(value):
            raise UsageError(f"image {value!r} in the query does not exist — check the path")
        else:
            kind = "text"
        terms.append(Term(-weight if sign == "-" else weight, kind, value))
    if all(t.weight <= 0 for t in terms):
        raise UsageError(f"query {query!r} has only negative terms — add at least one positive term")
    return terms


def combine(terms: Sequence[Term], encode_text: Callable[[list[str]], np.ndarray], encode_image: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The normalized weighted sum of the terms' (normalized) embeddings."""
    texts = [t.value for t in terms if t.kind == "text"]
    images = [t.value for t in terms if t.kind == "image"]
    text_vecs = iter(encode_text(texts)) if texts else iter(())
    image_vecs = iter(encode_image(images)) if images else iter(())
    total = None
    for t in terms:
        v = next(text_vecs) if t.kind == "text" else next(image_vecs)
        v = np.asarray(v, np.float32)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        total = t.weight * v if total is None else total + t.weight * v
    assert total is not None
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel each other out — change the weights")
    return (total / norm).astype(np.float32)
