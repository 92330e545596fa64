"""The torch-free query path: a collection keeps its model's text tower exported for numpy.

A cold ``mbm search "red car"`` then never imports torch or open_clip (seconds on a
small machine); image queries and models whose text tower cannot be exported use
the full encoder as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mbm.atomic import atomic_dir

log = logging.getLogger(__name__)

QUERY_ENCODER_DIR = "query_encoder"
_SOURCE = "source.json"


def load_query_encoder(folder: Path, fingerprint: str) -> Any:
    """The exported encoder when it was made from weights with this fingerprint, else None."""
    try:
        source = json.loads((folder / _SOURCE).read_text())
    except (OSError, ValueError):
        return None
    if source.get("fingerprint") != fingerprint or not source.get("supported"):
        return None
    from mbm.models.text_numpy import CONFIG_FILE, NumpyTextEncoder

    try:
        kind = json.loads((folder / CONFIG_FILE).read_text()).get("format")
    except (OSError, ValueError):
        return None
    if kind == "mbm-text-numpy-bert":
        from mbm.models.text_numpy_bert import NumpyBertEncoder

        return NumpyBertEncoder.load(folder)
    return NumpyTextEncoder.load(folder)


def export_query_encoder(encoder: Any, folder: Path) -> bool:
    """Export ``encoder``'s text tower (once per fingerprint); False when it cannot be exported."""
    try:
        if json.loads((folder / _SOURCE).read_text()).get("fingerprint") == encoder.fingerprint:
            return False  # already tried for these weights (exported, or known unsupported)
    except (OSError, ValueError):
        pass
    from mbm.models.text_numpy import UnsupportedTextTower, export_text_tower

    supported = True
    try:
        with atomic_dir(folder) as tmp:  # readers see the old folder or the new one, never half of one
            try:
                if getattr(getattr(encoder.model, "text", None), "transformer", None) is not None and hasattr(encoder.model.text, "pooler"):
                    from mbm.models.text_numpy_bert import export_bert_tower  # a Hugging Face text tower (the bundled MiniLM)

                    export_bert_tower(encoder.model, encoder.tokenizer, tmp)
                else:
                    kind = "clip-bpe" if type(encoder.tokenizer).__name__ == "SimpleTokenizer" else type(encoder.tokenizer).__name__
                    export_text_tower(encoder.model, {"kind": kind, "context_length": _context_length(encoder)}, tmp)
            except UnsupportedTextTower as e:
                log.info("text queries will use the full model: %s", e)
                supported = False
            source = {"fingerprint": encoder.fingerprint, "spec": encoder.spec, "supported": supported}
            (tmp / _SOURCE).write_text(json.dumps(source))
    except OSError as e:
        log.warning("could not export the query encoder to %s (%s)", folder, e)
        return False
    return supported


def _context_length(encoder: Any) -> int:
    return int(getattr(encoder.tokenizer, "context_length", getattr(encoder.model, "context_length", 77)))
