"""What one Ray worker runs: read, hash, decode and embed a batch of files with its own copy of the model.

The worker decodes exactly as the local indexer does (:func:`mbm.indexer.embed.make_preparer`), so a file
gives the same pixels, facts and hash on a cluster as on one machine; it embeds each content once per batch
and hands back one row per file (an Arrow table): ``decoded`` rows carry their embedding (in the catalog's
storage dtype) and fusion tokens, ``known`` rows only their hash (the driver reuses the stored vector),
``failed`` rows their reason (the driver leaves them to the local indexer, which reports them).
Files are read by path: every worker must see them at the same path as the driver (a shared file system).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mbm.errors import ModelError


def arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("status", pa.string()),  # "decoded", "known" or "failed"
            ("hash", pa.string()),
            ("reason", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("taken_at", pa.string()),
            ("camera", pa.string()),
            ("embedding", pa.binary()),
            ("tokens", pa.binary()),
            ("token_shape", pa.list_(pa.int64())),
        ]
    )


def worker_precision(precision: str | None, device: str) -> str | None:
    """The collection's precision where the worker's device runs it (fp16 is a GPU precision: fp32 on a CPU)."""
    if precision == "fp16" and not device.startswith("cuda"):
        return "fp32"
    return precision


class EmbedActor:
    """A Ray Data callable class: one model per actor, loaded once in ``__init__``.

    ``known`` are content hashes stored before the run and kept through it, ``previous`` maps a path to
    its stored hash: such files are read and hashed but not decoded (the local indexer's rule)."""

    def __init__(
        self,
        *,
        spec: str,
        fingerprint: str,
        dtype: str,
        precision: str | None,
        device: str = "auto",
        max_pixels: int,
        threads: int = 1,
        known: Sequence[str] = (),
        previous: Mapping[str, str] | None = None,
    ):
        from mbm.indexer.embed import StageClock, make_preparer
        from mbm.models.factory import load_model, resolve_device

        device = resolve_device(device)
        self.encoder = load_model(spec, device=device, precision=worker_precision(precision, device))
        if fingerprint and self.encoder.fingerprint != fingerprint:
            raise ModelError(
                f"model {spec!r} on Ray worker {os.uname().nodename} has weights {self.encoder.fingerprint}, the "
                f"collection was indexed with {fingerprint} — install the same model files on every worker"
            )
        self.dtype = np.dtype(dtype)
        self.threads = max(1, threads)
        self.clock = StageClock()
        self.prepare = make_preparer(
            self.encoder.preprocess,
            self.encoder.image_size,
            frozenset(known),
            max_pixels,
            self.clock,
            previous=dict(previous or {}),
        )

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        from mbm.indexer.embed import Decoded, Failed, Known, prepared_batches
        from mbm.indexer.scan import FileEntry

        entries = [
            FileEntry(str(p), int(s), int(m)) for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])
        ]
        results: list[Any] = []
        for part in prepared_batches(entries, self.prepare, max(1, len(entries)), self.threads):
            results.extend(part)
        embedded = self._embed([r for r in results if isinstance(r, Decoded)])
        rows: list[dict[str, Any]] = []
        for r in results:
            row: dict[str, Any] = {"path": r.entry.path, "size": r.entry.size, "mtime_ns": r.entry.mtime_ns}
            if isinstance(r, Failed):
                row.update(status="failed", reason=r.reason)
            elif isinstance(r, Known):
                row.update(status="known", hash=r.hash)
            else:
                emb, tok = embedded[r.hash]
                row.update(
                    status="decoded",
                    hash=r.hash,
                    width=r.facts.width,
                    height=r.facts.height,
                    taken_at=r.facts.taken_at,
                    camera=r.facts.camera,
                    embedding=emb,
                    tokens=None if tok is None else tok[0],
                    token_shape=None if tok is None else list(tok[1]),
                )
            rows.append(row)
        import pyarrow as pa

        schema = arrow_schema()
        return pa.Table.from_pylist([{k: row.get(k) for k in schema.names} for row in rows], schema=schema)

    def _embed(self, decoded: Sequence[Any]) -> dict[str, tuple[bytes, tuple[bytes, tuple[int, ...]] | None]]:
        """``hash -> (embedding bytes in the catalog dtype, (packed fusion tokens, their shape) or None)``,
        each content embedded once."""
        firsts: dict[str, Any] = {}
        for r in decoded:
            firsts.setdefault(r.hash, r)
        if not firsts:
            return {}
        import torch

        from mbm.store.tokens import pack

        order = list(firsts.values())
        vecs, tokens = self.encoder.encode_image_batch(torch.stack([r.pixels for r in order]), tokens=True)
        out: dict[str, tuple[bytes, tuple[bytes, tuple[int, ...]] | None]] = {}
        for i, (r, v) in enumerate(zip(order, vecs)):
            tok = None if tokens is None else (pack(tokens[i]), tuple(int(n) for n in tokens[i].shape))
            out[r.hash] = (v.astype(self.dtype).tobytes(), tok)
        return out
