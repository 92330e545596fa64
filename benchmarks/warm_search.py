"""Searches on one open Engine (what a server embedding mbm pays per query), 100,000 items.

    python benchmarks/warm_search.py --items 100000 --searches 1000

The collection holds synthetic clustered vectors (speed does not depend on their
meaning) indexed under the bundled model, whose text tower answers queries torch-free.
Reported: p50/p99 per search excluding query encoding (a ready vector: state check,
vector search, catalog rows), the same with text encoding, and a fresh Engine per
query for comparison (what every search cost before the Engine stayed warm).
Target: p50 <= 5 ms excluding encoding on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import report
from cold_search import build_collection

WORDS = (
    "red car dog beach sunset mountain city night cat bowl soup tree river boat bird flower bicycle "
    "street snow forest child guitar kitchen window bridge train"
).split()


def queries(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 5)))) + f" {i}" for i in range(n)]


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--searches", type=int, default=1000)
    ap.add_argument("--fresh", type=int, default=30, help="searches with a new Engine each, for comparison")
    ap.add_argument("--model", default="mbm-offline")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    from mbm import Engine

    store = args.root / f"mbm-bench-warm-{args.model}-{args.items}"
    if not (store / "collections" / "default" / "catalog.sqlite").exists():
        build_collection(store, args.model, args.items)
    texts = queries(args.searches)
    with Engine.open(store) as eng:
        t0 = time.perf_counter()
        eng.search(texts[0], k=10)
        first = time.perf_counter() - t0
        vectors = [eng.embed_texts([t])[0] for t in texts]
        bare, full = [], []
        for v in vectors:
            t0 = time.perf_counter()
            hits = eng.search(v, k=10)
            bare.append(time.perf_counter() - t0)
        for t in texts:
            t0 = time.perf_counter()
            hits = eng.search(t, k=10)
            full.append(time.perf_counter() - t0)
        assert len(hits) == 10
        dim = eng.info().dim
    fresh = []
    for t in texts[: args.fresh]:
        t0 = time.perf_counter()
        with Engine.open(store) as eng:
            eng.search(t, k=10)
        fresh.append(time.perf_counter() - t0)
    result = {
        "items": args.items,
        "dim": dim,
        "model": args.model,
        "searches": args.searches,
        "first_search_s": round(first, 3),
        "excluding_encoding": percentiles(bare),
        "with_text_encoding": percentiles(full),
        "fresh_engine_per_search": percentiles(fresh),
    }
    b, f, n = result["excluding_encoding"], result["with_text_encoding"], result["fresh_engine_per_search"]
    report(
        "warm_search",
        result,
        [
            ("collection", f"{args.items} items x {dim} dims, {args.model}, exact (Flat) index"),
            ("first search (loads index + encoder)", f"{first * 1000:.0f} ms"),
            (
                f"warm, excluding encoding ({args.searches})",
                f"p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms (target p50 <= 5 ms)",
            ),
            (f"warm, with text encoding ({args.searches})", f"p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms"),
            (f"fresh Engine per search ({args.fresh})", f"p50 {n['p50_ms']:.1f} ms, p99 {n['p99_ms']:.1f} ms"),
        ],
    )


if __name__ == "__main__":
    main()
