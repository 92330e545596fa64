"""The commands of ``mbm``: thin wrappers over :class:`mbm.Engine` and the model factory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mbm.cli import output
from mbm.config import DEFAULT_BATCH_SIZE, DEFAULT_COLLECTION
from mbm.errors import UsageError

StoreOpt = Annotated[
    Optional[Path], typer.Option("--store", envvar="MBM_HOME", help="Store folder (default: $MBM_HOME or ~/.local/share/mbm).", show_default=False)
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name inside the store.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model spec: open_clip NAME:TAG, a checkpoint folder, or a bundled model (see `mbm models`).", show_default=False),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 where the hardware makes it fast), fp32, bf16 or fp16 (GPU).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("search")(search)
    app.command("info")(info)
    app.command("collections", help="Same as `mbm info`: list collections.")(info)
    app.command("models")(models)


def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or files to index. Text collections: .txt (one text per line), .jsonl (a \"text\" field) or .csv (a text column).", show_default=False)],
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = DEFAULT_BATCH_SIZE,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", help="Decoding threads (default: one per CPU core).", show_default=False)] = None,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Skip images with more pixels than this (decompression-bomb guard).")] = 180_000_000,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-file skip lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print time per stage.")] = False,
) -> None:
    """Embed every image (or text) under PATHS into a collection; re-runs only do what changed.

    Example: mbm index ~/Pictures --collection photos
    """
    from mbm.engine import Engine, check_index_args

    check_index_args([str(p) for p in paths], batch_size)
    with Engine.open(store, collection, model=model, device=device, precision=precision) as eng:
        with output.progress_bar(enabled=not quiet) as progress:
            report = eng.index([str(p) for p in paths], batch_size=batch_size, workers=workers,
                               max_pixels=max_pixels, progress=progress)
    if not quiet:
        for path, reason in report.skipped:
            output.err(f"skipped {output.shown(path)}: {reason}")
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(output.index_summary(report, verbose=verbose))
    if report.skipped:
        raise typer.Exit(3)


def search(
    query: Annotated[Optional[str], typer.Argument(help='Text, an image path, or a weighted sum: "2:red car + ./beach.jpg - night".', show_default=False)] = None,
    image: Annotated[Optional[Path], typer.Option("--image", "-i", help="Query with this image (added to QUERY if both are given).", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", "-k", help="Number of results.")] = 10,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Drop results scoring below this cosine similarity.", show_default=False)] = None,
    under: Annotated[Optional[Path], typer.Option("--in", help="Only results under this folder.", show_default=False)] = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    paths_only: Annotated[bool, typer.Option("--paths", help="Print bare paths, one per line (for piping).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print where the time went on stderr.")] = False,
    rerank: Annotated[int, typer.Option("--rerank", help="Re-rank the top N with the model's fusion head (0 = off; needs a model trained by `mbm train`).")] = 0,
) -> None:
    """Search a collection with text, an image, or both.

    Example: mbm search "red car" -k 5
    """
    from mbm.engine import Engine

    if query is None and image is None:
        raise UsageError('nothing to search for — give a QUERY ("red car") or --image PATH')
    if image is not None and not image.expanduser().is_file():
        raise UsageError(f"query image {image} does not exist — check the path")
    text = " + ".join(q for q in (query, str(image.expanduser().absolute()) if image else None) if q)
    started = time.perf_counter()
    with Engine.open(store, collection, model=model, device=device, precision=precision) as eng:
        hits = eng.search(text, k=top, min_score=min_score, under=str(under) if under else None, rerank=rerank)
        timings = {**eng.timings, "total": time.perf_counter() - started}
    if as_json:
        doc = {"query": text, "collection": collection, "hits": [h.as_dict() for h in hits],
               "seconds": {k: round(v, 4) for k, v in timings.items()}}
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    elif paths_only:
        for h in hits:
            typer.echo(output.shown(h.path) if h.text is None else h.text)
    else:
        typer.echo(output.hits_table(hits))
    if verbose:
        output.err("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    if not hits and not as_json:
        output.err("no results" + (" above --min-score" if min_score is not None else "") + (" under --in" if under else ""))


def info(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List collections: model, item count, index type, size on disk, location.

    Example: mbm info --json
    """
    from mbm.config import resolve_store
    from mbm.engine import Engine

    infos = Engine.collections(store)
    if as_json:
        typer.echo(json.dumps({"store": str(resolve_store(store)), "collections": [c.as_dict() for c in infos]}, indent=2))
        return
    if not infos:
        output.err(f"no collections in {resolve_store(store)} — run `mbm index PATH` to create one")
        return
    typer.echo(output.collections_table(infos))


def models(as_json: JsonOpt = False, all_tags: Annotated[bool, typer.Option("--all", help="Also list every open_clip pretrained tag.")] = False) -> None:
    """List loadable models and whether their weights are present locally.

    Example: mbm models --all
    """
    from mbm.models.factory import list_models

    rows = [m for m in list_models() if all_tags or m.kind != "open_clip pretrained" or m.weights_present or _featured(m.spec)]
    if as_json:
        typer.echo(json.dumps([m.__dict__ for m in rows], indent=2))
        return
    typer.echo(output.models_table(rows))
    if not all_tags:
        output.err("(showing featured and cached open_clip models; --all lists every pretrained tag)")


def _featured(spec: str) -> bool:
    return spec in {"ViT-B-32-256:datacomp_s34b_b86k", "ViT-B-32:laion2b_s34b_b79k", "ViT-B-16:datacomp_xl_s13b_b90k",
                    "ViT-L-14:datacomp_xl_s13b_b90k", "MobileCLIP-S1:datacompdr", "ViT-SO400M-14-SigLIP-384:webli"}

