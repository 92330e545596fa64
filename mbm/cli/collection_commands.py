"""``mbm info`` (alias ``mbm collections``), ``mbm models`` and ``mbm check``: what the store holds, which
models collections can be made with, and whether the collections are sound."""

from __future__ import annotations

from typing import Annotated

import typer

from mbm.cli import output
from mbm.cli.options import JsonOpt, StoreOpt


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("collections", help="Same as `mbm info`: list collections.")(info)
    app.command("models")(models)
    app.command("check")(check)


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
