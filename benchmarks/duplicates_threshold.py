"""Where `mbm duplicates` should draw the line: pair precision/recall of near-duplicate detection.

    apt-get install -y --no-install-recommends mate-backgrounds plasma-workspace-wallpapers \
        lomiri-wallpapers-16.04 lomiri-wallpapers-20.04        # optional: 54 photos instead of 17
    python benchmarks/duplicates_threshold.py [--model mbm-offline] [--originals 54]

Originals: the real photos of mbm's evaluation set (``mbm.train.evalsets.photos``: scikit-image and
scikit-learn sample photos inside their wheels, Debian wallpapers where installed). Each original
gets constructed duplicates, which a user would call "the same photo":
JPEG re-encodes at quality 75/50/30, PNG, resized to 50 % and 25 %, cropped 3 % and 8 % a side,
and a copy stored rotated with an EXIF orientation tag (decoded upright again).
Negatives are every pair of different photos, which include natural look-alikes (several lakes at
dusk, flowers close up, grass, dandelion seeds, mountains, the two views of scikit-image's stereo
motorcycle pair) and constructed ones: for every original two other framings of the same scene
(its left and right 60 %, 20 % overlap between them and with neither a "slight crop").
The folder is indexed with ``Engine.index`` (mbm's own decoding: EXIF, draft mode), the stored
embeddings are compared, and precision/recall over pairs is reported per threshold, along with the
highest look-alike cosine and how many true groups ``find_duplicates`` recovers exactly.
The default threshold: among those with pair precision >= 0.99, the one whose groups (connected
components, as `mbm duplicates` makes them) match the true groups exactly most often. Results: benchmarks/results/duplicates_threshold.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MBM_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import report  # noqa: E402

THRESHOLDS = [round(t, 3) for t in np.arange(0.80, 0.996, 0.005)]
MAX_SIDE = 1600
DUPLICATE_KINDS = ("q75", "q50", "q30", "png", "half", "quarter", "crop3", "crop8", "exif_rotated")


def _crop(img: Image.Image, frac: float) -> Image.Image:
    dx, dy = round(img.width * frac), round(img.height * frac)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _resize(img: Image.Image, scale: float) -> Image.Image:
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def write_variants(img: Image.Image, folder: Path, name: str) -> dict[str, Path]:
    """The original (JPEG q92) and its constructed duplicates, each a file under ``folder``."""
    out = {"original": folder / f"{name}.jpg"}
    img.save(out["original"], quality=92)
    for q in (75, 50, 30):
        out[f"q{q}"] = folder / f"{name}_q{q}.jpg"
        img.save(out[f"q{q}"], quality=q)
    out["png"] = folder / f"{name}_copy.png"
    img.save(out["png"])
    for kind, scale in (("half", 0.5), ("quarter", 0.25)):
        out[kind] = folder / f"{name}_{kind}.jpg"
        _resize(img, scale).save(out[kind], quality=85)
    for kind, frac in (("crop3", 0.03), ("crop8", 0.08)):
        out[kind] = folder / f"{name}_{kind}.jpg"
        _crop(img, frac).save(out[kind], quality=90)
    # pixels stored turned a quarter left, EXIF orientation 6 ("rotate 90 CW to show"): upright when decoded
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif_rotated"] = folder / f"{name}_exif6.jpg"
    img.transpose(Image.Transpose.ROTATE_90).save(out["exif_rotated"], quality=90, exif=exif.tobytes())
    return out


def write_framings(img: Image.Image, folder: Path, name: str) -> dict[str, Path]:
    """Two other shots of the same scene: the left and the right 60 % (look-alikes, not duplicates)."""
    w = img.width
    out = {"left60": folder / f"{name}_left60.jpg", "right60": folder / f"{name}_right60.jpg"}
    img.crop((0, 0, round(w * 0.6), img.height)).save(out["left60"], quality=92)
    img.crop((round(w * 0.4), 0, w, img.height)).save(out["right60"], quality=92)
    return out


def build_corpus(folder: Path, limit: int) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Files -> (group, kind): a group is an original with its duplicates; every framing is its own group."""
    from mbm.train.evalsets import load_photo
    from mbm.train.evalsets.photos import PHOTOS, source_path

    labels: dict[str, tuple[str, str]] = {}
    used = []
    for photo in PHOTOS:
        src = source_path(photo)
        if src is None or len(used) >= limit:
            continue
        img = load_photo(src, MAX_SIDE)
        used.append(photo.id)
        for kind, path in write_variants(img, folder, photo.id).items():
            labels[str(path)] = (photo.id, kind)
        for kind, path in write_framings(img, folder, photo.id).items():
            labels[str(path)] = (f"{photo.id}:{kind}", kind)
    # scikit-image's stereo pair: two photos of one motorcycle from viewpoints a few cm apart
    from mbm.train.evalsets.photos import package_dir

    skimage = package_dir("skimage")
    if skimage is not None and (skimage / "data/motorcycle_right.png").is_file():
        right = load_photo(skimage / "data/motorcycle_right.png", MAX_SIDE)
        path = folder / "motorcycle_stereo_right.jpg"
        right.save(path, quality=92)
        labels[str(path)] = ("motorcycle:stereo_right", "stereo_right")
    return labels, used


FRAMINGS = ("left60", "right60")


def pair_table(vecs: np.ndarray, groups: list[str], kinds: list[str]) -> dict:
    """Pair precision/recall per threshold, how close each kind of duplicate stays, the hardest negatives."""
    sims = vecs @ vecs.T
    iu = np.triu_indices(len(vecs), 1)
    s = sims[iu]
    g = np.array(groups)
    same = g[iu[0]] == g[iu[1]]
    rows = []
    for t in THRESHOLDS:
        pred = s >= t - 1e-5
        tp, fp, fn = int((pred & same).sum()), int((pred & ~same).sum()), int((~pred & same).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "threshold": t,
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(f1, 4),
                "fp": fp,
                "fn": fn,
            }
        )
    per_kind = {}
    originals = {gr: i for i, (gr, kd) in enumerate(zip(groups, kinds)) if kd == "original"}
    for kind in DUPLICATE_KINDS:
        vals = [float(sims[i, originals[gr]]) for i, (gr, kd) in enumerate(zip(groups, kinds)) if kd == kind]
        if vals:
            per_kind[kind] = {"min": round(min(vals), 4), "median": round(float(np.median(vals)), 4)}
    hardest = np.argsort(-np.where(~same, s, -2))[:6]
    return {
        "images": len(vecs),
        "rows": rows,
        "duplicate_cosine_to_original": per_kind,
        "negatives": {
            "pairs": int((~same).sum()),
            "max": round(float(s[~same].max()), 4),
            "p99": round(float(np.quantile(s[~same], 0.99)), 4),
        },
        "positives": {"pairs": int(same.sum()), "min": round(float(s[same].min()), 4)},
        "hardest_negatives": [
            {
                "a": f"{groups[iu[0][j]]}/{kinds[iu[0][j]]}",
                "b": f"{groups[iu[1][j]]}/{kinds[iu[1][j]]}",
                "cosine": round(float(s[j]), 4),
            }
            for j in hardest
        ],
    }


def group_recovery(vecs: np.ndarray, groups: list[str], threshold: float) -> dict:
    """How many true groups the library's pair search + connected components recover exactly."""
    from mbm.retrieval.duplicates import components, similar_pairs

    first, second, _ = similar_pairs(vecs, threshold)
    labels = components(len(vecs), first, second)
    found: dict[int, set[int]] = {}
    for node in set(first.tolist()) | set(second.tolist()):
        found.setdefault(int(labels[node]), set()).add(node)
    truth: dict[str, set[int]] = {}
    for i, gr in enumerate(groups):
        truth.setdefault(gr, set()).add(i)
    true_groups = {frozenset(v) for v in truth.values() if len(v) > 1}
    got = {frozenset(v) for v in found.values()}
    return {
        "threshold": threshold,
        "true_groups": len(true_groups),
        "found_groups": len(got),
        "exactly_recovered": len(true_groups & got),
    }


def choose(rows: list[dict], recovered: dict[float, int], min_precision: float = 0.99) -> dict:
    """Among thresholds with pair precision >= ``min_precision``: the one recovering the most groups exactly
    (ties: the higher threshold, the safer one)."""
    ok = [r for r in rows if r["precision"] >= min_precision] or rows
    return max(ok, key=lambda r: (recovered[r["threshold"]], r["threshold"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mbm-offline")
    parser.add_argument("--originals", type=int, default=54)
    args = parser.parse_args()

    from mbm import Engine
    from mbm.retrieval.duplicates import find_duplicates
    from mbm.store.catalog import read_snapshot

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        labels, used = build_corpus(folder, args.originals)
        started = time.perf_counter()
        with Engine.open(Path(tmp) / "store", "dups", model=args.model) as eng:
            rep = eng.index([folder], workers=2)
            seconds = time.perf_counter() - started
            catalog = eng.catalog()
            with read_snapshot(catalog):
                parts = list(catalog.read_embeddings())
            ids = np.concatenate([p[0] for p in parts])
            vecs = np.concatenate([p[1] for p in parts])
            rows = catalog.rows(ids.tolist())
            paths = [rows[int(i)]["path"] for i in ids]
            groups = [labels[p][0] for p in paths]
            kinds = [labels[p][1] for p in paths]
            found = find_duplicates(catalog, 0.9)
            keepers = sum(labels[g.keeper.path][1] in ("original", "png", "exif_rotated") for g in found)
    photos = np.array([k not in FRAMINGS for k in kinds])
    sub = (vecs[photos], [g for g, m in zip(groups, photos) if m], [k for k, m in zip(kinds, photos) if m])
    table = pair_table(*sub)  # negatives: different photos (natural look-alikes included)
    framed = pair_table(vecs, groups, kinds)  # and other framings of the same scene
    exact = {t: group_recovery(sub[0], sub[1], t)["exactly_recovered"] for t in THRESHOLDS}
    chosen = {**choose(table["rows"], exact), "groups_recovered_exactly": None}
    chosen["groups_recovered_exactly"] = exact[chosen["threshold"]]
    recovery = [group_recovery(sub[0], sub[1], t) for t in sorted({chosen["threshold"], 0.9, 0.95, 0.97})]
    recovery_framed = [group_recovery(vecs, groups, t) for t in sorted({chosen["threshold"], 0.9, 0.95, 0.97})]
    result = {
        "model": args.model,
        "originals": len(used),
        "images": len(labels),
        "index_seconds": round(seconds, 1),
        "skipped": len(rep.skipped),
        "duplicate_kinds": list(DUPLICATE_KINDS),
        "rule": "default = among thresholds with pair precision >= 0.99 against different photos, the one "
        "whose connected components recover the most true groups exactly (ties: the higher)",
        "groups_recovered_exactly_by_threshold": exact,
        "chosen": chosen,
        "different_photos": table,
        "with_other_framings": framed,
        "group_recovery": recovery,
        "group_recovery_with_framings": recovery_framed,
        "keeper_is_full_size_at_0.9": f"{keepers}/{len(found)}",
    }
    shown = [
        r
        for r in table["rows"]
        if r["threshold"] in (0.85, 0.88, 0.9, 0.92, 0.93, 0.95, 0.97, 0.99) or r["threshold"] == chosen["threshold"]
    ]
    framed_rows = {r["threshold"]: r for r in framed["rows"]}
    lines = [
        (
            f"threshold {r['threshold']:.3f}",
            f"P {r['precision']:.3f}  R {r['recall']:.3f}  F1 {r['f1']:.3f}   with framings: P {framed_rows[r['threshold']]['precision']:.3f}",
        )
        for r in shown
    ]
    lines += [
        (f"cos to original: {k}", f"min {v['min']:.3f} median {v['median']:.3f}")
        for k, v in table["duplicate_cosine_to_original"].items()
    ]
    lines += [
        ("negatives max / p99", f"{table['negatives']['max']:.3f} / {table['negatives']['p99']:.3f}"),
        ("with framings max", f"{framed['negatives']['max']:.3f}"),
        ("chosen", f"{chosen['threshold']} (P {chosen['precision']}, R {chosen['recall']})"),
    ]
    lines += [
        (f"groups at {r['threshold']}", f"{r['exactly_recovered']}/{r['true_groups']} exact, {r['found_groups']} found")
        for r in recovery
    ]
    lines += [
        (f"with framings at {r['threshold']}", f"{r['exactly_recovered']}/{r['true_groups']} exact")
        for r in recovery_framed
    ]
    report("duplicates_threshold", result, lines)


if __name__ == "__main__":
    main()
