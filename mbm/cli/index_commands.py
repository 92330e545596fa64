"""``mbm index``: a thin wrapper over :meth:`mbm.Engine.index`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mbm.cli import output
from mbm.cli.options import (
    CollectionOpt,
    DeviceOpt,
    IndexTypeOpt,
    JsonOpt,
    MaxMemoryOpt,
    ModelOpt,
    PrecisionOpt,
    StoreOpt,
)
from mbm.config import DEFAULT_COLLECTION

if TYPE_CHECKING:
    from mbm.indexer.runner import IndexReport


def register(app: typer.Typer) -> None:
    app.command("index")(index)


def index(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help='Folders (searched recursively) or files to index. Text collections: .txt (one text per line), .jsonl (a "text" field) or .csv (a text column).',
            show_default=False,
        ),
    ],
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    model: ModelOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            help="Images per forward pass (default: 32 on the CPU, 256 on a GPU).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", help="Decoding threads (default: one per CPU core).", show_default=False),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Skip images with more pixels than this (decompression-bomb guard).")
    ] = 180_000_000,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-file skip lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print time per stage.")] = False,
    texts: Annotated[
        bool,
        typer.Option(
            "--texts",
            help="Make a text collection from the .txt/.jsonl/.csv files under PATHS, folders included (default: only text files named on their own are texts).",
        ),
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="If another index run is writing this collection, stop with an error instead of waiting for it.",
        ),
    ] = False,
    rerank_tokens: Annotated[
        bool,
        typer.Option(
            "--rerank-tokens",
            help="Make sure every item under PATHS has its fusion re-ranking tokens (an error if the model has no fusion head). Without it they are still stored and back-filled whenever the model has one.",
        ),
    ] = False,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (this process), or ray: decode and embed on a Ray cluster, one model per worker (needs mbm[scale]; the files must be at the same paths on the workers).",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="With --engine ray: the cluster, ray://HEAD:10001 (Ray Client) or auto (this node's cluster); default $RAY_ADDRESS, else a Ray instance on this machine.",
            show_default=False,
        ),
    ] = None,
    ray_workers: Annotated[
        int | None,
        typer.Option(
            "--ray-workers",
            help="With --engine ray: model replicas (default: one per GPU in the cluster, else one per CPU).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="Vector backend searched: faiss (a file beside the catalog) or milvus (with --uri; needs mbm[scale]). Kept for the collection.",
            show_default=False,
        ),
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri",
            help="With --backend milvus: a milvus-lite file (./milvus.db, one process at a time) or a Milvus server, http://HOST:19530 (token in $MILVUS_TOKEN).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Embed every image (or text) under PATHS into a collection; re-runs only do what changed.

    Example: mbm index ~/Pictures --collection photos
    """
    from mbm.engine import Engine, check_index_args

    check_index_args([str(p) for p in paths], batch_size)
    with Engine.open(store, collection, model=model, device=device, precision=precision) as eng:
        with output.progress_bar(enabled=not quiet) as progress:
            report = eng.index(
                [str(p) for p in paths],
                texts=True if texts else None,
                batch_size=batch_size,
                workers=workers,
                max_pixels=max_pixels,
                progress=progress,
                wait=not no_wait,
                notify=output.err,
                rerank_tokens=rerank_tokens,
                index_type=index_type,
                max_memory=max_memory,
                engine=engine,
                ray_address=address,
                ray_workers=ray_workers,
                backend=backend,
                uri=uri,
            )
    if not quiet:
        _print_skips(report)
    if as_json:
        typer.echo(output.json_text(report.as_dict()))
    else:
        typer.echo(output.index_summary(report, verbose=verbose))
    if report.skipped:
        raise typer.Exit(3)


def _print_skips(report: IndexReport) -> None:
    """One stderr line per file that was skipped or got no re-ranking tokens, with the reason."""
    for path, reason in report.skipped:
        output.err(f"skipped {output.shown(path)}: {reason}")
    for path, reason in report.tokens_skipped:
        output.err(f"no re-ranking tokens for {output.shown(path)}: {reason}")
