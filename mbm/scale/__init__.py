"""Beyond one machine, through existing engines (the ``scale`` extra: ``pip install 'mbm[scale]'``).

- :mod:`mbm.scale.ray_index`: bulk embedding on Ray Data (``mbm index PATH --engine ray``), an actor pool
  with one model per worker; results are committed into the catalog like the local indexer's.
- :mod:`mbm.scale.milvus`: Milvus as a collection's vector backend (``mbm index PATH --backend milvus
  --uri ./milvus.db``), a derived copy of the catalog's embeddings kept in step by its change log.

The catalog stays the source of truth either way: nothing here holds data that cannot be rebuilt from it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mbm.errors import MissingExtra, UsageError

ENGINES = ("local", "ray")
BACKENDS = ("faiss", "milvus")
BACKEND_KEY = "vector_backend"  # catalog meta: "milvus" (absent or "faiss": the FAISS index in the collection folder)


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` of the scale extra, or a MissingExtra naming ``feature`` and the install line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(feature, "scale", module.split(".")[0]) from None


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not known — use one of {', '.join(ENGINES)}")
    return engine


def check_backend(backend: str | None, uri: str | None) -> None:
    """Fail fast on a backend choice that cannot work (before any model loads)."""
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is not known — use one of {', '.join(BACKENDS)}")
    if uri is not None and backend != "milvus":
        raise UsageError(f"--uri {uri!r} names a Milvus server or milvus-lite file — give it with --backend milvus")
