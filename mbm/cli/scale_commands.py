"""``mbm import``: a thin wrapper over :meth:`mbm.Engine.import_embeddings`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbm.cli import output
from mbm.cli.options import IndexTypeOpt, MaxMemoryOpt, StoreOpt
from mbm.config import DEFAULT_COLLECTION


def register(app: typer.Typer) -> None:
    app.command("import")(import_embeddings)


def import_embeddings(
    path: Annotated[
        Path,
        typer.Argument(
            help="clip-retrieval inference output (a folder with img_emb/ and metadata/), a .npy file with a .parquet or .jsonl of the same name beside it, or a folder of such pairs.",
            show_default=False,
        ),
    ],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to import into.")] = (
        DEFAULT_COLLECTION
    ),
    store: StoreOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The model that computed the embeddings (needed for a new collection; searched with later). Its dimension must match.",
            show_default=False,
        ),
    ] = None,
    texts: Annotated[
        bool,
        typer.Option(
            "--texts", help="Import clip-retrieval's text_emb/ (captions) into a text collection, not img_emb/."
        ),
    ] = False,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="If an index run is writing this collection, stop instead of waiting.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-row lines.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a summary.")] = False,
) -> None:
    """Import embeddings computed elsewhere (clip-retrieval's output, or .npy + .parquet/.jsonl); re-runs skip what is there.

    Example: mbm import ./clip_out --collection laion --model ViT-B-32:laion2b_s34b_b79k
    """
    from mbm.engine import Engine

    with Engine.open(store, collection, model=model, device="cpu") as eng:
        with output.progress_bar(enabled=not quiet) as progress:
            report = eng.import_embeddings(
                path,
                texts=texts,
                index_type=index_type,
                max_memory=max_memory,
                progress=progress,
                wait=not no_wait,
                notify=output.err,
            )
        info = eng.info()
    if not quiet:
        for row, reason in report.rejected[:20]:
            output.err(f"skipped {output.shown(row)}: {reason}")
        if len(report.rejected) > 20:
            output.err(f"... and {len(report.rejected) - 20} more rows skipped")
    if as_json:
        typer.echo(output.json_text({**report.as_dict(), "index": info.index}))
    else:
        typer.echo(
            f"imported {report.imported}, unchanged {report.unchanged}, skipped {len(report.rejected)} rows from "
            f"{report.shards} file(s) ({report.shards_unchanged} unchanged since the last import) — "
            f"{report.total_items} items in the collection, {report.seconds.get('total', 0):.1f}s\n"
            + output.index_line(info.index)
        )
    if report.rejected:
        raise typer.Exit(3)
