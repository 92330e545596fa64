"""Named errors. Every message names the bad value and says how to fix it."""

from __future__ import annotations


class MbmError(Exception):
    """Base class for every error mbm reports to users (printed without a traceback)."""

    exit_code = 1


class UsageError(MbmError):
    """A bad argument: unknown option value, k <= 0, a path that does not exist."""

    exit_code = 2


class ModelError(MbmError):
    """A model spec that cannot be resolved or loaded."""


class CollectionError(MbmError):
    """A collection that is missing, empty, or used with the wrong model or modality."""


class CatalogError(MbmError):
    """A catalog file that is unreadable or from a newer mbm."""


class MissingExtra(MbmError):
    """An optional dependency is not installed."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed — run: pip install 'mbm[{extra}]'"
        )
