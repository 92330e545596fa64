"""The float16 row file: every vector of a collection at row = item id, memory-mapped.

An ANN index keeps only compressed codes (IVF-PQ) or searches a graph; exact re-scoring of
its shortlist, and exact search among a small allowed set, read the vectors from here
instead of from SQLite blobs. Like the FAISS file it is a derived cache of the catalog,
named for the catalog (``vectors-<catalog id>.f16``), rebuilt from it when unusable.

Layout: a 32-byte header (magic, dimension) then ``rows x dim`` float16, row i
holding item i (SQLite gives new items the next id, so rows are dense; a removed item's row is
left as it was and never read, since only ids the index holds are looked up).

A rebuild writes a new file atomically. Catching up writes only the changed rows, in place,
under the collection's lock, *before* the stamp naming the newer generation is written: a
crash can then only leave rows newer than the stamp says, and every such row belongs to an id
in the catalog's change log after that stamp, which a reader re-reads from the catalog into
its in-memory overlay (that overlay shadows the file). So no reader ever uses a torn row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mbm.atomic import atomic_path, fsync

MAGIC = b"MBMROWS1"
HEADER = 32
SUFFIX = ".f16"


def rows_file_name(catalog_id: str) -> str:
    return f"vectors-{catalog_id}{SUFFIX}"


class RowFile:
    """Read rows by item id (overlay first, then the memory-mapped file); write changed rows back."""

    def __init__(self, dim: int, mapped: np.ndarray | None = None, path: Path | None = None):
        self.dim = dim
        self.path = path
        self._mapped = mapped if mapped is not None else np.zeros((0, dim), np.float16)
        self._over_ids = np.zeros(0, np.int64)  # sorted
        self._over = np.zeros((0, dim), np.float16)

    @classmethod
    def write(cls, path: Path, ids: np.ndarray, vectors: np.ndarray | Callable[[np.ndarray], np.ndarray]) -> RowFile:
        """A new file holding ``vectors`` (or ``vectors(ids_chunk)``) at rows ``ids``; atomic: whole or not at all."""
        dim = vectors.shape[1] if isinstance(vectors, np.ndarray) else int(vectors(ids[:0]).shape[1])
        rows = int(ids.max()) + 1 if len(ids) else 0
        with atomic_path(path) as tmp:
            with open(tmp, "r+b") as f:
                f.write(MAGIC + dim.to_bytes(8, "little") + bytes(HEADER - 16))
            os.truncate(tmp, HEADER + 2 * dim * rows)
            if rows:
                mm = np.memmap(tmp, np.float16, "r+", HEADER, (rows, dim))
                for start in range(0, len(ids), 65536):
                    chunk = ids[start : start + 65536]
                    mm[chunk] = vectors[start : start + 65536] if isinstance(vectors, np.ndarray) else vectors(chunk)
                mm.flush()
                del mm
        return cls.open(path, dim)

    @classmethod
    def open(cls, path: Path, dim: int) -> RowFile:
        """Map an existing file; ValueError when it is not a row file of ``dim`` dimensions."""
        with open(path, "rb") as f:
            head = f.read(HEADER)
        if len(head) < HEADER or head[:8] != MAGIC or int.from_bytes(head[8:16], "little") != dim:
            raise ValueError(f"{path.name} is not a row file of {dim} dimensions")
        rows = (path.stat().st_size - HEADER) // (2 * dim)
        mapped = np.memmap(path, np.float16, "r", HEADER, (rows, dim)) if rows else None
        return cls(dim, mapped, path)

    @property
    def nbytes(self) -> int:
        return int(self._mapped.nbytes + self._over.nbytes)

    @property
    def pending(self) -> int:
        """Rows changed in memory but not yet written to the file."""
        return len(self._over_ids)

    def put(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Set rows in memory (the last value of an id wins); :meth:`flush` writes them."""
        if not len(ids):
            return
        ids = np.asarray(ids, np.int64)
        if not len(self._over_ids) and (len(ids) == 1 or bool(np.all(ids[1:] > ids[:-1]))):
            # the common case (a build: every row once, in id order): one float16 copy, no join or dedup
            self._over_ids, self._over = ids.copy(), np.array(vectors, np.float16)
            return
        ids = np.concatenate([self._over_ids, ids])
        vecs = np.concatenate([self._over, np.asarray(vectors, np.float16)])
        last = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]  # np.unique keeps the first: reverse
        self._over_ids, self._over = ids[last], vecs[last]

    def get(self, ids: np.ndarray) -> np.ndarray:
        """float32 unit vectors of ``ids`` (``len(ids) x dim``)."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        in_file = ids < len(self._mapped)
        if in_file.any():
            out[in_file] = self._mapped[ids[in_file]]
        if len(self._over_ids):
            pos = np.minimum(np.searchsorted(self._over_ids, ids), len(self._over_ids) - 1)
            hit = self._over_ids[pos] == ids
            out[hit] = self._over[pos[hit]]
        # float16 storage moves norms by ~1e-4: renormalize so an identical vector scores 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def flush(self, path: Path) -> None:
        """Write the in-memory rows into ``path`` (the lock holder only), growing it as needed; fsynced."""
        if self.path != path or not path.exists():
            raise ValueError("flush writes to the file this row file was opened from")
        if len(self._over_ids):
            rows = max(len(self._mapped), int(self._over_ids[-1]) + 1)
            need = HEADER + 2 * self.dim * rows
            if path.stat().st_size < need:
                os.truncate(path, need)
            mm = np.memmap(path, np.float16, "r+", HEADER, (rows, self.dim))
            mm[self._over_ids] = self._over
            mm.flush()
            del mm
            fsync(path)
        reopened = RowFile.open(path, self.dim)
        self._mapped, self._over_ids, self._over = reopened._mapped, np.zeros(0, np.int64), self._over[:0]
