"""A collection's model: recorded once by the first index run, then required of every later use.

The catalog's meta holds the model spec, its weights fingerprint, dimension and precision; searching
or indexing a collection with other weights is an error, not garbage."""

from __future__ import annotations

import datetime as dt

from mbm import __version__
from mbm.errors import CollectionError
from mbm.models.factory import Encoder, legacy_fingerprint_of
from mbm.store.catalog import Catalog
from mbm.store.tokens import FUSION_KEY


def check_fingerprint(name: str, meta: dict[str, str], encoder: Encoder) -> bool:
    """Whether collection ``name`` recorded the legacy fingerprint of ``encoder``'s weights (an index run
    then records the full one); CollectionError when it recorded other weights."""
    recorded = meta.get("fingerprint")
    if not recorded or recorded == encoder.fingerprint:
        return False
    if recorded == legacy_fingerprint_of(encoder):
        return True
    raise CollectionError(
        f"the weights of model {encoder.spec!r} changed since collection {name!r} was indexed "
        f"({recorded} -> {encoder.fingerprint}) — re-index into a new --collection"
    )


def record_model(catalog: Catalog, name: str, encoder: Encoder, kind: str, dtype: str, reason: str | None) -> None:
    """Record the model once (insert-if-absent, then compare: two first runs never mix models)."""
    meta = catalog.init_meta(
        kind=kind,
        model=encoder.spec,
        fingerprint=encoder.fingerprint,
        dim=encoder.dim,
        dtype=dtype,
        precision=encoder.precision,
        model_reason=reason or "named with --model",
        **{FUSION_KEY: "1" if encoder.fusion is not None else "0"},
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        mbm_version=__version__,
    )
    if (meta["model"], meta["fingerprint"], meta["kind"]) != (encoder.spec, encoder.fingerprint, kind):
        raise CollectionError(
            f"collection {name!r} was just created by another run with model {meta['model']!r} "
            f"({meta['kind']}s) — use that model, or index into another --collection"
        )
