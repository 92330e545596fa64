"""Joint training of a dual encoder with a fusion (ITM) head and a classifier head.

Loss = w_contrastive * InfoNCE(image, text) + w_itm * BCE(fusion(pairs)) + w_cls * CE(classifier(image)),
with ITM negatives mined from in-batch similarities (one hard text per image, one hard
image per text, duplicates of the same caption or group never used as negatives).

A run folder ``out_dir`` holds ``config.json``, ``metrics.jsonl`` (one line per logged
step and per epoch), ``last/`` (checkpoint + optimizer state, for ``resume``) and
``best/`` (best validation mean recall). Every random draw is a function of
(seed, epoch, step), so a resumed run repeats the losses of an uninterrupted one.

The pieces: ``mbm.train.config`` (``TrainConfig``), ``mbm.train.run`` (building a run),
``mbm.train.step`` (losses and one update), ``mbm.train.trainer_state`` (checkpoints).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mbm.train.config import TrainConfig, device_and_autocast, resolve_frozen_towers
from mbm.train.data import Batch, EpochBatches, collate, describe
from mbm.train.evaluate import embed_rows
from mbm.train.recall import recall_at_k
from mbm.train.run import Run, build_run
from mbm.train.step import set_train_mode, train_step
from mbm.train.trainer_state import save_run

__all__ = ["TrainConfig", "train"]


class _Metrics:
    """Appends JSON lines to metrics.jsonl and hands the same dicts to the progress callback."""

    def __init__(self, path: Path, progress: Callable[[dict], None] | None):
        self.path, self.progress = path, progress

    def __call__(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.progress is not None:
            self.progress(record)


def train(config: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training; returns the final metrics. ``progress`` receives each logged dict."""
    started = time.perf_counter()
    config = resolve_frozen_towers(config)
    device, autocast = device_and_autocast(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = build_run(config, device)
    emit = _Metrics(out / "metrics.jsonl", progress)
    info = {
        "config": asdict(config),
        "model_cfg": run.model_cfg,
        "train": describe(run.train_set.rows),
        "val_pairs": len(run.val_rows),
    }
    (out / "config.json").write_text(json.dumps(info, indent=2))
    total = run.steps_per_epoch * config.epochs
    stop = min(total, config.max_steps) if config.max_steps is not None else total
    set_train_mode(run, config, True)
    result: dict[str, Any] = {"out_dir": str(out)}
    while run.step < stop:
        epoch, start = divmod(run.step, run.steps_per_epoch)
        result.update(_run_epoch(run, config, device, autocast, epoch, start, stop, emit))
    if run.step % run.steps_per_epoch:  # stopped inside an epoch: the epoch end did not save
        save_run(run, config, out / "last", {"step": run.step})
    result.update(step=run.step, best_mean_recall=run.best, seconds=time.perf_counter() - started)
    return result


def _run_epoch(
    run: Run, cfg: TrainConfig, device: str, autocast: bool, epoch: int, start: int, stop: int, emit: _Metrics
) -> dict:
    """Train from step ``start`` of ``epoch`` to its end (or ``stop``); validate and save at a complete epoch's end."""
    run.train_set.set_epoch(epoch)
    loader = _epoch_loader(run, cfg, epoch, start)
    t_epoch = time.perf_counter()
    sums, n_steps = _train_batches(run, cfg, loader, device, autocast, epoch, stop, emit)
    record: dict[str, Any] = {
        "event": "epoch",
        "step": run.step,
        "epoch": epoch,
        "complete": run.step % run.steps_per_epoch == 0,
    }
    record.update({k: v / max(1, n_steps) for k, v in sums.items()})
    record["pairs_per_s"] = n_steps * cfg.batch_size / (time.perf_counter() - t_epoch)
    if record["complete"]:
        _end_of_epoch(run, cfg, device, epoch, record)
    record["seconds"] = time.perf_counter() - t_epoch
    emit(record)
    return {
        "epoch": epoch,
        "train": {k: record[k] for k in sums},
        **({"val": record["val"]} if "val" in record else {}),
    }


def _epoch_loader(run: Run, cfg: TrainConfig, epoch: int, start: int) -> torch.utils.data.DataLoader:
    """The epoch's batches from step ``start`` on, in the order fixed by (seed, epoch)."""
    sampler = EpochBatches(len(run.train_set), cfg.batch_size, cfg.seed, epoch, start)
    if cfg.feature_cache:
        from mbm.train.cached_training import collate_cached as collate_fn
    else:
        collate_fn = collate
    return torch.utils.data.DataLoader(
        run.train_set, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers
    )


def _train_batches(
    run: Run,
    cfg: TrainConfig,
    loader: Iterable[Batch],
    device: str,
    autocast: bool,
    epoch: int,
    stop: int,
    emit: _Metrics,
) -> tuple[dict[str, float], int]:
    """One step per batch until the loader or ``stop`` ends, logging every ``log_every`` steps; returns the sums
    of the losses and the number of steps."""
    sums: dict[str, float] = {}
    t_log = time.perf_counter()
    n_steps = n_log = 0
    for batch in loader:
        losses = train_step(run, cfg, batch, device, autocast)
        n_steps, n_log = n_steps + 1, n_log + 1
        sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
        if run.step % max(1, cfg.log_every) == 0 or run.step == stop:
            now = time.perf_counter()
            emit(
                {
                    "event": "step",
                    "step": run.step,
                    "epoch": epoch,
                    **losses,
                    "pairs_per_s": n_log * cfg.batch_size / (now - t_log),
                }
            )
            t_log, n_log = now, 0
        if run.step >= stop:
            break
    return sums, n_steps


def _end_of_epoch(run: Run, cfg: TrainConfig, device: str, epoch: int, record: dict[str, Any]) -> None:
    """Validate when due (``record["val"]``), keep ``best/`` when the selected metric improved, save ``last/``."""
    if cfg.val_every and run.val_rows and (epoch + 1) % cfg.val_every == 0:
        record["val"] = _validate(run, cfg, device)
        if record["val"][cfg.select_on] > run.best:
            run.best = record["val"][cfg.select_on]
            best = {"step": run.step, "epoch": epoch, "val": record["val"]}
            save_run(run, cfg, Path(cfg.out_dir) / "best", best, with_state=False)
    save_run(run, cfg, Path(cfg.out_dir) / "last", {"step": run.step, "epoch": epoch})


def _validate(run: Run, cfg: TrainConfig, device: str) -> dict[str, Any]:
    """Validation Recall@K (and with ``val_rerank_top`` the fusion re-ranked figures and ``rerank_mean``)."""
    set_train_mode(run, cfg, False)
    with torch.no_grad():
        if run.val_cache is not None:
            from mbm.train.cached_training import validate_cached

            metrics = validate_cached(run, device)
        else:
            metrics = _validate_pictures(run, cfg, device)
    set_train_mode(run, cfg, True)
    return metrics


def _validate_pictures(run: Run, cfg: TrainConfig, device: str) -> dict[str, Any]:
    fusion = run.fusion if cfg.val_rerank_top > 0 else None
    data = embed_rows(
        run.model, run.preprocess_val, run.tokenizer, run.val_rows, device=device, with_tokens=fusion is not None
    )
    metrics: dict[str, Any] = recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"])
    if fusion is not None:
        from mbm.train.recall import candidate_logits, top_candidates
        from mbm.train.rerank_metrics import rerank_recall

        cands = top_candidates(data["image_emb"], data["text_emb"], cfg.val_rerank_top)
        dual = candidate_logits(data["image_emb"], data["text_emb"], cands, run.model)
        metrics.update(
            rerank_recall(
                fusion,
                data["text_tokens"],
                data["text_mask"],
                data["image_tokens"],
                cands,
                data["text_to_image"],
                dual_logits=dual,
            )
        )
        metrics["rerank_mean"] = sum(metrics[f"rerank_t2i_R@{k}"] for k in (1, 5, 10)) / 3
    return metrics
