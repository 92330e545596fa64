"""The commands of ``mbm``: thin wrappers over :class:`mbm.Engine` and the model factory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mbm.cli import output
from mbm.cli.scale_commands import EfOpt, IndexTypeOpt, MaxMemoryOpt, NprobeOpt
from mbm.config import DEFAULT_BATCH_SIZE, DEFAULT_COLLECTION
from mbm.errors import UsageError
from mbm.retrieval.rerank import DEFAULT_RERANK_TOP

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


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("search")(search)
    app.command("info")(info)
    app.command("collections", help="Same as `mbm info`: list collections.")(info)
    app.command("models")(models)
    app.command("check")(check)
    app.command("serve")(serve)


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
        int, typer.Option("--batch-size", "-b", help="Images per forward pass.")
    ] = DEFAULT_BATCH_SIZE,
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
        for path, reason in report.skipped:
            output.err(f"skipped {output.shown(path)}: {reason}")
        for path, reason in report.tokens_skipped:
            output.err(f"no re-ranking tokens for {output.shown(path)}: {reason}")
    if as_json:
        typer.echo(output.json_text(report.as_dict()))
    else:
        typer.echo(output.index_summary(report, verbose=verbose))
    if report.skipped:
        raise typer.Exit(3)


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
        bool,
        typer.Option(
            "--rerank",
            help=f"Re-order the top candidates (--rerank-top, default {DEFAULT_RERANK_TOP}) with the model's fusion head, from tokens stored at index time (no file is opened; needs a model trained by `mbm train`).",
        ),
    ] = False,
    rerank_top: Annotated[
        int | None,
        typer.Option(
            "--rerank-top",
            help=f"How many candidates --rerank re-orders (default {DEFAULT_RERANK_TOP}, at least --top); implies --rerank.",
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

    if query is None and not image:
        raise UsageError('nothing to search for — give a QUERY ("red car") or --image PATH')
    if as_json and (paths_only or print0):
        raise UsageError("--json and --paths/--print0 are different outputs — give one of them")
    if rerank_top is not None and rerank_top <= 0:
        raise UsageError(f"--rerank-top must be at least 1, not {rerank_top} — or leave out --rerank and --rerank-top")
    candidates = rerank_top if rerank_top is not None else (DEFAULT_RERANK_TOP if rerank else 0)
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
    if as_json:
        typer.echo(output.search_json(q, collection, hits, timings))
    elif paths_only or print0:
        output.write_paths([h.path if h.text is None else h.text for h in hits], print0=print0)
    elif preview:
        from mbm.cli.preview import show_hits

        show_hits(hits, output.hits_table, warn=output.err)
    else:
        typer.echo(output.hits_table(hits))
    if verbose:
        output.err("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    if not hits and not as_json:
        narrowed = [
            f"--{name}"
            for name, v in (
                ("min-score", min_score),
                ("in", under),
                ("after", after),
                ("before", before),
                ("camera", camera),
                ("tag", tag),
            )
            if v
        ]
        auto = min_score is None and sort != "score"
        output.err(
            "no results"
            + (f" with {', '.join(narrowed)}" if narrowed else "")
            + (f" above the automatic cutoff that --sort {sort} applies (--min-score -1 keeps all)" if auto else "")
        )


def _min_score(text: str | None) -> float | str | None:
    if text is None or text.strip().lower() == "auto":
        return text and "auto"
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--min-score {text!r} is not a number or 'auto' — e.g. --min-score 0.25") from None


def info(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List collections: model, item count, index type, size on disk, location.

    Example: mbm info --json
    """
    from mbm.config import resolve_store
    from mbm.engine import Engine

    infos = Engine.collections(store)
    if as_json:
        typer.echo(output.json_text({"store": str(resolve_store(store)), "collections": [c.as_dict() for c in infos]}))
        return
    if not infos:
        output.err(f"no collections in {resolve_store(store)} — run `mbm index PATH` to create one")
        return
    typer.echo(output.collections_table(infos))


def models(
    as_json: JsonOpt = False,
    all_tags: Annotated[bool, typer.Option("--all", help="Also list every open_clip pretrained tag.")] = False,
) -> None:
    """List loadable models and whether their weights are present locally.

    Example: mbm models --all
    """
    from mbm.models.factory import list_models

    rows = [
        m
        for m in list_models()
        if all_tags or m.kind != "open_clip pretrained" or m.weights_present or _featured(m.spec)
    ]
    if as_json:
        typer.echo(output.json_text([m.__dict__ for m in rows]))
        return
    typer.echo(output.models_table(rows))
    if not all_tags:
        output.err("(showing featured and cached open_clip models; --all lists every pretrained tag)")


def _featured(spec: str) -> bool:
    return spec in {
        "ViT-B-32-256:datacomp_s34b_b86k",
        "ViT-B-32:laion2b_s34b_b79k",
        "ViT-B-16:datacomp_xl_s13b_b90k",
        "ViT-L-14:datacomp_xl_s13b_b90k",
        "MobileCLIP-S1:datacompdr",
        "ViT-SO400M-14-SigLIP-384:webli",
    }


def check(
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection",
            "-c",
            help="Check only this collection (default: every collection in the store).",
            show_default=False,
        ),
    ] = None,
    store: StoreOpt = None,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Repair what can be repaired without losing data: remove rows of files that are gone (never of a missing folder), damaged embeddings, stale caches and temp files.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check collections: catalog integrity, damaged embeddings, files that are gone, stale caches.

    Exit code 1 when a problem is left (after --fix, when it could not be fixed).

    Example: mbm check --fix -c photos
    """
    from mbm.config import resolve_store
    from mbm.engine import Engine

    names = [collection] if collection else [c.name for c in Engine.collections(store)]
    if not names:
        output.err(f"no collections in {resolve_store(store)} — run `mbm index PATH` to create one")
        return
    reports = []
    for name in names:
        with Engine.open(store, name) as eng:
            reports.append(eng.check(fix=fix))
    if as_json:
        typer.echo(
            output.json_text({"store": str(resolve_store(store)), "collections": [r.as_dict() for r in reports]})
        )
    else:
        typer.echo(output.check_report(reports))
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8000,
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection",
            "-c",
            help="Serve this collection (repeat for several; default: every collection in the store).",
            show_default=False,
        ),
    ] = None,
    store: StoreOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MBM_API_KEY",
            help="Require this key on every endpoint but /healthz (Authorization: Bearer KEY or X-API-Key).",
            show_default=False,
        ),
    ] = None,
    allow_image_urls: Annotated[
        bool,
        typer.Option(
            "--allow-image-urls",
            help="Let /knn-service fetch `image_url` queries from public hosts (the server makes requests for clients).",
        ),
    ] = False,
    allow_private_image_urls: Annotated[
        bool,
        typer.Option(
            "--allow-private-image-urls",
            help="With --allow-image-urls: also fetch from loopback and private networks (only on trusted networks).",
        ),
    ] = False,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root",
            help="Folders thumbnails may be read from (default: the folder holding each collection's files); repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve collections over HTTP: JSON search API, thumbnails, metrics and a web page.

    Example: mbm serve --collection photos --port 8000
    """
    from mbm.config import resolve_store
    from mbm.server import ServerConfig, create_app, require_extra

    require_extra()
    import uvicorn

    config = ServerConfig(
        store=resolve_store(store),
        collections=list(collection or []),
        host=host,
        port=port,
        api_key=api_key or None,
        allow_image_urls=allow_image_urls or allow_private_image_urls,
        allow_private_image_urls=allow_private_image_urls,
        roots=[str(r) for r in root or []],
    )
    config.check()
    app = create_app(config)
    output.err(f"mbm serving {', '.join(app.state.collections.served)} on http://{host}:{port}/ (API docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
