"""The evaluation suite of a model on an mbm data manifest: in-distribution and generalization.

    from mbm.train.suite import evaluate_suite
    report = evaluate_suite("runs/small/best", "cache/mbm-data/manifest.jsonl")

One call embeds each split once and reports

- ``test``: Recall@1/5/10 both directions on the retrieval test split (every source but
  Fashion-MNIST, whose ten captions make it a classification test), with and without
  fusion re-ranking of the top N, and ``test:<source>`` for each source alone. Where
  several test pictures share a ``group`` (one concept drawn in several styles, so their
  captions are alike), ``group_t2i_R@K`` / ``group_i2t_R@K`` also count another drawing
  of the same concept as a hit (``groups_shared``: how many pictures share a group);
- ``heldout``: the same on the held-out source (Tux Paint: never trained on, natural
  captions such as "A red umbrella.") — leave-one-source-out generalization;
- ``cross_style``: image->image retrieval between two drawings of one concept (Noto
  colour emoji <-> Symbola line art, paired by ``group``): the query is a picture in one
  style, the gallery every test picture in the other style;
- ``zero_shot_fashion_mnist``: accuracy of classifying Fashion-MNIST test pictures by
  the nearest prompted class name, and the classifier head's accuracy on them;
- ``test:style=<style>``: the test split per drawing style, when its rows carry a
  ``style`` field (twemoji, noto, symbola, game-icons, ...);
- ``photos``: the real-photo set of ``mbm.train.evalsets`` (54 photos that ship inside
  packages, two hand-written captions each): Recall@1/5/10 text->image and @1/5
  image->text with 95 % Wilson score intervals over the queries (captions for
  text->image, photos for image->text). Two captions of one photo are not independent
  queries, so the text->image interval is if anything too narrow;
- ``style_shift``: icon-theme drawings (Papirus, Breeze, Oxygen, ... GPL/LGPL/CC-BY-SA,
  never trained on) of ~100 freedesktop concepts: Recall@K within each style's gallery,
  with chance, and the mean over styles.

Sections whose rows are missing are left out, not faked; ``notes`` says which extra sets
were not found and how to build them (``python -m mbm.train.evalsets``). The weights
precision used (fp32 unless named: the same for a model name and a folder) is reported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbm.models.specs import spec_folder
from mbm.retrieval import hubness
from mbm.train.data import load_rows
from mbm.train.evaluate import classifier_accuracy, embed_rows, unpack_model
from mbm.train.recall import KS, recall_at_k, wilson_interval
from mbm.train.rerank_metrics import rerank_sweep
from mbm.train.suite_table import STYLE_PAIR, summary_table

__all__ = ["cross_style", "evaluate_suite", "photo_section", "style_shift_section", "summary_table", "zero_shot"]

RETRIEVAL_EXCLUDE = ("-fashion-mnist",)
DEFAULT_RERANK_TOP = 50  # what `mbm search --rerank` re-ranks by default
RERANK_SWEEP = (10, 50, 200)  # test, held-out and photos are also re-ranked over each of these
ZERO_SHOT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")


def _subset(data: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The embeddings (and tokens) of image rows ``rows`` and of their captions only."""
    picked = np.asarray(rows, np.int64)
    new_index = np.full(len(data["image_emb"]), -1, np.int64)
    new_index[picked] = np.arange(len(picked))
    keep = np.nonzero(new_index[data["text_to_image"]] >= 0)[0]
    out = {
        "image_emb": data["image_emb"][picked],
        "text_emb": data["text_emb"][keep],
        "text_to_image": new_index[data["text_to_image"][keep]],
    }
    if "image_tokens" in data:
        out.update(
            image_tokens=data["image_tokens"][picked],
            text_tokens=data["text_tokens"][keep],
            text_mask=data["text_mask"][keep],
        )
    if "groups" in data:
        out["groups"] = [data["groups"][i] for i in picked]
    return out


def _embed(
    model: Any, preprocess: Any, tokenizer: Any, rows: Sequence[dict], device: str, with_tokens: bool = False
) -> dict[str, Any]:
    """``embed_rows`` plus each image's ``group`` (its own row id when it has none)."""
    data = embed_rows(model, preprocess, tokenizer, rows, device=device, with_tokens=with_tokens)
    data["groups"] = [r.get("group") or f"row:{i}" for i, r in enumerate(rows)]
    return data


def _retrieval(
    data: dict[str, Any],
    model: Any,
    fusion: Any,
    rerank_top: int,
    device: str,
    sweep: Sequence[int] = (),
    calibration: Any = None,
) -> dict[str, Any]:
    """Dual-encoder recall; with a fusion head also both directions re-ranked over the top ``rerank_top``
    (top-level ``rerank_*`` keys) and, for each N in ``sweep``, under ``"rerank"``."""
    out: dict[str, Any] = dict(recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"]))
    groups = data.get("groups")
    if groups is not None and len(set(groups)) < len(groups):
        # a concept drawn in several styles: another drawing of it first is no miss
        grouped = recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"], image_groups=groups)
        out.update({f"group_{k}": v for k, v in grouped.items() if "_R@" in k})
        out["groups_shared"] = len(groups) - len(set(groups))
    if fusion is not None and rerank_top > 0 and "image_tokens" in data:
        tops = sorted({rerank_top, *sweep})
        result = rerank_sweep(fusion.to(device), model, data, tops, calibration=calibration)
        out.update(
            {k: v for k, v in result[str(rerank_top)].items() if k != "top"},
            rerank_top=rerank_top,
            dual_weight=result["dual_weight"],
        )
        if "calibration" in result:
            out["rerank_calibration"] = result["calibration"]
        if len(tops) > 1:
            out["rerank"] = {k: v for k, v in result.items() if k not in ("dual_weight", "calibration")}
    return out


def cross_style(rows: Sequence[dict], image_emb: np.ndarray, styles: tuple[str, str] = STYLE_PAIR) -> dict[str, Any]:
    """Image->image Recall@K between two sources that draw the same concepts (paired by ``group``).

    ``a->b``: each picture of source a that has a twin in b queries all pictures of b;
    ``b->a`` the reverse. Returns {} when no group has both.
    """
    a, b = styles
    by_group: dict[str, dict[str, int]] = {}
    for i, r in enumerate(rows):
        if r.get("source") in styles:
            by_group.setdefault(r.get("group") or f"row:{i}", {})[r["source"]] = i
    pairs = [(g[a], g[b]) for g in by_group.values() if a in g and b in g]
    if not pairs:
        return {}
    out: dict[str, Any] = {"pairs": len(pairs)}
    for query, gallery in ((a, b), (b, a)):
        gallery_rows = [i for i, r in enumerate(rows) if r.get("source") == gallery]
        position = {row: j for j, row in enumerate(gallery_rows)}
        q_rows = [p[0] if query == a else p[1] for p in pairs]
        target = np.array([position[p[1] if query == a else p[0]] for p in pairs], np.int64)
        # queries play the "texts" of recall_at_k: t2i is query -> gallery
        r = recall_at_k(image_emb[gallery_rows], image_emb[q_rows], target)
        out.update({f"{query}->{gallery}_R@{k}": r[f"t2i_R@{k}"] for k in (1, 5, 10)})
        out[f"{query}->{gallery}_gallery"] = len(gallery_rows)
    return out


@torch.no_grad()
def zero_shot(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    image_emb: np.ndarray,
    device: str,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy of the nearest prompted class name (class = the row's ``label``)."""
    classes = sorted({r["label"] for r in rows if r.get("label")})
    keep = [i for i, r in enumerate(rows) if r.get("label")]
    if len(classes) < 2:
        return {}
    prompts = [t.format(c.lower()) for c in classes for t in templates]
    text = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1).cpu().numpy()
    text = text.reshape(len(classes), len(templates), -1).mean(1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    labels = np.array([classes.index(rows[i]["label"]) for i in keep])
    order = np.argsort(-(image_emb[keep] @ text.T), axis=1, kind="stable")
    out: dict[str, Any] = {
        "top1": float((order[:, 0] == labels).mean()),
        "n": len(keep),
        "classes": len(classes),
        "chance": 1.0 / len(classes),
    }
    if len(classes) >= 5:
        out["top5"] = float((order[:, :5] == labels[:, None]).any(1).mean())
    return out


def _extra_rows(path: Path, split: str) -> list[dict]:
    """The rows of an extra evaluation manifest (photos.jsonl, icon-themes.jsonl) in ``split``."""
    return [r for r in load_rows(path) if r.get("split") == split]


def _with_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus ``ci95``: the Wilson 95 % interval of each Recall@K over its queries."""
    ci = {}
    for key, value in metrics.items():
        if key.startswith(("t2i_R@", "i2t_R@")) and isinstance(value, float):
            n = metrics["n_texts" if key.startswith("t2i") else "n_images"]
            ci[key] = [round(x, 4) for x in wilson_interval(round(value * n), n)]
    return {**metrics, "ci95": ci, "ci_method": "Wilson score interval, 95 %, over queries"}


def photo_section(
    rows: Sequence[dict],
    data: dict[str, Any],
    model: Any,
    fusion: Any,
    rerank_top: int,
    device: str,
    manifest: Path,
    sweep: Sequence[int] = (),
    calibration: Any = None,
) -> dict[str, Any]:
    """Retrieval on the photo set with Wilson intervals (see the module docstring)."""
    out = _with_intervals(_retrieval(data, model, fusion, rerank_top, device, sweep, calibration))
    return {"manifest": str(manifest), "photos": len(rows), **out}


def _style(row: dict) -> str:
    return row.get("style") or row["source"]  # load_rows gives every row a source


def style_shift_section(rows: Sequence[dict], data: dict[str, Any], manifest: Path) -> dict[str, Any]:
    """Recall@K of each style's icons among that style's icons only, with chance, and the mean over styles."""
    styles: dict[str, Any] = {}
    for style in sorted({_style(r) for r in rows}):
        idx = [i for i, r in enumerate(rows) if _style(r) == style]
        sub = _subset(data, idx)
        metrics: dict[str, Any] = recall_at_k(sub["image_emb"], sub["text_emb"], sub["text_to_image"])
        metrics["chance"] = {f"t2i_R@{k}": min(1.0, k / len(idx)) for k in KS}
        styles[style] = metrics
    mean = {f"t2i_R@{k}": float(np.mean([m[f"t2i_R@{k}"] for m in styles.values()])) for k in KS}
    return {
        "manifest": str(manifest),
        "icons": len(rows),
        "concepts": len({r.get("group") for r in rows}),
        "styles": styles,
        "mean_over_styles": mean,
    }


def _resolve_extra(
    given: str | Path | bool | None, filename: str, manifest: str | Path | None, notes: list[str], what: str
) -> Path | None:
    """An extra manifest named by the caller (must exist), looked up next to ``manifest`` (None), or off (False/"")."""
    from mbm.train.evalsets import DEFAULT_DIR, find_eval_manifest

    if given is False or given == "" or (isinstance(given, str) and given.lower() == "none"):
        return None
    if given is not None and given is not True:
        path = Path(given).expanduser()
        if not path.is_file():
            from mbm.errors import UsageError

            raise UsageError(
                f"{what} manifest {path} does not exist — build it with "
                f"`python -m mbm.train.evalsets --out {path.parent}`"
            )
        return path
    found = find_eval_manifest(filename, manifest)
    if found is None:
        notes.append(
            f"{what}: no {filename} next to the manifest or in {DEFAULT_DIR}/ — skipped; build it with "
            f"`python -m mbm.train.evalsets --out {DEFAULT_DIR}` or pass its path"
        )
    return found


def evaluate_suite(
    checkpoint_or_encoder: Any,
    manifest: str | Path | None,
    *,
    rerank_top: int = DEFAULT_RERANK_TOP,
    rerank_sweep_tops: Sequence[int] = RERANK_SWEEP,
    device: str = "cpu",
    heldout_source: str = "tuxpaint",
    zero_shot_source: str = "fashion-mnist",
    precision: str | None = None,
    photos: str | Path | bool | None = None,
    style_shift: str | Path | bool | None = None,
) -> dict[str, Any]:
    """Every section listed in the module docstring, as one JSON-able dict.

    ``photos`` / ``style_shift``: a photos.jsonl / icon-themes.jsonl path; None looks for
    them next to ``manifest``, in ``mbm-eval/`` beside its folder and in ./cache/mbm-eval
    (skipped with a note when absent); False leaves them out. ``manifest`` may be None to
    run only those two. ``precision``: see ``mbm.train.evaluate.unpack_model`` (fp32 unless named).
    """
    model, preprocess, tokenizer, heads, name, used = unpack_model(checkpoint_or_encoder, device, precision)
    model.eval()
    fusion = heads.get("fusion") if rerank_top > 0 else None
    tokens = fusion is not None
    # the model's re-ranking calibration (hubness bank, expert weights): evaluated as search uses it
    calibration = hubness.load(spec_folder(name)) if tokens and isinstance(name, str) else None
    retrieval = functools.partial(_retrieval, calibration=calibration)
    notes: list[str] = []
    report: dict[str, Any] = {
        "model": name,
        "precision": used,
        "device": device,
        "manifest": str(manifest) if manifest is not None else None,
        "rerank_top": rerank_top if tokens else 0,
    }

    if manifest is not None:
        test_rows = load_rows(manifest, "test", RETRIEVAL_EXCLUDE)
        if test_rows:
            data = _embed(model, preprocess, tokenizer, test_rows, device, with_tokens=tokens)
            report["test"] = retrieval(data, model, fusion, rerank_top, device, rerank_sweep_tops)
            for source in sorted({r["source"] for r in test_rows}):
                idx = [i for i, r in enumerate(test_rows) if r["source"] == source]
                report[f"test:{source}"] = retrieval(_subset(data, idx), model, fusion, rerank_top, device)
            for style in sorted({r["style"] for r in test_rows if r.get("style")}):
                idx = [i for i, r in enumerate(test_rows) if r.get("style") == style]
                report[f"test:style={style}"] = retrieval(_subset(data, idx), model, fusion, rerank_top, device)
            styles = cross_style(test_rows, data["image_emb"])
            if styles:
                report["cross_style"] = styles

        held_rows = load_rows(manifest, "heldout", [heldout_source])
        if held_rows:
            data = _embed(model, preprocess, tokenizer, held_rows, device, with_tokens=tokens)
            report["heldout"] = {
                "source": heldout_source,
                **retrieval(data, model, fusion, rerank_top, device, rerank_sweep_tops),
            }

        zs_rows = load_rows(manifest, "test", [zero_shot_source])
        if zs_rows:
            data = embed_rows(model, preprocess, tokenizer, zs_rows, device=device)
            section = zero_shot(model, tokenizer, zs_rows, data["image_emb"], device)
            if heads.get("classifier") is not None:
                section.update(classifier_accuracy(heads["classifier"], data["image_emb"], zs_rows))
            if section:
                report[f"zero_shot_{zero_shot_source.replace('-', '_')}"] = section

    from mbm.train.evalsets import ICONS_FILE, PHOTOS_FILE

    path = _resolve_extra(photos, PHOTOS_FILE, manifest, notes, "photos")
    rows = _extra_rows(path, "photos") if path is not None else []
    if path is not None and rows:
        data = embed_rows(model, preprocess, tokenizer, rows, device=device, with_tokens=tokens)
        report["photos"] = photo_section(
            rows, data, model, fusion, rerank_top, device, path, rerank_sweep_tops, calibration
        )
    elif path is not None:
        notes.append(f"photos: {path} has no rows of split 'photos'")
    path = _resolve_extra(style_shift, ICONS_FILE, manifest, notes, "style-shift")
    rows = _extra_rows(path, "style-shift") if path is not None else []
    if path is not None and rows:
        data = embed_rows(model, preprocess, tokenizer, rows, device=device)
        report["style_shift"] = style_shift_section(rows, data, path)
    elif path is not None:
        notes.append(f"style-shift: {path} has no rows of split 'style-shift'")
    if notes:
        report["notes"] = notes
    return report
