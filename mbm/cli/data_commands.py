"""``mbm data build``: a thin wrapper over :func:`mbm.train.sources.build.build_all`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbm.cli import output

data_app = typer.Typer(
    help="Build the offline training/evaluation datasets from Debian packages.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for manifest.jsonl, its stats and the rendered images.")
    ] = Path("cache/mbm-data"),
    sources: Annotated[
        str,
        typer.Option(
            "--sources", help="Comma-separated: openclipart, emoji, symbola, tuxpaint, fashion-mnist, iconify."
        ),
    ] = "openclipart,emoji,symbola,tuxpaint,fashion-mnist,iconify",
    size: Annotated[int, typer.Option("--size", help="Rendered image side in pixels.")] = 224,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many rows per source (quick runs).", show_default=False)
    ] = None,
    val: Annotated[
        int | None,
        typer.Option("--val", help="Validation rows (one per concept and style; default 1000).", show_default=False),
    ] = None,
    test: Annotated[
        int | None,
        typer.Option("--test", help="Test rows (one per concept and style; default 1500).", show_default=False),
    ] = None,
    iconify: Annotated[
        Path | None,
        typer.Option(
            "--iconify",
            help="The @iconify/json package: its folder or the tarball of `npm pack @iconify/json@2.2.535`.",
            show_default=False,
        ),
    ] = None,
    emojilib: Annotated[
        Path | None,
        typer.Option(
            "--emojilib", help="The emojilib npm package (emoji keywords as extra captions).", show_default=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Split seed.")] = 0,
) -> None:
    """Render the offline image-caption sources and write a leakage-safe split manifest.

    Example: mbm data build --out cache/mbm-data --iconify iconify-json-2.2.535.tgz
    """
    from mbm.train.sources.build import DEFAULT_TEST, DEFAULT_VAL, build_all

    names = tuple(s.strip() for s in sources.split(",") if s.strip())
    roots = {k: v for k, v in (("iconify", iconify), ("emojilib", emojilib)) if v}
    manifest = build_all(
        out,
        sources=names,
        size=size,
        limit=limit,
        val=DEFAULT_VAL if val is None else val,
        test=DEFAULT_TEST if test is None else test,
        seed=seed,
        log=output.err,
        roots=roots,
    )
    typer.echo(str(manifest))
