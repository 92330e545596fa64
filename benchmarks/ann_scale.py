"""ANN at scale: build time, memory, disk, single-query and batched latency, recall@10 vs exact.

Collections of clustered synthetic embeddings (a mixture of Gaussians in a 24-dim latent space,
embedded linearly in 512 dims plus noise, L2-normalized: low intrinsic dimension like real CLIP
embeddings; never i.i.d. random, on which ANN recall means nothing) are written as .npy + .jsonl
shards and imported with mbm's importer (no images, no model), then indexed three ways:

- ``auto``: what mbm chooses with the default memory budget (half the RAM),
- ``auto --max-memory M``: what it chooses under a tight budget (IVF-PQ + exact re-scoring),
- ``Flat``: exact search, the baseline.

Queries are held-out points of the same distribution; recall@10 is against exact search over the
whole collection. Results are checkpointed per size into ``benchmarks/results/ann_scale.json``.

    nice python benchmarks/ann_scale.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mbm.indexer.importer import find_shards, import_shards
from mbm.store import ann
from mbm.store.catalog import Catalog
from mbm.store.vectors import VectorIndex, describe, ensure_saved

DIM = 512
RESULTS = Path(__file__).parent / "results" / "ann_scale.json"


def generator(dim: int = DIM, latent: int = 24, clusters: int = 1000, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    centers = rng.normal(size=(clusters, latent)).astype(np.float32) * 1.5
    spread = rng.uniform(0.3, 1.0, clusters).astype(np.float32)

    def make(n: int, chunk_seed: int) -> np.ndarray:
        r = np.random.default_rng(chunk_seed)
        c = r.integers(0, clusters, n)
        z = centers[c] + spread[c, None] * r.normal(size=(n, latent)).astype(np.float32)
        x = z @ proj + 0.15 * r.normal(size=(n, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return make


def write_shards(folder: Path, n: int, make, shard: int = 250_000) -> None:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, n, shard)):
        x = make(min(shard, n - start), 1000 + s)
        np.save(folder / f"emb_{s:03d}.npy", x.astype(np.float16))
        with open(folder / f"emb_{s:03d}.jsonl", "w") as f:
            for i in range(start, start + len(x)):
                f.write(json.dumps({"image_path": f"/synthetic/{i // 1000}/{i}.jpg"}) + "\n")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def measure(folder: Path, catalog: Catalog, queries: np.ndarray, truth: np.ndarray, batch: int) -> dict:  # type: ignore[type-arg]
    index = VectorIndex.load(folder, catalog.catalog_id)  # as a search process finds it
    assert index is not None
    for q in queries[:20]:
        index.search(q[None], 10)
    single = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], 10)
        single.append(time.perf_counter() - t)
    # FAISS opens an OpenMP team even for one query: on a busy 2-core machine its barrier waits for a
    # descheduled thread (ms). One thread is how a latency-bound server would run it.
    threads = ann.faiss.omp_get_max_threads()
    ann.faiss.omp_set_num_threads(1)
    single1 = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], 10)
        single1.append(time.perf_counter() - t)
    ann.faiss.omp_set_num_threads(threads)
    batched = []
    for s in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        index.search(queries[s : s + batch], 10)
        batched.append(time.perf_counter() - t)
    found = index.search(queries, 10)[1]
    hits = [len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)]
    info = describe(folder, catalog.catalog_id)
    return {
        "type": info["type"],
        "reason": info["reason"],
        "params": info["params"],
        "build_s": info["build_seconds"],
        "index_bytes": info["memory_bytes"],
        "rows_bytes": info["rows_bytes"],
        "build_recall_at_10": info["recall_at_10"],
        "recall_at_10": round(float(np.mean(hits)), 4),
        "single": percentiles(single),
        "single_1_thread": percentiles(single1),
        f"batch{batch}": {**percentiles(batched), "per_query_ms": round(1000 * float(np.median(batched)) / batch, 3)},
    }


def reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs``) and return its RSS now (0 elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS") or 0
    except OSError:
        return 0


def peak_rss() -> int | None:
    """The peak RSS since :func:`reset_peak_rss` (None where /proc cannot tell)."""
    return _status_bytes("VmHWM")


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def exact_truth(catalog: Catalog, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-``k`` ids of each query over every stored vector, merged chunk by chunk."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for ids, vecs in catalog.read_embeddings():
        best_s, best_i = ann.merge_topk(best_s, best_i, *ann.exact_topk(queries, vecs, ids, k), k)
    return best_i


def run_size(n: int, work: Path, fraction: float, nq: int, batch: int) -> dict:  # type: ignore[type-arg]
    make = generator()
    shards = work / "shards"
    t0 = time.perf_counter()
    write_shards(shards, n, make)
    queries = make(nq, 7)
    gen_s = time.perf_counter() - t0
    folder = work / "collection"
    folder.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(folder / "catalog.sqlite", create=True)
    catalog.set_meta(dim=DIM, dtype="float16", kind="image", model="synthetic")
    t0 = time.perf_counter()
    report = import_shards(catalog, find_shards(shards))
    import_s = time.perf_counter() - t0
    shutil.rmtree(shards)
    t0 = time.perf_counter()
    truth = exact_truth(catalog, queries, 10)  # chunk by chunk: this script holds no copy of the vectors
    exact_numpy_s = time.perf_counter() - t0
    out = {
        "n": n,
        "dim": DIM,
        "raw_float32_bytes": n * DIM * 4,
        "generate_s": round(gen_s, 1),
        "import_s": round(import_s, 1),
        "imported": report.imported,
        "catalog_bytes": (folder / "catalog.sqlite").stat().st_size,
        "exact_numpy_all_queries_s": round(exact_numpy_s, 2),
        "runs": {},
    }
    budget = int(n * DIM * 4 * fraction)
    runs = (
        ("auto", {}),
        (f"auto --max-memory {ann.format_bytes(budget)}", {"max_memory": budget}),
        ("Flat", {"index_type": "Flat"}),
    )
    for label, settings in runs:
        catalog.set_meta(
            **ann.settings_meta(settings.get("index_type", "auto"), settings.get("max_memory", "auto"), DIM)
        )
        before = reset_peak_rss()
        t0 = time.perf_counter()
        ensure_saved(catalog, folder)
        build_wall = time.perf_counter() - t0
        peak = peak_rss()
        row = measure(folder, catalog, queries, truth, batch)
        row["build_wall_s"] = round(build_wall, 1)
        row["index_vs_float32"] = round(row["index_bytes"] / out["raw_float32_bytes"], 3)
        row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if peak is not None:  # this build's own peak, above what the process held before it
            row["build_peak_rss_bytes"], row["rss_before_build_bytes"] = peak, before
            row["build_peak_vs_float32"] = round((peak - before) / out["raw_float32_bytes"], 2)
        out["runs"][label] = row
        print(
            f"  {n:>9,} {label:<24} {row['type']:<14} build {build_wall:7.1f}s  recall {row['recall_at_10']:.3f}  "
            f"single p50 {row['single']['p50_ms']:.2f} ms p99 {row['single']['p99_ms']:.2f} ms",
            file=sys.stderr,
        )
    catalog.close()
    return out


def table(results: dict) -> str:  # type: ignore[type-arg]
    lines = [
        "| vectors | run | index | build s | index memory (x float32) | rows file | recall@10 | 1 query p50 / p99 ms | batch p50 ms (per query) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"].values():
        for label, r in size["runs"].items():
            b = next(v for k, v in r.items() if k.startswith("batch"))
            lines.append(
                f"| {size['n']:,} | {label} | {r['type']} {', '.join(f'{k}={v}' for k, v in r['params'].items())} | "
                f"{r['build_wall_s']} | {ann.format_bytes(r['index_bytes'])} ({r['index_vs_float32']}x) | "
                f"{ann.format_bytes(r['rows_bytes'])} | {r['recall_at_10']:.3f} | {r['single']['p50_ms']} / {r['single']['p99_ms']} ({r['single_1_thread']['p50_ms']} / {r['single_1_thread']['p99_ms']}) | "
                f"{b['p50_ms']} ({b['per_query_ms']}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--budget-fraction", type=float, default=0.125, help="tight --max-memory run, of raw float32")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--name", default=RESULTS.stem, help="results file (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    path = RESULTS.with_name(f"{args.name}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("sizes", {})
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "note": "2-core AMD EPYC (AVX2), shared with other work while measuring",
        "faiss_threads": ann.faiss.omp_get_max_threads(),
    }
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"ann{n}-", dir=args.work))
        try:
            results["sizes"][str(n)] = run_size(n, work, args.budget_fraction, args.queries, args.batch)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results["sizes"][str(n)]["command"] = "nice python benchmarks/ann_scale.py " + " ".join(sys.argv[1:])
        results["sizes"][str(n)]["load_average"] = os.getloadavg()[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))  # a checkpoint per size
    print(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
