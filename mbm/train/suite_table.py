"""The evaluation suite's report (``mbm.train.suite.evaluate_suite``) as a readable table."""

from __future__ import annotations

from typing import Any

from mbm.train.recall import KS

STYLE_PAIR = ("emoji", "symbola")  # the two sources whose drawings of one concept the cross-style section pairs


def summary_table(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(section, figures) rows for a readable table: R@1/5/10 in percent."""

    def pct(v: Any) -> str:
        return f"{100 * v:.1f}" if isinstance(v, float) else "-"

    def three(sec: dict[str, Any], d: str) -> str:
        return "/".join(pct(sec.get(f"{d}_R@{k}")) for k in KS)

    lines = []
    if "precision" in report:
        lines.append(("model", f"{report['model']} ({report['precision']} weights on {report.get('device', 'cpu')})"))
    for key, sec in report.items():
        if not isinstance(sec, dict):
            continue
        if key == "photos" and "ci95" in sec:
            ci = sec["ci95"]
            text = "  ".join(
                f"{d} R@{k} {pct(sec[f'{d}_R@{k}'])} ({pct(ci[f'{d}_R@{k}'][0])}-{pct(ci[f'{d}_R@{k}'][1])})"
                for d, ks in (("t2i", KS), ("i2t", KS[:2]))
                for k in ks
            )
            if "rerank_t2i_R@1" in sec:
                text += f"  t2i re-ranked top {sec['rerank_top']}: {three(sec, 'rerank_t2i')}"
            lines.append((f"photos ({sec['n_texts']} captions, {sec['n_images']} photos; 95% Wilson CI)", text))
        elif key == "style_shift" and "styles" in sec:
            for style, m in sec["styles"].items():
                lines.append(
                    (
                        f"style-shift:{style} ({m['n_texts']} captions, {m['n_images']} icons)",
                        f"t2i {three(m, 't2i')}  i2t {three(m, 'i2t')}  (t2i chance {three(m['chance'], 't2i')})",
                    )
                )
            lines.append(
                (
                    f"style-shift mean over {len(sec['styles'])} styles ({sec['concepts']} concepts)",
                    f"t2i {three(sec['mean_over_styles'], 't2i')}",
                )
            )
        elif "t2i_R@1" in sec:
            text = f"t2i {three(sec, 't2i')}  i2t {three(sec, 'i2t')}"
            if "rerank_t2i_R@1" in sec:
                text += f"  t2i re-ranked top {sec['rerank_top']}: {three(sec, 'rerank_t2i')}"
            if "rerank_combined_t2i_R@1" in sec:
                text += f" (fusion+dual {three(sec, 'rerank_combined_t2i')})"
            if "group_t2i_R@1" in sec:
                text += f"  any drawing of the concept: t2i {three(sec, 'group_t2i')} i2t {three(sec, 'group_i2t')}"
            lines.append((f"{key} ({sec['n_texts']} captions, {sec['n_images']} images)", text))
        if isinstance(sec.get("rerank"), dict):
            for n, row in sec["rerank"].items():
                lines.append(
                    (
                        f"{key} re-ranked top {n} (dual weight {sec.get('dual_weight', 1.0)})",
                        f"t2i fusion {three(row, 'rerank_t2i')} combined {three(row, 'rerank_combined_t2i')}  "
                        f"i2t fusion {three(row, 'rerank_i2t')} combined {three(row, 'rerank_combined_i2t')}",
                    )
                )
        elif "pairs" in sec:
            a, b = STYLE_PAIR
            lines.append(
                (
                    f"{key} ({sec['pairs']} pairs)",
                    f"{a}->{b} {three(sec, f'{a}->{b}')}  {b}->{a} {three(sec, f'{b}->{a}')}",
                )
            )
        elif "top1" in sec:
            text = f"top-1 {pct(sec['top1'])} top-5 {pct(sec.get('top5'))} (chance {pct(sec['chance'])})"
            if "classifier_top1" in sec:
                text += f"; classifier head top-1 {pct(sec['classifier_top1'])}"
            lines.append((f"{key} ({sec['n']} pictures)", text))
    for note in report.get("notes", []):
        lines.append(("note", note))
    return lines
