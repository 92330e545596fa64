"""``mbm train`` and ``mbm train-fusion``: thin wrappers over mbm.train.loop and mbm.train.fusion_stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mbm.cli import output
from mbm.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("train-fusion")(train_fusion)


def train(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="JSONL/CSV manifest of image-caption pairs with a split column (see data/README.md).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder: config, metrics.jsonl, last/ and best/ checkpoints.")
    ] = Path("runs/mbm-small"),
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Architecture config (mbm-lite0: pretrained EfficientNet-Lite0 + MiniLM; mbm-small, mbm-tiny, a JSON file) or a checkpoint folder to fine-tune.",
        ),
    ] = "mbm-lite0",
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the train split.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Pairs per step (in-batch negatives).")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, cosine after warmup).")] = 5e-4,
    warmup: Annotated[int, typer.Option("--warmup", help="Linear warmup steps.")] = 100,
    w_itm: Annotated[
        float, typer.Option("--w-itm", help="Weight of the fusion image-text matching loss (0 = no fusion head).")
    ] = 1.0,
    w_cls: Annotated[
        float, typer.Option("--w-cls", help="Weight of the classification loss on labelled rows (0 = none).")
    ] = 0.5,
    freeze_text: Annotated[
        bool | None,
        typer.Option(
            "--freeze-text/--train-text",
            help="Keep the text transformer frozen (LiT). Default: frozen when it is pretrained (MiniLM, a checkpoint's), trained when it starts from random weights.",
        ),
    ] = None,
    freeze_image: Annotated[
        bool | None,
        typer.Option(
            "--freeze-image/--train-image",
            help="Keep the image tower frozen (LiT). Default: frozen when it is pretrained (mbm-lite0's ImageNet trunk), trained when it starts from random weights.",
        ),
    ] = None,
    image_trainable_blocks: Annotated[
        int,
        typer.Option(
            "--image-trainable-blocks",
            help="Fine-tune the last N block groups of a pretrained image trunk (the rest stays frozen; no feature cache then).",
        ),
    ] = 0,
    feature_cache: Annotated[
        Path | None,
        typer.Option(
            "--feature-cache",
            help="Folder of cached frozen-trunk features: filled on first use (resumable), then epochs run the heads only.",
            show_default=False,
        ),
    ] = None,
    views: Annotated[
        int,
        typer.Option(
            "--views", help="With --feature-cache: views per picture (1 = as indexed; more = augmented copies)."
        ),
    ] = 1,
    w_kd: Annotated[
        float,
        typer.Option(
            "--w-kd",
            help="Weight of the distillation loss from the image tower's ImageNet classifier (class-bridge models; 0 = off).",
        ),
    ] = 1.0,
    kd_temperature: Annotated[
        float, typer.Option("--kd-temperature", help="Softmax temperature of the distillation loss.")
    ] = 2.0,
    itm_rows: Annotated[
        int,
        typer.Option(
            "--itm-rows",
            help="Score fusion (ITM) pairs for the first N rows of each batch only (0 = all rows); hard negatives are still mined over the whole batch.",
        ),
    ] = 0,
    w_contrastive: Annotated[
        float, typer.Option("--w-contrastive", help="Weight of the contrastive loss (0 = train the heads only).")
    ] = 1.0,
    val_rerank_top: Annotated[
        int,
        typer.Option("--val-rerank-top", help="Also measure fusion re-ranking of the top N on validation (0 = off)."),
    ] = 0,
    select_on: Annotated[
        str,
        typer.Option(
            "--select-on",
            help="Validation metric that picks best/: mean_recall, or rerank_mean (with --val-rerank-top).",
        ),
    ] = "mean_recall",
    augment: Annotated[
        float, typer.Option("--augment", help="Style augmentation strength, 0 = none (0.5: the bundled recipe).")
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last after an interruption.")] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many steps.", show_default=False)
    ] = None,
    sources: Annotated[
        str,
        typer.Option(
            "--sources",
            help="Train on these manifest sources only (comma-separated); '-name' leaves one out, e.g. --sources=-symbola.",
        ),
    ] = "",
) -> None:
    """Train dual encoders (contrastive) jointly with the fusion and classification heads.

    Example: mbm train cache/mbm-data/manifest.jsonl --out runs/v2 --feature-cache cache/features --views 2
    """
    from mbm.train.loop import TrainConfig
    from mbm.train.loop import train as run_training

    if not manifest.is_file():
        raise UsageError(f"manifest {manifest} does not exist — build one with `mbm data build` or see data/README.md")
    config = TrainConfig(
        manifest=str(manifest),
        out_dir=str(out),
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        w_itm=w_itm,
        w_cls=w_cls,
        freeze_text=freeze_text,
        freeze_image=freeze_image,
        w_contrastive=w_contrastive,
        val_rerank_top=val_rerank_top,
        select_on=select_on,
        augment=augment,
        seed=seed,
        device=device,
        resume=resume,
        max_steps=max_steps,
        w_kd=w_kd,
        kd_temperature=kd_temperature,
        feature_cache=str(feature_cache) if feature_cache else None,
        views=views,
        image_trainable_blocks=image_trainable_blocks,
        itm_rows=itm_rows,
        sources=[s.strip() for s in sources.split(",") if s.strip()],
    )
    result = run_training(config, progress=_print_progress)
    typer.echo(json.dumps(result, indent=2))


def train_fusion(
    base: Annotated[
        str,
        typer.Argument(
            help="The dual encoder to re-rank for: an mbm checkpoint folder or name (mbm-offline), or an open_clip model (ViT-B-32:openai).",
            show_default=False,
        ),
    ],
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest of image-caption pairs with train and val rows (see data/README.md).", show_default=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the model with its new fusion head (BASE's files + the head)."),
    ] = Path("runs/fusion"),
    feature_cache: Annotated[
        Path | None,
        typer.Option(
            "--feature-cache",
            help="A feature cache of `mbm train --feature-cache` for the same image tower (checked on a sample; otherwise features are computed).",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the distinct training captions.")] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Captions per step.")] = 64,
    negatives: Annotated[
        int, typer.Option("--negatives", help="Hard negatives per caption, drawn from BASE's own top --mine-top.")
    ] = 7,
    mine_top: Annotated[
        int, typer.Option("--mine-top", help="Mine negatives among BASE's top N pictures of each caption.")
    ] = 50,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).")] = 5e-4,
    val_top: Annotated[
        int, typer.Option("--val-top", help="Re-rank the top N on validation (calibrates the dual weight).")
    ] = 50,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start a new fusion head even when BASE has one.")] = False,
    sources: Annotated[
        str, typer.Option("--sources", help="Only these manifest sources (comma-separated; '-name' leaves one out).")
    ] = "",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Train a fusion (re-ranking) head for a frozen dual encoder on its own hard negatives.

    Both towers stay frozen, so this works for a pretrained CLIP as for mbm's models; `mbm search --rerank`
    then re-ranks with it. Example: mbm train-fusion ViT-B-32:openai my-pairs.jsonl --out runs/clip-fusion
    """
    import logging

    from mbm.train.fusion_stage import FusionStageConfig
    from mbm.train.fusion_stage import train_fusion as run

    if not manifest.is_file():
        raise UsageError(
            f"manifest {manifest} does not exist — build one with `mbm data build` or write one (see data/README.md)"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = FusionStageConfig(
        base=base,
        manifest=str(manifest),
        out_dir=str(out),
        epochs=epochs,
        batch_size=batch_size,
        negatives=negatives,
        mine_top=mine_top,
        lr=lr,
        val_top=val_top,
        fresh=fresh,
        device=device,
        feature_cache=str(feature_cache) if feature_cache else None,
        seed=seed,
        sources=[s.strip() for s in sources.split(",") if s.strip()] or None,
    )
    report = run(config)
    output.err(f"chosen: {report['chosen']}")
    typer.echo(str(out))


def _print_progress(event: dict) -> None:
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in event.items()}
    output.err(" ".join(f"{k}={v}" for k, v in shown.items()))
