"""Queries: text, images, raw vectors, and signed, weighted sums of them.

A :class:`Query` is a tuple of :class:`Term` (weight, kind, value). The library builds one
from what the caller has (:func:`as_query`): a ``str`` is text taken literally, an
``os.PathLike`` an image file, a numpy array a raw vector, a list of ``Term`` or
``(weight, value)`` pairs a weighted sum. Only :meth:`Query.parse` reads the command
line's mini-language, once:

- Terms are joined by `` + `` or `` - `` (spaces around the sign, so "t-shirt" stays one
  term); a leading ``- `` makes the first term negative.
- Weights: a term starts with a weight ``W:`` (W a decimal number: ``2``, ``0.5``, ``.5``)
  only when, after the colon and any spaces, the term goes on with something other than a
  digit (or a ``.``/``,`` before a digit). So ``2:red car``, ``0.5: beach`` and
  ``2:./beach.jpg`` are weighted, while ``3:10 to Yuma``, ``10:30 meeting`` and
  ``1:1 scale`` are text, as is ``re:invent`` (no number before its colon).
- A term wholly in double quotes is literal text: ``"3:10 - the remake"`` is one text term,
  with no weight, separator or image path read inside the quotes (``2:"..."`` weights it).
  Quotes that do not enclose a whole term are part of the text.
- An unquoted term naming an existing file with an image extension is an image term; one
  that looks like an image path (an image extension and a ``/``, or a leading ``~`` or
  ``.``) but does not exist is an error. Image paths given apart from the text
  (``images=``, the CLI's ``--image``) are image terms as they are, never parsed.

Each term is encoded and L2-normalized (a raw vector is normalized too), the signed,
weighted sum is normalized again, and that vector is searched.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union, cast

import numpy as np

from mbm.errors import UsageError
from mbm.indexer.scan import IMAGE_EXTENSIONS, display_path

KINDS = ("text", "image", "vector")
_SEPARATOR = re.compile(r"\s+([+-])\s+")
_LEADING_SIGN = re.compile(r"([+-])\s+")
_WEIGHT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*:\s*(?=\S)")
_NUMBER_GOES_ON = re.compile(r"[.,]?\d")  # "3:10", "1:1", "2:.5": the colon is inside a time or ratio

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True, eq=False)
class Term:
    """One part of a query: ``weight`` is signed (negative terms subtract); ``value`` is the text,
    the image file's absolute path, or the raw vector (float32, read-only)."""

    weight: float
    kind: str  # "text", "image" or "vector"
    value: str | np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"query term kind {self.kind!r} is not one of {', '.join(KINDS)}")
        try:
            weight = float(self.weight)
        except (TypeError, ValueError):
            raise UsageError(
                f"query term weight {self.weight!r} is not a number — give a float such as 2 or 0.5"
            ) from None
        if not math.isfinite(weight):
            raise UsageError(f"query term weight {weight} is not finite — give a float such as 2 or 0.5")
        object.__setattr__(self, "weight", weight)
        if self.kind == "vector":
            object.__setattr__(self, "value", _vector(self.value))
        elif not isinstance(self.value, str):
            raise UsageError(f"a {self.kind} query term needs a str value, not {type(self.value).__name__}")
        elif not self.value.strip():
            raise UsageError("a query term is empty — give some text or an image path")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Term):
            return NotImplemented
        if (self.weight, self.kind) != (other.weight, other.kind):
            return False
        if self.kind == "vector":
            return bool(np.array_equal(self.value, other.value))
        return self.value == other.value

    __hash__ = None  # type: ignore[assignment]  # a vector value is not hashable

    def __repr__(self) -> str:
        value = f"<vector of {len(self.value)}>" if self.kind == "vector" else repr(self.value)
        return f"Term({self.weight!r}, {self.kind!r}, {value})"


class Query(tuple):
    """An immutable, non-empty tuple of terms with at least one positive weight."""

    def __new__(cls, terms: Iterable[Term] = ()) -> Query:
        terms = tuple(terms)
        for t in terms:
            if not isinstance(t, Term):
                raise UsageError(
                    f"a Query holds Terms, not {type(t).__name__} — use Query.terms([(weight, value), ...])"
                )
        if not terms:
            raise UsageError("the query is empty — give some text, an image path or a vector")
        if all(t.weight <= 0 for t in terms):
            raise UsageError(f"query {_render(terms)!r} has only negative terms — add at least one positive term")
        return super().__new__(cls, terms)

    def __repr__(self) -> str:
        return f"Query({list(self)!r})"

    def __str__(self) -> str:
        return _render(self)

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Query:
        """Literal text: no weights, separators or image paths are read from it."""
        return cls((Term(weight, "text", text),))

    @classmethod
    def image(cls, path: PathLike, weight: float = 1.0) -> Query:
        return cls((_image_term(weight, path),))

    @classmethod
    def vector(cls, vector: Any, weight: float = 1.0) -> Query:
        """A raw embedding (checked for finiteness here, for dimension by the Searcher)."""
        return cls((Term(weight, "vector", vector),))

    @classmethod
    def terms(cls, items: Iterable[Term | tuple[float, Any]]) -> Query:
        """A weighted sum from Terms and ``(weight, value)`` pairs; values as :func:`as_query` takes them."""
        out = []
        for item in items:
            if isinstance(item, Term):
                out.append(item)
            elif isinstance(item, tuple) and len(item) == 2:
                out.append(_term(item[0], item[1]))
            else:
                raise UsageError(
                    f"query item {item!r} is neither a Term nor a (weight, value) pair — e.g. (2.0, 'red car')"
                )
        return cls(out)

    @classmethod
    def parse(cls, text: str | None, images: Sequence[PathLike] = ()) -> Query:
        """The command line's mini-language (see the module docstring), plus image files given apart."""
        terms = _parse(text) if text is not None and text.strip() else []
        terms += [_image_term(1.0, p) for p in images]
        if not terms:
            raise UsageError("the query is empty — give some text or an image path")
        return cls(terms)


QueryLike = Union[str, "os.PathLike[str]", np.ndarray, Query, Term, Sequence[Any]]


def as_query(query: QueryLike) -> Query:
    """A Query from str (literal text), os.PathLike (image), ndarray (vector), Term(s) or (weight, value) pairs."""
    if isinstance(query, Query):
        return query
    if isinstance(query, Term):
        return Query((query,))
    if isinstance(query, str):
        return Query.text(query)
    if isinstance(query, os.PathLike):
        return Query.image(query)
    if isinstance(query, np.ndarray):
        return Query.vector(query)
    if isinstance(query, Sequence) and not isinstance(query, (bytes, bytearray)):
        return Query.terms(cast("Sequence[Any]", query))
    raise UsageError(
        f"cannot search with a {type(query).__name__} — give text (str), an image (pathlib.Path), "
        "a vector (numpy array), a Query, or a list of (weight, value) pairs"
    )


def parse_query(query: str) -> list[Term]:
    """The terms of a mini-language query string (``Query.parse`` as a list)."""
    return list(Query.parse(query))


def check_dimension(query: Query, dim: int) -> None:
    """Raw vectors must match the index they are searched against."""
    for t in query:
        if t.kind == "vector" and len(t.value) != dim:
            raise UsageError(
                f"query vector has {len(t.value)} dimensions but this collection's vectors have {dim} — "
                "embed the query with the collection's model"
            )


def combine(
    terms: QueryLike, encode_text: Callable[[list[str]], np.ndarray], encode_image: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """The normalized weighted sum of the terms' (normalized) embeddings."""
    query = as_query(terms)
    texts = [t.value for t in query if t.kind == "text"]
    images = [t.value for t in query if t.kind == "image"]
    encoded = {
        "text": iter(encode_text(texts)) if texts else iter(()),
        "image": iter(encode_image(images)) if images else iter(()),
    }
    vectors = [np.asarray(t.value if t.kind == "vector" else next(encoded[t.kind]), np.float32) for t in query]
    dims = sorted({v.shape[-1] for v in vectors})
    if len(dims) > 1:
        raise UsageError(
            f"the query's terms have {' and '.join(map(str, dims))} dimensions — "
            "a raw vector must come from the collection's model"
        )
    total = np.zeros(dims[0], np.float32)
    for t, v in zip(query, vectors):
        total += t.weight * v / max(float(np.linalg.norm(v)), 1e-12)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel each other out — change the weights")
    return (total / norm).astype(np.float32)


# -- helpers -------------------------------------------------------------------------------------
def _vector(value: Any) -> np.ndarray:
    try:
        v = np.array(value, dtype=np.float32)  # a copy: the caller's array may change later
    except (TypeError, ValueError):
        raise UsageError(
            f"query vector of type {type(value).__name__} is not numeric — give a 1-D float array"
        ) from None
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise UsageError(f"query vector has shape {v.shape} — give one 1-D vector (shape (dim,))")
    if not np.isfinite(v).all():
        raise UsageError(
            f"query vector has {int((~np.isfinite(v)).sum())} NaN or infinite values — give finite numbers"
        )
    if not v.any():
        raise UsageError("query vector is all zeros — it has no direction to search")
    v.flags.writeable = False
    return v


def _image_term(weight: float, path: PathLike) -> Term:
    raw = os.fspath(path)
    full = os.path.abspath(os.path.expanduser(raw))
    if not os.path.isfile(full):
        what = "is a folder, not an image file" if os.path.isdir(full) else "does not exist"
        raise UsageError(f"query image {display_path(raw)} {what} — check the path")
    return Term(weight, "image", full)


def _term(weight: float, value: Any) -> Term:
    if isinstance(value, str):
        return Term(weight, "text", value)
    if isinstance(value, os.PathLike):
        return _image_term(weight, value)
    if isinstance(value, np.ndarray):
        return Term(weight, "vector", value)
    raise UsageError(f"query value {value!r} is not text (str), an image (pathlib.Path) or a vector (numpy array)")


def _looks_like_image(value: str) -> bool:
    return os.path.splitext(value)[1].lower() in IMAGE_EXTENSIONS and (os.sep in value or value.startswith(("~", ".")))


def _parse(text: str) -> list[Term]:
    s = text.strip()
    sign, pos = "+", 0
    lead = _LEADING_SIGN.match(s)
    if lead:
        sign, pos = lead.group(1), lead.end()
    terms = []
    while True:
        weight, kind, value, pos = _read_term(s, pos, text)
        terms.append(Term(-weight if sign == "-" else weight, kind, value))
        if pos >= len(s):
            return terms
        separator = _SEPARATOR.match(s, pos)
        assert separator is not None  # _read_term stops only at a separator or the end
        sign, pos = separator.group(1), separator.end()


def _read_term(s: str, start: int, text: str) -> tuple[float, str, str, int]:
    """(weight, kind, value, end) of the term at ``start``; ``end`` is at a separator or the end."""
    quoted = _quoted_term(s, start)
    if quoted is not None:
        return quoted
    separator = _SEPARATOR.search(s, start)
    end = separator.start() if separator else len(s)
    raw = s[start:end]
    if _LEADING_SIGN.match(raw):
        raise UsageError(f"query {text!r} has an empty term — remove the extra '+' or '-'")
    prefix = _weight_prefix(raw)
    weight, value = (float(prefix.group(1)), raw[prefix.end() :]) if prefix else (1.0, raw)
    path = os.path.expanduser(value)
    if os.path.isfile(path) and os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
        return weight, "image", os.path.abspath(path), end
    if _looks_like_image(value):
        raise UsageError(f"query image {display_path(value)} does not exist — check the path")
    return weight, "text", value, end


def _quoted_term(s: str, start: int) -> tuple[float, str, str, int] | None:
    """A term wholly in double quotes (after an optional weight), or None: then quotes are plain text."""
    prefix = _WEIGHT.match(s, start)
    weight, pos = (float(prefix.group(1)), prefix.end()) if prefix and s.startswith('"', prefix.end()) else (1.0, start)
    if not s.startswith('"', pos):
        return None
    close = s.find('"', pos + 1)
    if close < 0 or (close + 1 < len(s) and not _SEPARATOR.match(s, close + 1)) or not s[pos + 1 : close].strip():
        return None
    return weight, "text", s[pos + 1 : close], close + 1


def _weight_prefix(raw: str) -> re.Match[str] | None:
    """The ``W:`` at the start of ``raw`` when it is a weight by the rule in the module docstring."""
    m = _WEIGHT.match(raw)
    return None if m is None or _NUMBER_GOES_ON.match(raw, m.end()) else m


def _render(terms: Sequence[Term]) -> str:
    """A readable form of the terms, in the mini-language where it can say them."""
    parts = []
    for i, t in enumerate(terms):
        sign = ("- " if i == 0 else " - ") if t.weight < 0 else ("" if i == 0 else " + ")
        weight = "" if abs(t.weight) == 1 else f"{abs(t.weight):g}:"
        if t.kind == "vector":
            value = f"<vector of {len(t.value)}>"
        elif isinstance(t.value, str) and t.kind == "text" and _needs_quotes(t.value):
            value = f'"{t.value}"'
        else:
            value = str(t.value)
        parts.append(sign + weight + value)
    return "".join(parts)


def _needs_quotes(text: str) -> bool:
    if '"' in text:  # cannot be quoted; shown as it is
        return False
    return bool(
        _SEPARATOR.search(text) or _weight_prefix(text.strip()) or _LEADING_SIGN.match(text) or _looks_like_image(text)
    )
