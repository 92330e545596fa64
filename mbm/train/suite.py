"""The evaluation suite of a model on an mbm data manifest: in-distribution and generalization.

    from mbm.train.suite import evaluate_suite
    report = evaluate_suite("runs/small/best", "cache/mbm-data/manifest.jsonl")

One call embeds each split once and reports

- ``test``: Recall@1/5/10 both directions on the retrieval test split (every source but
  Fashion-MNIST, whose ten captions make it a classification test), with and without
  fusion re-ranking of the top N, and ``test:<source>`` for each source alone;
- ``heldout``: the same on the held-out source (Tux Paint: never trained on, natural
  captions such as "A red umbrella.") — leave-one-source-out generalization;
- ``cross_style``: image->image retrieval between two drawings of one concept (Noto
  colour emoji <-> Symbola line art, paired by ``group``): the query is a picture in one
  style, the gallery every test picture in the other style;
- ``zero_shot_fashion_mnist``: accuracy of classifying Fashion-MNIST test pictures by
  the nearest prompted class name, and the classifier head's accuracy on them.

Sections whose rows are missing from the manifest are left out, not faked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mbm.train.data import load_rows
from mbm.train.evaluate import (_classifier_accuracy, _unpack, candidate_logits, embed_rows, recall_at_k, rerank_recall,
                                top_candidates)

RETRIEVAL_EXCLUDE = ("-fashion-mnist",)
STYLE_PAIR = ("emoji", "symbola")
ZERO_SHOT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")


def _subset(data: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The embeddings (and tokens) of image rows ``rows`` and of their captions only."""
    rows = np.asarray(rows, np.int64)
    new_index = np.full(len(data["image_emb"]), -1, np.int64)
    new_index[rows] = np.arange(len(rows))
    keep = np.nonzero(new_index[data["text_to_image"]] >= 0)[0]
    out = {"image_emb": data["image_emb"][rows], "text_emb": data["text_emb"][keep], "text_to_image": new_index[data["text_to_image"][keep]]}
    if "image_tokens" in data:
        out.update(image_tokens=data["image_tokens"][rows], text_tokens=data["text_tokens"][keep], text_mask=data["text_mask"][keep])
    return out


def _retrieval(data: dict[str, Any], model: Any, fusion: Any, rerank_top: int, device: str) -> dict[str, Any]:
    out: dict[str, Any] = dict(recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"]))
    if fusion is not None and rerank_top > 0 and "image_tokens" in data:
        candidates = top_candidates(data["image_emb"], data["text_emb"], rerank_top)
        dual = candidate_logits(data["image_emb"], data["text_emb"], candidates, model)
        out.update(rerank_recall(fusion.to(device), data["text_tokens"], data["text_mask"], data["image_tokens"], candidates,
                                 data["text_to_image"], dual_logits=dual))
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
def zero_shot(model: Any, tokenizer: Any, rows: Sequence[dict], image_emb: np.ndarray, device: str,
              templates: Sequence[str] = ZERO_SHOT_TEMPLATES) -> dict[str, Any]:
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
    out: dict[str, Any] = {"top1": float((order[:, 0] == labels).mean()), "n": len(keep), "classes": len(classes),
                           "chance": 1.0 / len(classes)}
    if len(classes) >= 5:
        out["top5"] = float((order[:, :5] == labels[:, None]).any(1).mean())
    return out


def evaluate_suite(checkpoint_or_encoder: Any, manifest: str | Path, *, rerank_top: int = 10, device: str = "cpu",
                   heldout_source: str = "tuxpaint", zero_shot_source: str = "fashion-mnist") -> dict[str, Any]:
    """Every section listed in the module docstring, as one JSON-able dict."""
    model, preprocess, tokenizer, heads, name = _unpack(checkpoint_or_encoder, device)
    model.eval()
    fusion = heads.get("fusion") if rerank_top > 0 else None
    tokens = fusion is not None
    report: dict[str, Any] = {"model": name, "manifest": str(manifest), "rerank_top": rerank_top if tokens else 0}

    test_rows = load_rows(manifest, "test", RETRIEVAL_EXCLUDE)
    if test_rows:
        data = embed_rows(model, preprocess, tokenizer, test_rows, device=device, with_tokens=tokens)
        report["test"] = _retrieval(data, model, fusion, rerank_top, device)
        for source in sorted({r["source"] for r in test_rows}):
            idx = [i for i, r in enumerate(test_rows) if r["source"] == source]
            report[f"test:{source}"] = _retrieval(_subset(data, idx), model, fusion, rerank_top, device)
        styles = cross_style(test_rows, data["image_emb"])
        if styles:
            report["cross_style"] = styles

    held_rows = load_rows(manifest, "heldout", [heldout_source])
    if held_rows:
        data = embed_rows(model, preprocess, tokenizer, held_rows, device=device, with_tokens=tokens)
        report["heldout"] = {"source": heldout_source, **_retrieval(data, model, fusion, rerank_top, device)}

    zs_rows = load_rows(manifest, "test", [zero_shot_source])
    if zs_rows:
        data = embed_rows(model, preprocess, tokenizer, zs_rows, device=device)
        section = zero_shot(model, tokenizer, zs_rows, data["image_emb"], device)
        if heads.get("classifier") is not None:
            section.update(_classifier_accuracy(heads["classifier"], data["image_emb"], zs_rows))
        if section:
            report[f"zero_shot_{zero_shot_source.replace('-', '_')}"] = section
    return report


def summary_table(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(section, figures) rows for a readable table: R@1/5/10 in percent."""
    def pct(v: Any) -> str:
        return f"{100 * v:.1f}" if isinstance(v, float) else "-"

    lines = []
    for key, sec in report.items():
        if not isinstance(sec, dict):
            continue
        if "t2i_R@1" in sec:
            text = (f"t2i {pct(sec['t2i_R@1'])}/{pct(sec['t2i_R@5'])}/{pct(sec['t2i_R@10'])}  "
                    f"i2t {pct(sec['i2t_R@1'])}/{pct(sec['i2t_R@5'])}/{pct(sec['i2t_R@10'])}")
            if "rerank_t2i_R@1" in sec:
                text += f"  t2i re-ranked top {sec['rerank_top']}: {pct(sec['rerank_t2i_R@1'])}/{pct(sec['rerank_t2i_R@5'])}/{pct(sec['rerank_t2i_R@10'])}"
            if "rerank_combined_t2i_R@1" in sec:
                text += f" (fusion+dual {pct(sec['rerank_combined_t2i_R@1'])}/{pct(sec['rerank_combined_t2i_R@5'])}/{pct(sec['rerank_combined_t2i_R@10'])})"
            lines.append((f"{key} ({sec['n_texts']} captions, {sec['n_images']} images)", text))
        elif "pairs" in sec:
            a, b = STYLE_PAIR
            lines.append((f"{key} ({sec['pairs']} pairs)", f"{a}->{b} {pct(sec[f'{a}->{b}_R@1'])}/{pct(sec[f'{a}->{b}_R@5'])}/"
                          f"{pct(sec[f'{a}->{b}_R@10'])}  {b}->{a} {pct(sec[f'{b}->{a}_R@1'])}/{pct(sec[f'{b}->{a}_R@5'])}/{pct(sec[f'{b}->{a}_R@10'])}"))
        elif "top1" in sec:
            text = f"top-1 {pct(sec['top1'])} top-5 {pct(sec.get('top5'))} (chance {pct(sec['chance'])})"
            if "classifier_top1" in sec:
                text += f"; classifier head top-1 {pct(sec['classifier_top1'])}"
            lines.append((f"{key} ({sec['n']} pictures)", text))
    return lines
