"""The collections a server serves: each Engine opened once, warmed in the background, kept warm."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from mbm.engine import Engine
from mbm.errors import MbmError
from mbm.server.batching import TextBatcher
from mbm.server.config import ServerConfig
from mbm.server.errors import ApiError
from mbm.server.metrics import Metrics

log = logging.getLogger(__name__)


class Served:
    """One collection: its Engine, its text batcher, and what thumbnails may be read from."""

    def __init__(self, name: str, engine: Engine, metrics: Metrics, config: ServerConfig):
        self.name, self.engine = name, engine
        self.batcher = TextBatcher(
            name, engine, metrics, window_s=config.limits.batch_window_s, max_batch=config.limits.max_batch
        )
        self._given_roots = [os.path.realpath(os.path.expanduser(r)) for r in config.roots]
        self._roots: tuple[tuple[str, int], list[str]] | None = None
        self.ready = False
        self.error: str | None = None
        self.kind = "image"

    def warm(self) -> None:
        """Load the vector index and the encoders now, so the first query is not the slow one."""
        try:
            self.kind = self.engine.info().kind
            self.engine.searcher()
            self.engine.embed_texts(["warm up"])
            self.engine.encoder()  # image queries and re-ranking need the full model too
            self.ready, self.error = True, None
        except MbmError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - reported by /readyz, never crashes the server
            log.exception("collection %s failed to load", self.name)
            self.error = f"{type(e).__name__}: {e}"

    def roots(self) -> list[str]:
        """Folders a thumbnail's file must resolve into: --root, else the folder holding every indexed path
        (recomputed when the catalog's generation changes)."""
        if self._given_roots:
            return self._given_roots
        version = self.engine.generation()
        if self._roots is None or self._roots[0] != version:
            paths = self.engine.indexed_paths()
            common = os.path.commonpath(paths) if paths else ""
            if common and paths and common in paths:  # a single file: its folder
                common = os.path.dirname(common)
            self._roots = (version, [os.path.realpath(common)] if common else [])
        return self._roots[1]


class Collections:
    def __init__(self, config: ServerConfig, metrics: Metrics, engines: dict[str, Engine] | None = None):
        self.config = config
        if engines is None:
            names = config.collections or [c.name for c in Engine.collections(config.store)]
            engines = {n: Engine.open(config.store, n) for n in names}
        if not engines:
            raise MbmError(f"no collections in {config.store} — run `mbm index PATH` first, or name a --store")
        self.served = {n: Served(n, e, metrics, config) for n, e in engines.items()}
        self.default = next(iter(self.served))
        self._thread: threading.Thread | None = None

    def start_warming(self) -> None:
        def warm_all() -> None:
            for s in self.served.values():
                s.warm()

        self._thread = threading.Thread(target=warm_all, name="mbm-warm", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.served.values())

    def get(self, name: str | None) -> Served:
        name = name or self.default
        served = self.served.get(name)
        if served is None:
            raise ApiError(404, f"unknown collection {name!r} — this server has {', '.join(sorted(self.served))}")
        if not served.ready:
            if served.error:
                raise ApiError(503, f"collection {name!r} could not be loaded: {served.error}")
            raise ApiError(503, f"collection {name!r} is still loading — retry shortly (see /readyz)")
        return served

    def close(self) -> None:
        for s in self.served.values():
            s.engine.close()


def thumbnail_dir(engine: Engine) -> Path:
    return Path(engine.folder) / "thumbnails"
