"""Where stores live and the defaults every entry point shares."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mbm.errors import UsageError

DEFAULT_COLLECTION = "default"
DEFAULT_BATCH_SIZE = 32  # images per forward pass on the CPU
CUDA_BATCH_SIZE = 256  # and on a GPU, where small batches leave it waiting on kernel launches


def default_batch_size(device: str) -> int:
    """Images per forward pass unless told: ``CUDA_BATCH_SIZE`` on a CUDA device, else ``DEFAULT_BATCH_SIZE``."""
    return CUDA_BATCH_SIZE if device.startswith("cuda") else DEFAULT_BATCH_SIZE


CATALOG_FILE = "catalog.sqlite"  # in each collection's folder
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_store() -> Path:
    """The store folder: $MBM_HOME, else $XDG_DATA_HOME/mbm, else ~/.local/share/mbm."""
    if os.environ.get("MBM_HOME"):
        return Path(os.environ["MBM_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mbm"


def resolve_store(store: str | os.PathLike[str] | None) -> Path:
    return Path(store).expanduser().absolute() if store else default_store().absolute()


def check_collection_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UsageError(
            f"collection name {name!r} is not valid — use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def collection_dir(store: Path, name: str) -> Path:
    return store / "collections" / check_collection_name(name)


def ensure_store(store: Path) -> Path:
    """Create the store folder and its ``collections`` folder private to the user (0700):
    catalogs hold file paths, capture times and camera names. Missing parents get the
    umask's mode; a folder that already exists keeps its mode."""
    store = Path(store)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        for folder in (store, store / "collections"):
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                if folder.is_dir():
                    continue
                raise NotADirectoryError(20, "it exists and is not a folder") from None
            os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask: make it exactly 0700
    except OSError as e:
        raise UsageError(
            f"cannot create the store folder {store} ({e.strerror or e}) — choose another one with --store or MBM_HOME"
        ) from e
    return store
