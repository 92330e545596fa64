"""Checks of the Engine's arguments, against each other and against what a collection holds. They run
before any model loads or lock is taken; index runs make the collection checks again under the lock,
where another run may have created the collection meanwhile."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mbm.errors import CollectionError, UsageError
from mbm.indexer.scan import display_path, is_text_source
from mbm.models.factory import normalize_spec
from mbm.retrieval import hybrid
from mbm.retrieval.rerank import DEFAULT_RERANK_TOP
from mbm.store.filters import ItemFilter


def check_index_args(paths: Sequence[str | os.PathLike[str]], batch_size: int | None = None) -> None:
    """Fail fast, before any model loads, on arguments that cannot work (``batch_size`` None: the device's default)."""
    if not paths:
        raise UsageError("no paths given — name at least one folder or file to index")
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"batch size must be at least 1, not {batch_size}")
    for p in paths:
        if not os.path.exists(os.path.expanduser(os.fspath(p))):
            raise UsageError(f"path {display_path(os.fspath(p))} does not exist — check the spelling")


def collection_kind(paths: Sequence[str | os.PathLike[str]], texts: bool | None = None) -> str:
    """ "text" or "image", from what is named: ``texts=True`` asks for text sources (also under
    folders); otherwise text files named on their own make a text collection, and anything
    else an image one. Text files beside folders or images are refused, never guessed."""
    if texts is not None:
        return "text" if texts else "image"
    given = [os.path.expanduser(os.fspath(p)) for p in paths]
    text_files = [p for p in given if os.path.isfile(p) and is_text_source(p)]
    others = [p for p in given if p not in text_files]
    if text_files and others:
        other = others[0]
        what = "a folder" if os.path.isdir(other) else "not a text source"
        raise UsageError(
            f"{display_path(text_files[0])} is a text source but {display_path(other)} is {what} — index texts and "
            "images into separate collections (`--collection`), or pass --texts to index the text files "
            "(.txt/.jsonl/.csv) found under folders too"
        )
    return "text" if text_files else "image"


def check_kind(name: str, meta: dict[str, str], kind: str, paths: Sequence[Any]) -> None:
    """CollectionError when collection ``name`` (its ``meta``) holds another kind than ``paths`` are."""
    if meta.get("kind") and meta["kind"] != kind:
        raise CollectionError(
            f"collection {name!r} holds {meta['kind']}s; {', '.join(display_path(os.fspath(p)) for p in paths)} "
            f"{'are text sources' if kind == 'text' else 'are images'} — use another --collection"
        )


def check_model_spec(name: str, meta: dict[str, str], model_spec: str | None) -> str | None:
    """The model spec the collection recorded (None for a new one); CollectionError when ``model_spec``
    (normalized, None: not asked for) names another."""
    recorded = meta.get("model")
    if recorded and model_spec and model_spec != normalize_spec(recorded):
        raise CollectionError(
            f"collection {name!r} was indexed with model {recorded!r}, not {model_spec!r} — "
            "omit --model, or index into another --collection"
        )
    return recorded


def search_settings(
    *,
    k: int,
    offset: int,
    rerank: int | bool,
    mode: str,
    sort: str,
    under: str | Sequence[str] | None,
    after: str | None,
    before: str | None,
    camera: str | None,
    tag: str | None,
) -> tuple[ItemFilter, int]:
    """``Engine.search``'s filter and how many candidates it re-ranks (0: none); UsageError for arguments
    that cannot work or cannot go together."""
    if k <= 0:
        raise UsageError(f"-k/--top must be at least 1, not {k}")
    if offset < 0:
        raise UsageError(f"--offset must be 0 or more, not {offset}")
    where = hybrid.tag_filter(ItemFilter.of(under, after, before, camera), tag)
    top = DEFAULT_RERANK_TOP if rerank is True else int(rerank)
    if top < 0:
        raise UsageError(f"rerank must be 0 (off) or the number of candidates to re-rank, not {rerank}")
    if hybrid.check_mode(mode) == "keyword" and top:
        raise UsageError("--rerank re-orders by cosine and keyword search has none — use --mode hybrid with it")
    if mode != "vector" and sort != "score":
        raise UsageError(f"--sort {sort} works with --mode vector — leave out --mode {mode}, or sort by score")
    if top and sort != "score":
        raise UsageError(f"--rerank orders by relevance and --sort {sort} by another key — give one of them")
    return where, top
