"""``mbm eval``: thin wrapper over mbm.train.suite (the whole suite) and mbm.train.evaluate (one split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mbm.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)


def evaluate(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint folder (e.g. runs/small/best) or model spec.", show_default=False)
    ],
    manifest: Annotated[Path, typer.Argument(help="Manifest with the split to evaluate.", show_default=False)],
    split: Annotated[
        str, typer.Option("--split", help="train, val, test or heldout; 'suite' runs every test of mbm.train.suite.")
    ] = "suite",
    sources: Annotated[
        str,
        typer.Option("--sources", help="Only these sources of the split (comma-separated); '-name' leaves one out."),
    ] = "",
    rerank_top: Annotated[
        int,
        typer.Option(
            "--rerank-top",
            help="Re-rank each query's top N with the fusion head (0 = off); N = 50 is what `mbm search --rerank` uses.",
        ),
    ] = 50,
    rerank_sweep: Annotated[
        str,
        typer.Option(
            "--rerank-sweep",
            help="Suite only: also re-rank the test, held-out and photo sets over each of these N (comma-separated; '' = off).",
        ),
    ] = "10,50,200",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Weights precision: fp32, bf16, fp16 (GPU) or auto (what search would pick here). The same for a model name and a folder.",
        ),
    ] = "fp32",
    photos: Annotated[
        str | None,
        typer.Option(
            "--photos",
            help="photos.jsonl of `python -m mbm.train.evalsets` (suite only). Default: looked for next to MANIFEST and in cache/mbm-eval; 'none' skips it.",
            show_default=False,
        ),
    ] = None,
    style_shift: Annotated[
        str | None,
        typer.Option(
            "--style-shift",
            help="icon-themes.jsonl of `python -m mbm.train.evalsets` (suite only). Default: looked for like --photos; 'none' skips it.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Recall@1/5/10 both directions (with and without fusion re-ranking), cross-style, zero-shot accuracy,
    real photos (with 95% intervals) and icon-theme styles.

    Example: mbm eval runs/small/best cache/mbm-data/manifest.jsonl              (the whole suite)
    Example: mbm eval mbm-offline cache/mbm-data/manifest.jsonl --photos cache/mbm-eval/photos.jsonl
    Example: mbm eval runs/small/best cache/mbm-data/manifest.jsonl --split heldout --json
    """
    if not manifest.is_file():
        raise UsageError(f"manifest {manifest} does not exist — build one with `mbm data build`")
    if split == "suite":
        if sources:
            raise UsageError(
                "--sources selects rows of one split — use it with --split test|val|heldout, not the suite"
            )
        _evaluate_suite(
            checkpoint,
            manifest,
            rerank_top=rerank_top,
            rerank_sweep=rerank_sweep,
            device=device,
            precision=precision,
            photos=photos,
            style_shift=style_shift,
            as_json=as_json,
        )
        return
    if photos is not None or style_shift is not None:
        raise UsageError("--photos and --style-shift belong to the suite — leave out --split to run them")
    _evaluate_split(
        checkpoint,
        manifest,
        split=split,
        sources=sources,
        rerank_top=rerank_top,
        device=device,
        precision=precision,
        as_json=as_json,
    )


def _evaluate_suite(
    checkpoint: str,
    manifest: Path,
    *,
    rerank_top: int,
    rerank_sweep: str,
    device: str,
    precision: str,
    photos: str | None,
    style_shift: str | None,
    as_json: bool,
) -> None:
    """Every test of mbm.train.suite: the report as JSON, or one line per section."""
    from mbm.train.suite import evaluate_suite, summary_table

    try:
        sweep = tuple(int(n) for n in rerank_sweep.split(",") if n.strip())
    except ValueError:
        raise UsageError(
            f"--rerank-sweep {rerank_sweep!r} is not a comma-separated list of numbers — e.g. 10,50,200"
        ) from None
    report = evaluate_suite(
        checkpoint,
        manifest,
        rerank_top=rerank_top,
        rerank_sweep_tops=sweep,
        device=device,
        precision=precision,
        photos=photos,
        style_shift=style_shift,
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for section, figures in summary_table(report):
            typer.echo(f"{section:<52} {figures}")


def _evaluate_split(
    checkpoint: str,
    manifest: Path,
    *,
    split: str,
    sources: str,
    rerank_top: int,
    device: str,
    precision: str,
    as_json: bool,
) -> None:
    """The metrics of one split (of the chosen sources): as JSON, or one line per metric."""
    from mbm.train.evaluate import evaluate as run_eval

    names = [s.strip() for s in sources.split(",") if s.strip()]
    metrics = run_eval(
        checkpoint, manifest, split=split, rerank_top=rerank_top, device=device, sources=names, precision=precision
    )
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for key, value in metrics.items():
        typer.echo(f"{key:<32} {value:.4f}" if isinstance(value, float) else f"{key:<32} {value}")
