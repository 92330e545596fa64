"""What `--min-score auto` keeps and drops: right answers kept vs junk dropped, per cutoff width.

    python benchmarks/min_score_auto.py --model mbm-offline

One collection holds data/demo (43 pictures) and the evaluation photos (54 real photos from
installed wheels, `mbm.train.evalsets`); the queries are demo_queries.py's 30 everyday queries
and the photos' 108 hand-written captions, each with the pictures that answer it. For every
query the background is the collection's fixed random sample (all of it here: it is smaller
than the 2,000-item sample), and the cutoff is median + Z x 1.4826 x MAD of the query's scores
against it. "kept" is the fraction of (query, right picture) pairs at or above the cutoff;
"junk dropped" the fraction of (query, other picture) pairs below it; "hits" the mean number
of results a query keeps; precision and F1 are over all queries' kept results. The shipped Z
(mbm.retrieval.searcher.AUTO_SIGMAS) is the one with the best F1 here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _util import report
from demo_queries import DEMO, QUERIES

SIGMAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def photo_queries(folder: Path) -> dict[str, list[str]]:
    from mbm.train.evalsets import build_photos

    manifest = build_photos(folder, log=lambda _: None)
    queries: dict[str, list[str]] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        for caption in row["captions"]:
            queries.setdefault(caption, []).append(Path(row["image"]).stem)
    return queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mbm-offline")
    args = ap.parse_args()
    from mbm import Engine
    from mbm.retrieval.searcher import AUTO_SIGMAS

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        queries = {**QUERIES, **photo_queries(root / "eval")}
        shutil.copytree(DEMO, root / "pictures" / "demo")
        shutil.copytree(root / "eval" / "photos", root / "pictures" / "photos")
        with Engine.open(root / "store", model=args.model) as eng:
            eng.index([root / "pictures"])
            n = eng.info().items
            searcher = eng.searcher()
            rows = []  # per query: (scores of right pictures, scores of the others, background scores)
            for query, targets in queries.items():
                vector = searcher.query_vector(query)
                hits = eng.search(vector, k=n, min_score=-1.0)
                right = np.array([h.score for h in hits if Path(h.path).stem in targets])
                other = np.array([h.score for h in hits if Path(h.path).stem not in targets])
                rows.append((right, other, searcher.background_scores(vector)))

    table = []
    for z in SIGMAS:
        kept = junk = total_right = total_other = hits = 0.0
        for right, other, background in rows:
            median = np.median(background)
            cutoff = median + z * 1.4826 * np.median(np.abs(background - median))
            kept += (right >= cutoff).sum()
            junk += (other < cutoff).sum()
            total_right += len(right)
            total_other += len(other)
            hits += (right >= cutoff).sum() + (other >= cutoff).sum()
        precision, recall = kept / max(hits, 1), kept / total_right
        table.append(
            {
                "sigmas": z,
                "right_kept": round(recall, 4),
                "junk_dropped": round(junk / total_other, 4),
                "mean_hits": round(hits / len(rows), 2),
                "precision": round(precision, 4),
                "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            }
        )
    best = max(table, key=lambda t: t["f1"])
    result = {
        "model": args.model,
        "items": n,
        "queries": len(rows),
        "shipped_sigmas": AUTO_SIGMAS,
        "best_f1_sigmas": best["sigmas"],
        "by_sigmas": table,
    }
    report(
        "min_score_auto",
        result,
        [("collection", f"{n} pictures (demo + evaluation photos), {len(rows)} queries, {args.model}")]
        + [
            (
                f"median + {t['sigmas']} robust std" + (" (shipped)" if t["sigmas"] == AUTO_SIGMAS else ""),
                f"right kept {100 * t['right_kept']:.1f}%, junk dropped {100 * t['junk_dropped']:.1f}%, "
                f"{t['mean_hits']} hits per query, precision {100 * t['precision']:.1f}%, F1 {t['f1']:.3f}",
            )
            for t in table
        ],
    )


if __name__ == "__main__":
    main()
