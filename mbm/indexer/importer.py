"""``mbm import``: embeddings computed elsewhere, into a collection, without images or a model run.

Reads clip-retrieval's inference output (``img_emb/img_emb_<N>.npy`` or ``text_emb/text_emb_<N>.npy``
with ``metadata/metadata_<N>.parquet``: columns ``image_path``, ``caption``, ``url`` and whatever the
input's JSON held), or any ``.npy`` beside a ``.parquet`` / ``.jsonl`` of the same name, one row per
embedding in the same order.

Idempotent and resumable: a shard whose ``.npy`` is unchanged since it was imported (size, mtime,
rows; recorded in catalog meta) is skipped, and within a shard a row whose item already holds the
same embedding is not written again, so an interrupted import re-run writes only what is missing
and a repeated one writes nothing (the collection's generation, and so its ANN index, stay as
they are). Rows are keyed like indexed files: an image by its ``image_path`` (else ``url``, else
``<npy>#<row>``), a text by ``<npy>`` and its row number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbm.errors import MissingExtra, UsageError
from mbm.indexer.scan import display_path
from mbm.store.catalog import Catalog

BATCH = 10_000  # rows per catalog transaction
WANTED = ("image_path", "path", "url", "caption", "text", "width", "height")
META_PREFIX = "import:"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Shard:
    vectors: Path  # the .npy file
    metadata: Path | None  # its .parquet / .jsonl (None: rows are named after the .npy)


@dataclass
class ImportReport:
    shards: int = 0
    shards_unchanged: int = 0  # imported before and not changed since: not read
    imported: int = 0  # rows written (new, or a new embedding for an existing item)
    unchanged: int = 0  # rows whose item already held this embedding
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (row, reason)
    total_items: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_shards(source: str | os.PathLike[str], *, texts: bool = False) -> list[Shard]:
    """The embedding files under ``source``, paired with their metadata; UsageError saying what was expected."""
    root = Path(source).expanduser().absolute()
    if not root.exists():
        raise UsageError(f"{display_path(str(root))} does not exist — check the spelling")
    if root.is_file():
        if root.suffix != ".npy":
            raise UsageError(f"{display_path(str(root))} is not a .npy file — name a .npy or a clip-retrieval folder")
        return [Shard(root, _beside(root))]
    which = "text_emb" if texts else "img_emb"
    folder = root / which
    if folder.is_dir():
        shards = []
        for npy in sorted(folder.glob(f"{which}_*.npy"), key=lambda p: _number(p.stem)):
            meta = root / "metadata" / f"metadata_{npy.stem[len(which) + 1 :]}.parquet"
            if not meta.is_file():
                raise UsageError(
                    f"{display_path(str(npy))} has no {display_path(str(meta))} — clip-retrieval writes one per "
                    "embedding file; copy the metadata folder too"
                )
            shards.append(Shard(npy, meta))
        if shards:
            return shards
    other = root / ("img_emb" if texts else "text_emb")
    if other.is_dir() and not folder.is_dir():
        flag = "leave out --texts" if texts else "add --texts"
        raise UsageError(f"{display_path(str(root))} holds {other.name}/ but no {which}/ — {flag} to import it")
    pairs = [Shard(p, _beside(p)) for p in sorted(root.glob("*.npy"))]
    if not pairs:
        raise UsageError(
            f"no embeddings in {display_path(str(root))} — expected clip-retrieval's img_emb/ + metadata/ "
            "folders, or .npy files each with a .parquet or .jsonl of the same name"
        )
    return pairs


def _number(stem: str) -> tuple[int, str]:
    digits = re.findall(r"\d+", stem)
    return (int(digits[-1]) if digits else -1, stem)


def _beside(npy: Path) -> Path | None:
    for ext in (".parquet", ".jsonl"):
        if npy.with_suffix(ext).is_file():
            return npy.with_suffix(ext)
    return None


def read_metadata(path: Path | None, n: int, npy: Path) -> list[dict[str, Any]]:
    """One dict per embedding row (only the columns mbm uses); UsageError when the counts differ."""
    if path is None:
        return [{} for _ in range(n)]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtra(f"reading {path.name}", "parquet", "pyarrow") from None
        names = pq.read_schema(path).names
        rows = pq.read_table(path, columns=[c for c in WANTED if c in names]).to_pylist()
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise UsageError(
                            f"{display_path(str(path))} line {number} is not JSON ({e}) — fix it"
                        ) from None
    if len(rows) != n:
        raise UsageError(
            f"{display_path(str(path))} has {len(rows)} rows but {display_path(str(npy))} has {n} embeddings — "
            "they must hold the same items in the same order"
        )
    return rows


def load_vectors(npy: Path, dim: int, model: str) -> np.ndarray:
    """The ``.npy`` memory-mapped, checked to be a matrix of the collection's dimension."""
    try:
        x = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{display_path(str(npy))} is not a readable .npy file ({e})") from None
    if x.ndim != 2 or x.dtype.kind != "f":
        raise UsageError(f"{display_path(str(npy))} holds {x.dtype} {x.shape}, not a float matrix of embeddings")
    if x.shape[1] != dim:
        raise UsageError(
            f"{display_path(str(npy))} holds {x.shape[1]}-dimensional embeddings but model {model} makes {dim} — "
            "import with the model that computed them (--model), into another --collection"
        )
    return x


def shard_signature(npy: Path, rows: int) -> str:
    st = npy.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{rows}"


def import_shards(catalog: Catalog, shards: list[Shard], *, progress: Progress | None = None) -> ImportReport:
    """Import every shard into ``catalog`` (the caller holds the collection's lock)."""
    meta = catalog.meta()
    dim, dtype, kind = int(meta.get("dim", 0)), np.dtype(meta.get("dtype", "float16")), meta.get("kind", "image")
    report = ImportReport(shards=len(shards))
    arrays = [load_vectors(s.vectors, dim, meta.get("model", "?")) for s in shards]  # all checked before writing
    total, done = sum(len(a) for a in arrays), 0
    for shard, x in zip(shards, arrays):
        key = META_PREFIX + str(shard.vectors)
        signature = shard_signature(shard.vectors, len(x))
        if catalog.meta().get(key) == signature:
            report.shards_unchanged += 1
            report.unchanged += len(x)
        else:
            rows = read_metadata(shard.metadata, len(x), shard.vectors)
            for start in range(0, len(x), BATCH):
                _import_batch(catalog, shard.vectors, x, rows, start, kind, dtype, report)
                if progress is not None:
                    progress(done + min(start + BATCH, len(x)), total)
            catalog.set_meta(**{key: signature})
        done += len(x)
        if progress is not None:
            progress(done, total)
    report.total_items = catalog.count()
    return report


def _import_batch(
    catalog: Catalog,
    npy: Path,
    x: np.ndarray,
    rows: list[dict[str, Any]],
    start: int,
    kind: str,
    dtype: np.dtype,
    report: ImportReport,
) -> None:
    vecs = np.asarray(x[start : start + BATCH], np.float32)
    norms = np.linalg.norm(vecs, axis=1)
    items: dict[tuple[str, int], tuple[dict[str, Any], bytes]] = {}  # a key given twice: the last row wins
    for i, (vec, norm, row) in enumerate(zip(vecs, norms, rows[start : start + BATCH]), start):
        item = _item(npy, i, row, kind)
        if not np.isfinite(norm) or norm < 1e-6:
            report.rejected.append((f"{display_path(str(npy))}#{i}", "zero or non-finite embedding"))
            continue
        blob = (vec / norm).astype(dtype).tobytes()
        item["hash"] = "import:" + hashlib.blake2b(blob, digest_size=12).hexdigest()
        items[(item["path"], item["part"])] = (item, blob)
    stored = dict(_stored(catalog, list(items)))
    new = [(item, blob) for key, (item, blob) in items.items() if stored.get(key) != blob]
    report.unchanged += len(items) - len(new)
    if new:
        catalog.add_items([r for r, _ in new], [b for _, b in new])
        report.imported += len(new)


def _item(npy: Path, i: int, row: dict[str, Any], kind: str) -> dict[str, Any]:
    caption = row.get("caption") if row.get("caption") is not None else row.get("text")
    if kind == "text":
        return {"path": str(npy), "part": i, "text": "" if caption is None else str(caption)}
    path = row.get("image_path") or row.get("path") or row.get("url") or f"{npy}#{i}"
    item: dict[str, Any] = {"path": str(path), "part": 0}
    for side in ("width", "height"):
        if isinstance(row.get(side), (int, float)) and row[side] == row[side]:  # NaN != NaN
            item[side] = int(row[side])
    return item


def _stored(catalog: Catalog, keys: list[tuple[str, int]]) -> Iterator[tuple[tuple[str, int], bytes]]:
    """The embedding blobs of the items already at these (path, part) keys."""
    parts: dict[str, list[int]] = {}
    for path, part in keys:
        parts.setdefault(path, []).append(part)
    single = [p for p, ps in parts.items() if len(ps) == 1]
    for i in range(0, len(single), 500):
        chunk = single[i : i + 500]
        sql = f"SELECT path, part, embedding FROM items WHERE path IN ({','.join('?' * len(chunk))})"
        for path, part, blob in catalog.conn.execute(sql, chunk):
            yield (path, part), bytes(blob)
    for path, ps in parts.items():  # the rows of a text shard: one path, a range of parts
        if len(ps) > 1:
            sql = "SELECT part, embedding FROM items WHERE path = ? AND part BETWEEN ? AND ?"
            for part, blob in catalog.conn.execute(sql, (path, min(ps), max(ps))):
                yield (path, part), bytes(blob)
