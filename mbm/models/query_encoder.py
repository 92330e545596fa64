"""The torch-free query path: a collection keeps its model's text tower exported to ONNX.

A cold ``mbm search "red car"`` then never imports torch or open_clip (seconds on a
small machine); image queries, models whose text tower cannot be exported and installs
without onnxruntime/onnx/onnxscript use the full encoder as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mbm.atomic import atomic_dir

log = logging.getLogger(__name__)

QUERY_ENCODER_DIR = "query_encoder"
FORMAT = "onnx"
_SOURCE = "source.json"


def _source(folder: Path) -> dict:
    """The export's record, or {} when there is none or it is of an older format (exported again)."""
    try:
        source = json.loads((folder / _SOURCE).read_text())
    except (OSError, ValueError):
        return {}
    return source if isinstance(source, dict) and source.get("format") == FORMAT else {}


def load_query_encoder(folder: Path, fingerprint: str) -> Any:
    """The exported encoder when it was made from weights with this fingerprint, else None."""
    source = _source(folder)
    if source.get("fingerprint") != fingerprint or not source.get("supported"):
        return None
    from mbm.models.text_onnx import OnnxTextEncoder

    return OnnxTextEncoder.load(folder)


def export_query_encoder(encoder: Any, folder: Path, fingerprint: str | None = None) -> bool:
    """Export ``encoder``'s text tower (once per fingerprint); False when it cannot be exported.

    ``fingerprint`` is the one the collection recorded for these weights, when it differs
    from ``encoder.fingerprint`` (a collection fingerprinted by an earlier mbm)."""
    fingerprint = fingerprint or encoder.fingerprint
    if _source(folder).get("fingerprint") == fingerprint:
        return False  # already tried for these weights (exported, or known unsupported)
    from mbm.models.text_onnx import (
        UnsupportedTextTower,
        export_text_onnx,
        missing_export_modules,
    )

    missing = missing_export_modules()
    if missing:  # nothing recorded: an install that adds them exports on the next index or search
        log.info(
            "text queries will use the full model: %s not installed (pip install onnxruntime onnx onnxscript)",
            " and ".join(missing),
        )
        return False
    supported = True
    try:
        with atomic_dir(folder) as tmp:  # readers see the old folder or the new one, never half of one
            try:
                export_text_onnx(encoder, tmp)
            except UnsupportedTextTower as e:
                log.info("text queries will use the full model: %s", e)
                supported = False
                for p in tmp.iterdir():  # keep only the record, not a half-usable export
                    p.unlink()
            source = {"fingerprint": fingerprint, "spec": encoder.spec, "supported": supported, "format": FORMAT}
            (tmp / _SOURCE).write_text(json.dumps(source))
    except OSError as e:
        log.warning("could not export the query encoder to %s (%s)", folder, e)
        return False
    return supported
