"""``mbm search``: parses the query and filters, calls :meth:`mbm.Engine.search`, prints the hits."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mbm.cli import output
from mbm.cli.options import CollectionOpt, DeviceOpt, EfOpt, JsonOpt, ModelOpt, NprobeOpt, PrecisionOpt, StoreOpt
from mbm.config import DEFAULT_COLLECTION
from mbm.errors import UsageError
from mbm.retrieval.rerank import DEFAULT_RERANK_TOP

if TYPE_CHECKING:
    from mbm.retrieval.query import Query
    from mbm.retrieval.searcher import Hit


def register(app: typer.Typer) -> None:
    app.command("search")(search)


def search(
    query: Annotated[
        str | None,
        typer.Argument(
            help='Text, an image path, or a weighted sum: "2:red car + ./beach.jpg - night". W: weights a term unless a digit follows the colon ("3:10 to Yuma" is text); "quoted" terms are literal text.',
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            "-i",
            help="Query with this image file, taken as it is (never parsed); repeat for several. Added to QUERY if both are given.",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", "-k", help="Number of results.")] = 10,
    min_score: Annotated[
        str | None,
        typer.Option(
            "--min-score",
            help="Drop results scoring below this cosine similarity, or 'auto': below the query's background (median + 2.5 robust std of its scores against 2,000 random items).",
            show_default=False,
        ),
    ] = None,
    under: Annotated[
        list[Path] | None,
        typer.Option(
            "--in", help="Only results in this folder (or file); repeat for any of several.", show_default=False
        ),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Only photos taken on or after this date (EXIF capture time, else file time): 2024, 2024-06, 2024-06-15.",
            show_default=False,
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            help="Only photos taken before this date (same forms; --after 2024-06 --before 2024-07 is June 2024).",
            show_default=False,
        ),
    ] = None,
    camera: Annotated[
        str | None,
        typer.Option("--camera", help="Only photos whose camera name contains this (any case).", show_default=False),
    ] = None,
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            help="score (default), date (oldest first) or path; date and path order every result above --min-score (auto unless given).",
        ),
    ] = "score",
    offset: Annotated[
        int, typer.Option("--offset", help="Skip this many results of the order (paging: --offset 10 -k 10 is page 2).")
    ] = 0,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    paths_only: Annotated[
        bool,
        typer.Option(
            "--paths",
            help="Print bare paths (texts for a text collection), one per line, for piping; refuses a path holding a newline (use --print0).",
        ),
    ] = False,
    print0: Annotated[
        bool,
        typer.Option(
            "--print0",
            help="Like --paths, but end each path with a NUL byte instead of a newline (raw bytes, for xargs -0).",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print where the time went on stderr.")] = False,
    rerank: Annotated[
        bool | None,
        typer.Option(
            "--rerank/--no-rerank",
            help=f"Re-order the top candidates (--rerank-top, default {DEFAULT_RERANK_TOP}) with the model's fusion head, from tokens stored at index time (no file is opened; needs a model trained by `mbm train`). Default: on for text queries with a model whose re-ranking is calibrated (the bundled mbm-offline), off otherwise.",
            show_default=False,
        ),
    ] = None,
    rerank_top: Annotated[
        int | None,
        typer.Option(
            "--rerank-top",
            help=f"How many candidates --rerank re-orders (default {DEFAULT_RERANK_TOP}, at least --top; the rest follow in order); implies --rerank.",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag", help="Only items carrying this tag (any case; `mbm tags` lists them).", show_default=False
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="vector (the model), keyword (BM25 over file/folder names, captions, XMP/IPTC keywords) or hybrid (both, by reciprocal rank fusion).",
        ),
    ] = "vector",
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Show thumbnails in terminals that can (kitty, iTerm2, WezTerm, sixel terminals); nothing elsewhere or when piped.",
        ),
    ] = False,
    nprobe: NprobeOpt = None,
    ef: EfOpt = None,
) -> None:
    """Search a collection with text, an image, or both.

    Example: mbm search "red car" -k 5
    """
    from mbm.engine import Engine
    from mbm.retrieval.query import Query

    _check_search_args(query, image, as_json=as_json, paths=paths_only or print0, rerank=rerank, rerank_top=rerank_top)
    candidates: int | None = None  # the default: as the model's calibration says (Engine.search)
    if rerank_top is not None:
        candidates = rerank_top
    elif rerank is not None:
        candidates = DEFAULT_RERANK_TOP if rerank else 0
    q = Query.parse(query, images=image or ())
    started = time.perf_counter()
    with Engine.open(store, collection, model=model, device=device, precision=precision) as eng:
        hits = eng.search(
            q,
            k=top,
            min_score=_min_score(min_score),
            under=[str(u) for u in under or []],
            rerank=candidates,
            after=after,
            before=before,
            camera=camera,
            sort=sort,
            offset=offset,
            tag=tag,
            mode=mode,
            nprobe=nprobe,
            ef=ef,
        )
        timings = {**eng.timings, "total": time.perf_counter() - started}
    _print_hits(q, collection, hits, timings, as_json=as_json, paths_only=paths_only, print0=print0, preview=preview)
    if verbose:
        output.err("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    if not hits and not as_json:
        filters = {"min-score": min_score, "in": under, "after": after, "before": before, "camera": camera, "tag": tag}
        output.err(_no_results(filters, auto_cutoff=min_score is None and sort != "score", sort=sort))


def _check_search_args(
    query: str | None,
    image: list[Path] | None,
    *,
    as_json: bool,
    paths: bool,
    rerank: bool | None,
    rerank_top: int | None,
) -> None:
    """Usage errors found before anything is opened."""
    if query is None and not image:
        raise UsageError('nothing to search for — give a QUERY ("red car") or --image PATH')
    if as_json and paths:
        raise UsageError("--json and --paths/--print0 are different outputs — give one of them")
    if rerank_top is not None and rerank_top <= 0:
        raise UsageError(f"--rerank-top must be at least 1, not {rerank_top} — or leave out --rerank and --rerank-top")
    if rerank is False and rerank_top is not None:
        raise UsageError(f"--no-rerank and --rerank-top {rerank_top} contradict each other — give one of them")


def _print_hits(
    query: Query,
    collection: str,
    hits: Sequence[Hit],
    timings: dict[str, float],
    *,
    as_json: bool,
    paths_only: bool,
    print0: bool,
    preview: bool,
) -> None:
    """The hits on stdout: JSON, bare paths, a table with thumbnails, or a plain table."""
    if as_json:
        typer.echo(output.search_json(query, collection, hits, timings))
    elif paths_only or print0:
        output.write_paths([h.path if h.text is None else h.text for h in hits], print0=print0)
    elif preview:
        from mbm.cli.preview import show_hits

        show_hits(hits, output.hits_table, warn=output.err)
    else:
        typer.echo(output.hits_table(hits))


def _no_results(filters: Mapping[str, object], *, auto_cutoff: bool, sort: str) -> str:
    """Why nothing came back: the filters given (by option name) and the cutoff --sort applied."""
    narrowed = [f"--{name}" for name, value in filters.items() if value]
    return (
        "no results"
        + (f" with {', '.join(narrowed)}" if narrowed else "")
        + (f" above the automatic cutoff that --sort {sort} applies (--min-score -1 keeps all)" if auto_cutoff else "")
    )


def _min_score(text: str | None) -> float | str | None:
    """--min-score as the engine takes it: a number, "auto", or None."""
    if text is None or text.strip().lower() == "auto":
        return text and "auto"
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--min-score {text!r} is not a number or 'auto' — e.g. --min-score 0.25") from None
