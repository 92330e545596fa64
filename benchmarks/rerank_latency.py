"""Fusion re-ranking latency: N = 10 / 50 / 200 candidates for one text query, from stored tokens.

    python benchmarks/rerank_latency.py --repeats 30

A collection of the demo folder plus synthetic photo-like pictures (enough for N = 200) is
indexed once with the bundled model (its fusion tokens are stored at index time). Each
search re-ranks its top N through ``Engine.search(..., rerank=N)``; reported per N: the
median and p95 of ``timings["rerank"]`` (read the candidates' tokens from the catalog, run
the fusion head, order; the query's own tokens are ``timings["rerank_query"]``, reported
apart and excluded) and of the whole search for reference. No image file is opened.
``--engine onnx`` (default): the path a search takes, the fusion head exported to ONNX beside
the text tower (the query's tokens come from the same text-tower run as its vector);
``--engine torch``: the model's own head in torch (results in ``rerank_latency_torch``).
Target: N = 50 under 50 ms on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import make_photo_folder, report

DEMO = Path(__file__).parents[1] / "data" / "demo"
SIZES = (10, 50, 200)
QUERIES = ("a red car", "a dog", "a bowl of soup", "an airplane in the sky", "a green tree")


def build(store: Path, model: str, pictures: int) -> float:
    from mbm import Engine

    folder = store.parent / "pictures"
    make_photo_folder(folder / "synthetic", pictures, size=(320, 240))
    if DEMO.is_dir() and not (folder / "demo").exists():
        shutil.copytree(DEMO, folder / "demo")
    t0 = time.perf_counter()
    with Engine.open(store, model=model) as eng:
        eng.index([folder])
    return time.perf_counter() - t0


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mbm-offline")
    ap.add_argument("--pictures", type=int, default=220, help="synthetic pictures beside the demo folder")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    ap.add_argument("--engine", choices=("onnx", "torch"), default="onnx", help="the exported head, or torch's")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.engine == "torch":
        os.environ["MBM_NO_FAST_TEXT"] = "1"  # no exported text tower or fusion head: the model in torch
    from mbm import Engine

    load = [round(x, 2) for x in os.getloadavg()]  # other work on the machine shows in the p95
    store = args.root / f"mbm-bench-rerank-{args.model}" / "store"
    index_s = None
    if not (store / "collections" / "default" / "catalog.sqlite").exists():
        index_s = build(store, args.model, args.pictures)
    per_n = {}
    with Engine.open(store) as eng:
        info = eng.info()
        eng.search(QUERIES[0], k=10, rerank=10)  # loads the model (torch) or the exported parts (onnx)
        for n in SIZES:
            rerank, query, total = [], [], []
            for i in range(args.repeats + 2):
                t0 = time.perf_counter()
                hits = eng.search(QUERIES[i % len(QUERIES)], k=n, rerank=n)
                if i >= 2:  # warm-up
                    total.append(time.perf_counter() - t0)
                    rerank.append(eng.timings["rerank"])
                    query.append(eng.timings["rerank_query"])
            assert len(hits) == min(n, info.items) and all(h.match is not None for h in hits)
            per_n[n] = {"rerank": stats(rerank), "query_tokens": stats(query), "whole_search": stats(total)}
    import torch

    result = {
        "model": args.model,
        "engine": args.engine,
        "items": info.items,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load,
        "token_bytes_per_item": info.token_bytes_per_item,
        "index_seconds": index_s,
        "candidates": {str(n): v for n, v in per_n.items()},
        "target": "N=50 rerank median < 50 ms",
    }
    rows = [("items / token bytes per item", f"{info.items} / {info.token_bytes_per_item:,} B")]
    for n, v in per_n.items():
        figures = (
            f"{v['rerank']['median_ms']:.2f} / {v['rerank']['p95_ms']:.2f} ms (query tokens "
            f"{v['query_tokens']['median_ms']:.1f} ms, whole search {v['whole_search']['median_ms']:.1f} ms)"
        )
        rows.append((f"N={n} rerank median / p95", figures))
    report("rerank_latency" if args.engine == "onnx" else "rerank_latency_torch", result, rows)


if __name__ == "__main__":
    main()
