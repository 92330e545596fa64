"""The options several commands share: where the store is, which collection and model, the device
and precision, ``--json``, and the vector-index settings of ``mbm index`` / ``mbm search`` / ``mbm import``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store",
        envvar="MBM_HOME",
        help="Store folder (default: $MBM_HOME or ~/.local/share/mbm).",
        show_default=False,
    ),
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name inside the store.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: open_clip NAME:TAG, a checkpoint folder, or a bundled model (see `mbm models`).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="auto (bf16 where the hardware makes it fast), fp32, bf16 or fp16 (GPU).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]

# the vector index: built by `mbm index` and `mbm import`, searched by `mbm search`
IndexTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--index-type",
        help='Vector index: "auto" (exact while fast, then HNSW or IVF-PQ by size and --max-memory) or a FAISS factory string such as "HNSW32", "IVF4096,PQ64", "OPQ64,IVF4096,PQ64". Kept for the collection.',
        show_default=False,
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help='Memory the vector index may take, like "2GB" or "512MB" (default: half of this machine\'s memory; "auto" resets). Kept for the collection.',
        show_default=False,
    ),
]
NprobeOpt = Annotated[
    int | None,
    typer.Option(
        "--nprobe",
        help="IVF indexes: inverted lists to visit (default: tuned at build time to recall@10 >= 0.95).",
        show_default=False,
    ),
]
EfOpt = Annotated[
    int | None,
    typer.Option(
        "--ef",
        help="HNSW indexes: efSearch, the candidate list size (default: tuned at build time to recall@10 >= 0.95).",
        show_default=False,
    ),
]
