"""Loading models without lasting effects on the host process, and what the network allows.

A library call must leave its host as it found it: no ``os.environ`` writes, no reseeded
global RNG, no changed logger levels or handlers. What mbm needs while a model loads is set
inside :func:`quiet_loading` and restored on the way out; loads hold one lock so that two
threads' save/restore pairs never interleave. Nothing here imports torch at import time.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_LOAD_LOCK = threading.RLock()
_TRUE = ("1", "ON", "YES", "TRUE")  # as huggingface_hub reads its boolean variables
_RANDOM_INIT_NOTES = ("initialized randomly", "initialized partially")
HF_WEIGHTS = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS = "open_clip_model.safetensors"
# while torch or open_clip import, the cyclic collector would otherwise run a young-generation pass every 2,000
# new objects and walk the growing module graph in its older passes: ~0.25 s of a 2 s `import torch` here
IMPORT_GC_THRESHOLD = 100_000


def offline_reason() -> str | None:
    """Why the network must not be tried (the user set an offline variable), or None."""
    for name in ("MBM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return f"offline mode is set ({name}={os.environ[name]})"
    return None


def _hub_offline_wanted() -> bool:
    # mbm's own loads read local files: offline unless the user explicitly turned it off
    value = os.environ.get("HF_HUB_OFFLINE")
    return value is None or value.strip().upper() in (*_TRUE, "")


class _RandomInitNote(logging.Filter):
    """Drops open_clip's "initialized randomly" warnings: mbm builds such models on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if Path(record.pathname).parent.name != "open_clip":
            return True
        return not any(note in record.getMessage() for note in _RANDOM_INIT_NOTES)


@contextlib.contextmanager
def quiet_loading(*, offline: bool | None = None) -> Iterator[None]:
    """Build or load a model, then leave the process as it was.

    ``offline`` (default: True unless ``HF_HUB_OFFLINE`` is explicitly false) makes
    huggingface_hub use its cache only, so a missing file fails in milliseconds instead of a
    47-second retry loop. open_clip's "initialized randomly" warnings (logged on the root
    logger) are filtered out. Both are undone on exit.
    """
    offline = _hub_offline_wanted() if offline is None else offline
    with _LOAD_LOCK:
        root = logging.getLogger()
        note_filter = _RandomInitNote()
        root.addFilter(note_filter)
        # open_clip calls logging.info(...), which runs basicConfig() when the root logger has no
        # handler: lend it Python's own last-resort handler (same output) for the duration instead
        lent = logging.lastResort if not root.handlers and logging.lastResort is not None else None
        if lent is not None:
            root.addHandler(lent)
        hub: Any = None
        if offline:
            import huggingface_hub.constants as hub  # read at call time by every hub request

            saved, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
        try:
            yield
        finally:
            if hub is not None:
                hub.HF_HUB_OFFLINE = saved
            if lent is not None:
                root.removeHandler(lent)
            root.removeFilter(note_filter)


_GC_LOCK = threading.Lock()
_gc_saved: tuple[int, ...] | None = None  # the host's thresholds while any fewer_collections() is open
_gc_depth = 0


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Heavy imports with the collector's first threshold raised, restored on the way out (nothing is frozen or
    left disabled: the host keeps its own settings). Thresholds are process-wide and a model loads in a
    background thread while the main thread may load another: the first to enter saves the host's settings and
    the last to leave restores them, so overlapping loads never leave the raised value behind."""
    global _gc_saved, _gc_depth
    with _GC_LOCK:
        if _gc_depth == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(_gc_saved[0], IMPORT_GC_THRESHOLD), *_gc_saved[1:])
        _gc_depth += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


@contextlib.contextmanager
def environ_kept() -> Iterator[None]:
    """Undo what third-party imports write into ``os.environ`` (open_clip's tokenizer module sets
    TOKENIZERS_PARALLELISM, torch's inductor its cache folder): the host's environment is its own."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def rng_kept(seed: int | None = None) -> Iterator[None]:
    """Build a model (random init draws from torch's CPU generator) and give the host its RNG state
    back; with ``seed``, the draws are reproducible: the same spec gives the same weights."""
    import torch

    with torch.random.fork_rng(devices=[]):  # models are built on the CPU: only its RNG is drawn from
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # torch.manual_seed would also queue a CUDA reseed
        yield


def network_reachable(host: str = "huggingface.co", timeout: float = 1.0) -> bool:
    """One TCP connect to ``host``:443, bounded by ``timeout`` seconds in all (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, name="mbm-network-probe", daemon=True)
    worker.start()
    worker.join(timeout)  # name resolution ignores the socket timeout: bound the whole probe
    return bool(result and result[0])


def pretrained_weights(open_clip: Any, name: str, tag: str) -> Path | None:
    """The cached file open_clip loads for ``name:tag`` (looked up in the hub cache only), or None."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return None
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    if not cfg.get("hf_hub"):
        return None
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or HF_WEIGHTS
    # open_clip loads the safetensors twin of the file it was pointed at when there is one
    twin = (
        HF_SAFE_WEIGHTS
        if filename == HF_WEIGHTS
        else filename[:-4] + ".safetensors"
        if filename.endswith((".bin", ".pth"))
        else None
    )
    try:
        from huggingface_hub import try_to_load_from_cache

        for fname in (twin, filename):
            hit = try_to_load_from_cache(repo_id, fname) if fname else None
            if isinstance(hit, str):
                return Path(hit)
    except Exception:  # noqa: BLE001 - any cache-probe failure means "not cached"
        return None
    return None
