"""What the text half of the concat-fusion classifier adds over the image alone.

    apt-get install -y --no-install-recommends tuxpaint-stamps-default
    python benchmarks/concat_classifier.py [--model mbm-offline] [--folds 5]

Labelled data: Tux Paint's stamps (GPL-2: evaluation only, never shipped), laid out folder-per-class by
their top category (animals, food, household, plants, seasonal, symbols, town, vehicles: the categories
with at least 20 PNG stamps), each picture on white with its English caption as a sidecar
(``kangaroo.png`` + ``kangaroo.txt``: "A red kangaroo."). Features come from the collection model
(``mbm.train.concat_classifier.embed``: stored-style image embeddings, and the embedding of each item's
own text: file name words + caption). The same recipe (``fit``: full-batch AdamW, 300 epochs) trains

- image only:            softmax(W f_image + b)
- concat, names only:    softmax(W [f_image; f_text(file name)] + b)
- concat, name + caption: softmax(W [f_image; f_text(file name + caption)] + b)
- text only (reference): softmax(W f_text(file name + caption) + b)

scored by stratified k-fold cross-validation (accuracy and balanced accuracy, mean and spread over folds).
Results: benchmarks/results/concat_classifier.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MBM_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import report  # noqa: E402

ROOT = Path("/usr/share/tuxpaint/stamps")
MIN_PER_CLASS = 20


def build_folder(out: Path) -> int:
    from PIL import Image

    n = 0
    for category in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        pngs = [p for p in sorted(category.rglob("*.png")) if not p.stem.endswith(("_mirror", "_flip"))]
        pngs = [p for p in pngs if p.with_suffix(".txt").is_file()]
        if len(pngs) < MIN_PER_CLASS:
            continue
        (out / category.name).mkdir(parents=True)
        for p in pngs:
            with Image.open(p) as img:
                rgba = img.convert("RGBA")
            white = Image.new("RGB", rgba.size, "white")
            white.paste(rgba, mask=rgba.getchannel("A"))
            name = p.stem if not (out / category.name / f"{p.stem}.png").exists() else f"{p.stem}_{n}"
            white.save(out / category.name / f"{name}.png")
            caption = p.with_suffix(".txt").read_text(errors="replace").splitlines()[0]
            (out / category.name / f"{name}.txt").write_text(caption + "\n")
            n += 1
    return n


def folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), int)
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        fold[idx] = np.arange(len(idx)) % k
    return [np.nonzero(fold == f)[0] for f in range(k)]


def evaluate(image, text, y, labels, k) -> dict:
    from mbm.train.concat_classifier import fit

    acc, bal = [], []
    for test in folds(y, k):
        train = np.setdiff1d(np.arange(len(y)), test)
        model = fit(
            image[train] if image is not None else text[train],
            text[train] if image is not None and text is not None else None,
            y[train].tolist(),
            labels,
        )
        pred = model.logits(
            image[test] if image is not None else text[test],
            text[test] if image is not None and text is not None else None,
        ).argmax(1)
        acc.append(float((pred == y[test]).mean()))
        bal.append(float(np.mean([(pred[y[test] == c] == c).mean() for c in np.unique(y[test])])))
    return {
        "accuracy": round(100 * float(np.mean(acc)), 1),
        "accuracy_sd": round(100 * float(np.std(acc)), 1),
        "balanced_accuracy": round(100 * float(np.mean(bal)), 1),
        "balanced_accuracy_sd": round(100 * float(np.std(bal)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mbm-offline")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    if not ROOT.is_dir():
        sys.exit(f"no Tux Paint stamps at {ROOT} — apt-get install -y --no-install-recommends tuxpaint-stamps-default")

    from mbm.indexer.sidecar import split_words
    from mbm.models import load_model
    from mbm.train.concat_classifier import embed, labelled_folder

    encoder = load_model(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "labelled"
        build_folder(folder)
        paths, names = labelled_folder(folder)
        labels = sorted(set(names))
        y = np.array([labels.index(n) for n in names])
        image, own, texts = embed(encoder, paths)
        names_only = encoder.encode_texts([split_words(Path(p).stem) for p in paths])
    rows = {
        "image only": evaluate(image, None, y, labels, args.folds),
        "concat, names only": evaluate(image, names_only, y, labels, args.folds),
        "concat, name + caption": evaluate(image, own, y, labels, args.folds),
        "text only (name + caption)": evaluate(None, own, y, labels, args.folds),
    }
    counts = {c: int((y == i).sum()) for i, c in enumerate(labels)}
    result = {"model": args.model, "items": len(y), "classes": counts, "folds": args.folds, "results": rows}
    lines = [
        (
            k,
            f"acc {v['accuracy']:5.1f} ± {v['accuracy_sd']:.1f}   balanced {v['balanced_accuracy']:5.1f} ± {v['balanced_accuracy_sd']:.1f}",
        )
        for k, v in rows.items()
    ]
    report("concat_classifier", result, [("items / classes", f"{len(y)} / {len(labels)}"), *lines])


if __name__ == "__main__":
    main()
