"""The evaluation suite's report (``mbm.train.suite.evaluate_suite``) as a readable table."""

from __future__ import annotations

from typing import Any

from mbm.train.recall import KS

STYLE_PAIR = ("emoji", "symbola")  # the two sources whose drawings of one concept the cross-style section pairs

Row = tuple[str, str]


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) else "-"


def _three(sec: dict[str, Any], d: str) -> str:
    """R@1/5/10 of direction ``d`` ("t2i", "rerank_t2i", ...) in percent."""
    return "/".join(_pct(sec.get(f"{d}_R@{k}")) for k in KS)


def _reranked(sec: dict[str, Any]) -> str:
    """The re-ranked text-to-image figures of a section; "" when it was not re-ranked."""
    if "rerank_t2i_R@1" not in sec:
        return ""
    return f"  t2i re-ranked top {sec['rerank_top']}: {_three(sec, 'rerank_t2i')}"


def _photos(sec: dict[str, Any]) -> list[Row]:
    ci = sec["ci95"]
    text = "  ".join(
        f"{d} R@{k} {_pct(sec[f'{d}_R@{k}'])} ({_pct(ci[f'{d}_R@{k}'][0])}-{_pct(ci[f'{d}_R@{k}'][1])})"
        for d, ks in (("t2i", KS), ("i2t", KS[:2]))
        for k in ks
    )
    return [(f"photos ({sec['n_texts']} captions, {sec['n_images']} photos; 95% Wilson CI)", text + _reranked(sec))]


def _style_shift(sec: dict[str, Any]) -> list[Row]:
    rows = [
        (
            f"style-shift:{style} ({m['n_texts']} captions, {m['n_images']} icons)",
            f"t2i {_three(m, 't2i')}  i2t {_three(m, 'i2t')}  (t2i chance {_three(m['chance'], 't2i')})",
        )
        for style, m in sec["styles"].items()
    ]
    mean = f"style-shift mean over {len(sec['styles'])} styles ({sec['concepts']} concepts)"
    return [*rows, (mean, f"t2i {_three(sec['mean_over_styles'], 't2i')}")]


def _retrieval(key: str, sec: dict[str, Any]) -> list[Row]:
    text = f"t2i {_three(sec, 't2i')}  i2t {_three(sec, 'i2t')}" + _reranked(sec)
    if "rerank_combined_t2i_R@1" in sec:
        text += f" (fusion+dual {_three(sec, 'rerank_combined_t2i')})"
    if "group_t2i_R@1" in sec:
        text += f"  any drawing of the concept: t2i {_three(sec, 'group_t2i')} i2t {_three(sec, 'group_i2t')}"
    return [(f"{key} ({sec['n_texts']} captions, {sec['n_images']} images)", text)]


def _rerank(key: str, sec: dict[str, Any]) -> list[Row]:
    cal = sec.get("rerank_calibration")
    weights = (
        f"hubness beta {cal['beta']} weight {cal['hub_weight']}, fusion weight {cal['fusion_weight']}"
        if cal
        else f"dual weight {sec.get('dual_weight', 1.0)}"
    )
    rows = []
    for n, row in sec["rerank"].items():
        text = f"t2i fusion {_three(row, 'rerank_t2i')} combined {_three(row, 'rerank_combined_t2i')}"
        if "rerank_hub_t2i_R@1" in row:
            text += f" hubness alone {_three(row, 'rerank_hub_t2i')}"
        if "rerank_combined_concept_t2i_R@1" in row:
            text += (
                f" (first of the concept: dual {_three(row, 'dual_concept_t2i')}"
                f" combined {_three(row, 'rerank_combined_concept_t2i')}"
                + (f" hubness {_three(row, 'rerank_hub_concept_t2i')}" if "rerank_hub_concept_t2i_R@1" in row else "")
                + ")"
            )
        text += f"  i2t fusion {_three(row, 'rerank_i2t')} combined {_three(row, 'rerank_combined_i2t')}"
        rows.append((f"{key} re-ranked top {n} ({weights})", text))
    return rows


def _cross_style(key: str, sec: dict[str, Any]) -> list[Row]:
    a, b = STYLE_PAIR
    return [
        (f"{key} ({sec['pairs']} pairs)", f"{a}->{b} {_three(sec, f'{a}->{b}')}  {b}->{a} {_three(sec, f'{b}->{a}')}")
    ]


def _zero_shot(key: str, sec: dict[str, Any]) -> list[Row]:
    text = f"top-1 {_pct(sec['top1'])} top-5 {_pct(sec.get('top5'))} (chance {_pct(sec['chance'])})"
    if "classifier_top1" in sec:
        text += f"; classifier head top-1 {_pct(sec['classifier_top1'])}"
    return [(f"{key} ({sec['n']} pictures)", text)]


def _section(key: str, sec: dict[str, Any]) -> list[Row]:
    """The rows of one section: its recall figures, then its re-ranking, cross-style or class figures."""
    rows: list[Row] = []
    if key == "photos" and "ci95" in sec:
        rows += _photos(sec)
    elif key == "style_shift" and "styles" in sec:
        rows += _style_shift(sec)
    elif "t2i_R@1" in sec:
        rows += _retrieval(key, sec)
    if isinstance(sec.get("rerank"), dict):
        rows += _rerank(key, sec)
    elif "pairs" in sec:
        rows += _cross_style(key, sec)
    elif "top1" in sec:
        rows += _zero_shot(key, sec)
    return rows


def summary_table(report: dict[str, Any]) -> list[Row]:
    """(section, figures) rows for a readable table: R@1/5/10 in percent."""
    lines: list[Row] = []
    if "precision" in report:
        lines.append(("model", f"{report['model']} ({report['precision']} weights on {report.get('device', 'cpu')})"))
    for key, sec in report.items():
        if isinstance(sec, dict):
            lines += _section(key, sec)
    lines += [("note", note) for note in report.get("notes", [])]
    return lines
