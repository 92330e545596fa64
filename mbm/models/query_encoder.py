"""The torch-free query path: a collection keeps its model's text tower exported to ONNX.

A cold ``mbm search "red car"`` then never imports torch or open_clip (seconds on a
small machine), re-ranked or not: a model with a fusion head gets it exported beside the
text tower (``mbm.models.fusion_onnx``). Image queries, models whose text tower cannot be exported and installs
without onnxruntime/onnx/onnxscript use the full encoder as before.

The export itself takes seconds (torch.export of the whole text tower: 8 s for MiniLM on a
2-core machine), so it is made once per model fingerprint into
``$XDG_CACHE_HOME/mbm/query-encoder/<fingerprint>/`` and every collection of that model gets a
copy of it (hard links where the file system allows): only the first index run of a model on a
machine pays for the export. A cache that cannot be written costs an export per collection,
as before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mbm.atomic import atomic_dir
from mbm.models.fingerprint import cache_path

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


def cached_export_dir(fingerprint: str) -> Path:
    """Where the text tower of the weights with this fingerprint is exported once for all collections."""
    return cache_path().parent / "query-encoder" / fingerprint.replace(":", "-")


def load_query_encoder(folder: Path, fingerprint: str) -> Any:
    """The exported encoder when it was made from weights with this fingerprint, else None."""
    source = _source(folder)
    if source.get("fingerprint") != fingerprint or not source.get("supported"):
        return None
    from mbm.models.text_onnx import OnnxTextEncoder

    return OnnxTextEncoder.load(folder)


def load_query_fusion(folder: Path, fingerprint: str) -> Any:
    """The exported fusion head (``OnnxFusion``) when the export of these weights has one, else None."""
    source = _source(folder)
    if source.get("fingerprint") != fingerprint or not source.get("supported") or not source.get("fusion"):
        return None
    from mbm.models.fusion_onnx import OnnxFusion

    return OnnxFusion.load(folder)


def cached_query_encoder(fingerprint: str) -> Any:
    """The cached export for these weights (``cached_export_dir``) when there is one, else None. No torch."""
    return load_query_encoder(cached_export_dir(fingerprint), fingerprint)


def has_cached_query_encoder(fingerprint: str) -> bool:
    """Whether ``cached_query_encoder`` has an export of these weights to load (found without loading it)."""
    source = _source(cached_export_dir(fingerprint))
    return source.get("fingerprint") == fingerprint and bool(source.get("supported"))


def _export_into(encoder: Any, folder: Path, fingerprint: str) -> bool:
    """Export ``encoder``'s text tower into ``folder`` (atomically), recording ``fingerprint``; True when supported."""
    from mbm.models.text_onnx import UnsupportedTextTower, export_text_onnx

    supported = fusion = True
    with atomic_dir(folder) as tmp:  # readers see the old folder or the new one, never half of one
        try:
            export_text_onnx(encoder, tmp)
        except UnsupportedTextTower as e:
            log.info("text queries will use the full model: %s", e)
            supported = False
            for p in tmp.iterdir():  # keep only the record, not a half-usable export
                p.unlink()
        fusion = supported and _export_fusion(encoder, tmp)
        source = {"fingerprint": fingerprint, "spec": encoder.spec, "supported": supported, "format": FORMAT}
        if fusion:
            source["fusion"] = True
        (tmp / _SOURCE).write_text(json.dumps(source))
    return supported


def _export_fusion(encoder: Any, folder: Path) -> bool:
    """Export the fusion head beside the text tower (for torch-free re-ranking); False when it has none or cannot."""
    if not encoder.has_fusion:
        return False
    from mbm.models.fusion_onnx import CONFIG_FILE, MODEL_FILE, UnsupportedFusion, export_fusion_onnx

    try:
        export_fusion_onnx(encoder, folder)
    except UnsupportedFusion as e:
        log.info("re-ranking will use the full model: %s", e)
        for name in (MODEL_FILE, CONFIG_FILE):
            (folder / name).unlink(missing_ok=True)
        return False
    return True


def _usable(cached: Path, fingerprint: str) -> bool:
    """Whether the cache holds this fingerprint's export (or its "unsupported" record) in this mbm's format, and the
    export loads."""
    source = _source(cached)
    if source.get("fingerprint") != fingerprint:
        return False
    if not source.get("supported"):
        return True
    from mbm.models import fusion_onnx, text_onnx

    wanted = [(text_onnx.CONFIG_FILE, text_onnx.FORMAT, text_onnx.VERSION)]
    if source.get("fusion"):
        wanted.append((fusion_onnx.CONFIG_FILE, fusion_onnx.FORMAT, fusion_onnx.VERSION))
    for name, form, version in wanted:
        try:
            config = json.loads((cached / name).read_text())
        except (OSError, ValueError):
            return False
        if (config.get("format"), config.get("version")) != (form, version):
            return False
    # and it loads: a damaged file would otherwise be copied into every new collection, whose text queries then
    # quietly take the torch path for good
    if text_onnx.OnnxTextEncoder.load(cached) is None:
        return False
    return not source.get("fusion") or fusion_onnx.OnnxFusion.load(cached) is not None


def _copy_export(cached: Path, folder: Path, fingerprint: str) -> bool:
    """Copy a cached export into a collection's ``folder`` under the collection's ``fingerprint``."""
    source = _source(cached)
    with atomic_dir(folder) as tmp:
        for path in cached.iterdir():
            if path.name == _SOURCE or not path.is_file():
                continue
            try:
                os.link(path, tmp / path.name)  # the cache's files are only ever replaced whole, never edited
            except OSError:
                shutil.copy2(path, tmp / path.name)
        (tmp / _SOURCE).write_text(json.dumps({**source, "fingerprint": fingerprint}))
    return bool(source.get("supported"))


def export_query_encoder(encoder: Any, folder: Path, fingerprint: str | None = None) -> bool:
    """Give the collection at ``folder`` ``encoder``'s text tower (once per fingerprint); False when it cannot be
    exported. Copies the machine's cached export when there is one (no torch needed); else exports it there first.

    ``fingerprint`` is the one the collection recorded for these weights, when it differs
    from ``encoder.fingerprint`` (a collection fingerprinted by an earlier mbm)."""
    fingerprint = fingerprint or encoder.fingerprint
    if _usable(folder, fingerprint):
        return False  # already tried for these weights (exported in this mbm's format, or known unsupported)
    from mbm.models.text_onnx import missing_export_modules

    missing = missing_export_modules()
    if missing:  # nothing recorded: an install that adds them exports on the next index or search
        log.info(
            "text queries will use the full model: %s not installed (pip install onnxruntime onnx onnxscript)",
            " and ".join(missing),
        )
        return False
    cached = cached_export_dir(encoder.fingerprint)
    try:
        if _usable(cached, encoder.fingerprint):
            return _copy_export(cached, folder, fingerprint)
    except OSError as e:  # a cache that cannot be read: export as if there were none
        log.debug("cached query encoder %s not used: %s", cached, e)
    try:
        _export_into(encoder, cached, encoder.fingerprint)
        return _copy_export(cached, folder, fingerprint)
    except OSError as e:
        log.debug("query encoder not cached in %s (%s): exporting into the collection", cached, e)
    try:
        return _export_into(encoder, folder, fingerprint)
    except OSError as e:
        log.warning("could not export the query encoder to %s (%s)", folder, e)
        return False
