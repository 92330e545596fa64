"""The GPU paths, measured: FAISS on the GPU at 1M and 10M vectors, and CUDA image embedding.

    python benchmarks/gpu.py --sizes 1000000 10000000 --photos 1024

Needs a CUDA device; the FAISS part needs faiss-gpu (``pip install 'mbm[gpu]'``) and is skipped with a
note where faiss has no GPU support. Writes ``benchmarks/results/gpu.json`` after every part (a killed
run keeps what it measured) and prints a table.

FAISS: clustered synthetic 512-dim embeddings (ann_scale.py's mixture of Gaussians in a 24-dim latent
space embedded in 512 dims plus noise, L2-normalized; drawn with torch on the GPU, since drawing 10M x 512
normals with numpy takes minutes) are indexed through mbm's ``VectorIndex.build``, the code ``mbm index``
runs, with the index type forced: ``Flat`` (exact), ``IVF{nlist},Flat`` and ``IVF{nlist},PQ64`` (re-scored
exactly from the float16 rows). IVF k-means trains on the GPU and the adds assign lists there; searches
run on a GPU copy of the index. Per run: build seconds, the first search (which copies the index to the
GPU), single-query latency p50/p99, batched queries/s (k=10) and recall@10 against exact search (computed
with torch in float32 on the GPU, TF32 off). The same Flat index searched on the CPU gives the ratio.

Embedding: an open_clip ViT-B-32 at 256 px (random weights: the throughput is the architecture's) in bf16
on CUDA, model-only (a fixed batch) and end-to-end ``Engine.index`` over a folder of photo-like JPEGs,
alternating runs with the JPEGs decoded on the GPU (``mbm.indexer.device_decode``) and on the CPU's
cores (``MBM_DEVICE_DECODE=0``).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _util import RESULTS, machine, median, model_only, photo_like

from mbm.indexer.device_decode import ENV_SWITCH

DIM = 512
K = 10


def clustered(n: int, seed: int, device: str, latent: int = 24, clusters: int = 1000) -> np.ndarray:
    """``n`` unit vectors from ann_scale.py's distribution (the same generator shape, drawn with torch)."""
    g = torch.Generator(device="cpu").manual_seed(0)  # the mixture itself: the same for data and queries
    proj = torch.randn(latent, DIM, generator=g) / latent**0.5
    centers = torch.randn(clusters, latent, generator=g) * 1.5
    spread = torch.rand(clusters, generator=g) * 0.7 + 0.3
    proj, centers, spread = proj.to(device), centers.to(device), spread.to(device)
    out = np.empty((n, DIM), np.float32)
    r = torch.Generator(device=device).manual_seed(1000 + seed)
    for start in range(0, n, 1_000_000):
        m = min(1_000_000, n - start)
        c = torch.randint(0, clusters, (m,), generator=r, device=device)
        z = centers[c] + spread[c, None] * torch.randn(m, latent, generator=r, device=device)
        x = z @ proj + 0.15 * torch.randn(m, DIM, generator=r, device=device)
        out[start : start + m] = torch.nn.functional.normalize(x, dim=1).cpu().numpy()
    return out


def exact_topk(x: np.ndarray, queries: np.ndarray, device: str) -> np.ndarray:
    """Row numbers of each query's exact top-K by inner product, float32 (no TF32), chunk by chunk."""
    torch.backends.cuda.matmul.allow_tf32 = False
    q = torch.from_numpy(queries).to(device)
    best_s = torch.full((len(q), K), -torch.inf, device=device)
    best_i = torch.full((len(q), K), -1, dtype=torch.int64, device=device)
    for start in range(0, len(x), 1_000_000):
        s = q @ torch.from_numpy(x[start : start + 1_000_000]).to(device).T
        top_s, top_i = s.topk(K, dim=1)
        both_s, both_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + start], 1)
        best_s, order = both_s.topk(K, dim=1)
        best_i = both_i.gather(1, order)
    return best_i.cpu().numpy()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def search_figures(index: Any, queries: np.ndarray, truth: np.ndarray, batch: int) -> dict[str, Any]:
    single = []
    for q in queries[:300]:
        t = time.perf_counter()
        index.search(q[None], K)
        single.append(time.perf_counter() - t)
    batches = []
    for s in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        index.search(queries[s : s + batch], K)
        batches.append(time.perf_counter() - t)
    found = index.search(queries, K)[1]
    recall = float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))
    return {
        "single": percentiles(single[20:]),
        f"batch{batch}_ms": round(1000 * median(batches), 2),
        "batched_queries_per_s": round(batch / median(batches)),
        "recall_at_10": round(recall, 4),
    }


def faiss_size(n: int, nq: int, batch: int, pq: bool, device: str = "cuda") -> dict[str, Any]:
    from mbm.store import ann
    from mbm.store.ann import IndexSettings
    from mbm.store.catalog import CatalogState
    from mbm.store.vectors import VectorIndex

    t0 = time.perf_counter()
    x = clustered(n, 0, device)
    queries = clustered(nq, 7, device)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    truth = exact_topk(x, queries, device)  # row numbers; ids below are row numbers too
    out: dict[str, Any] = {
        "n": n,
        "dim": DIM,
        "queries": nq,
        "raw_float32_bytes": x.nbytes,
        "generate_s": round(generate_s, 1),
        "exact_torch_all_queries_s": round(time.perf_counter() - t0, 2),
        "runs": {},
    }
    ids = np.arange(n, dtype=np.int64)
    nlist = ann.ivf_lists(n)
    factories = ["Flat", f"IVF{nlist},Flat"] + [f"IVF{nlist},PQ64"] * pq
    for factory in factories:
        t0 = time.perf_counter()
        index = VectorIndex.build(ids, x, CatalogState("gpu-bench", 1, n), DIM, IndexSettings(factory))
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.search(queries[:1], K)  # the first search copies the index to the GPU
        first_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "build_s": round(build_s, 1),
            "first_search_s": round(first_s, 2),
            "on_gpu": index._search_index is not None and index._search_index is not index.index,
            "params": {k: v for k, v in index.tuning.__dict__.items() if v},
            **search_figures(index, queries, truth, batch),
        }
        if factory == "Flat" and n <= 1_000_000:  # the same index on the CPU's cores, for the ratio
            cpu = VectorIndex(index.index, index.state, index.kind, index.tuning, index.rows, index.origin)
            cpu._search_index = cpu.index
            cpu_batch = min(batch, 64)
            t0 = time.perf_counter()
            cpu.search(queries[:cpu_batch], K)
            cpu_s = time.perf_counter() - t0
            row["cpu_batched_queries_per_s"] = round(cpu_batch / cpu_s)
            row["gpu_vs_cpu_batched"] = round(row["batched_queries_per_s"] / row["cpu_batched_queries_per_s"], 1)
            del cpu
        out["runs"][factory] = row
        print(f"  {n:>11,} {factory:<18} {json.dumps(row)}", file=sys.stderr, flush=True)
        del index
        gc.collect()
    return out


def _photo(args: tuple[Path, int]) -> None:
    path, seed = args
    if not path.exists():
        photo_like(seed, (2400, 1600)).save(path, "JPEG", quality=90)


def embedding(n_photos: int, batch: int, device: str = "cuda", precision: str = "bf16") -> dict[str, Any]:
    from mbm import Engine, load_model

    folder = Path(tempfile.gettempdir()) / "mbm-gpu-photos"
    folder.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(_photo, [(folder / f"photo_{i:05d}.jpg", i) for i in range(n_photos)])
    make_s = time.perf_counter() - t0
    spec = "ViT-B-32-256:random"
    encoder = load_model(spec, device=device, precision=precision)
    rates = [model_only(encoder, batch, 8) for _ in range(3)]
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for switch in ("1", "0", "1", "0"):  # JPEGs decoded on the GPU, then on the CPU's cores; alternating
        os.environ[ENV_SWITCH] = switch
        store = Path(tempfile.mkdtemp(prefix="mbm-gpu-store-"))
        with Engine.open(store, model=spec, encoder=encoder) as eng:
            t0 = time.perf_counter()
            rep = eng.index([folder], batch_size=batch)
            runs.setdefault("gpu_jpeg" if switch == "1" else "cpu_decode", []).append(
                (rep.indexed / (time.perf_counter() - t0), rep.seconds)
            )
        shutil.rmtree(store, ignore_errors=True)
    os.environ.pop(ENV_SWITCH)
    return {
        "model": spec,
        "precision": encoder.precision,
        "device": encoder.device,
        "batch": batch,
        "photos": n_photos,
        "photo_size": "2400x1600 JPEG q90",
        "make_photos_s": round(make_s, 1),
        "model_only_images_per_s": round(median(rates)),
        "end_to_end_images_per_s": {k: [round(r, 1) for r, _ in v] for k, v in runs.items()},
        "stage_seconds_last_run": {k: {s: round(t, 2) for s, t in v[-1][1].items()} for k, v in runs.items()},
        "note": "the first run pays the query encoder's export and CUDA's warm-up",
    }


def save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def table(result: dict[str, Any]) -> str:
    lines = [
        "| vectors | index | build s | first search s | 1 query p50 / p99 ms | batched queries/s | recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in result.get("faiss", {}).values():
        for factory, r in size["runs"].items():
            cpu = f" (CPU {r['cpu_batched_queries_per_s']:,})" if "cpu_batched_queries_per_s" in r else ""
            lines.append(
                f"| {size['n']:,} | {factory} {r['params'] or ''} | {r['build_s']} | {r['first_search_s']} | "
                f"{r['single']['p50_ms']} / {r['single']['p99_ms']} | {r['batched_queries_per_s']:,}{cpu} | "
                f"{r['recall_at_10']:.3f} |"
            )
    if "embedding" in result:
        e = result["embedding"]
        lines.append(
            f"\nembedding {e['model']} {e['precision']} on {e['device']}: model-only {e['model_only_images_per_s']} "
            f"images/s, end-to-end {e['end_to_end_images_per_s']} images/s ({e['photos']} photos {e['photo_size']})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--pq-max", type=int, default=1_000_000, help="IVF-PQ runs up to this size (CPU-bound PQ)")
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--photos", type=int, default=1024, help="0: no embedding run")
    parser.add_argument("--embed-batch", type=int, default=256)
    parser.add_argument("--name", default="gpu", help="results file (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: nothing to measure (benchmarks/ann_scale.py measures the CPU)")
    from mbm.store.vectors import gpu_count

    path = RESULTS / f"{args.name}.json"
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": {**machine(), "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count()},
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:]),
    }
    if args.photos:
        result["embedding"] = embedding(args.photos, args.embed_batch)
        save(result, path)
        print(table(result), file=sys.stderr, flush=True)
    if gpu_count() == 0:
        result["faiss_note"] = "faiss has no GPU support here (faiss-cpu): not measured"
    for n in args.sizes if gpu_count() else []:
        result.setdefault("faiss", {})[str(n)] = faiss_size(n, args.queries, args.batch, n <= args.pq_max)
        save(result, path)
    print(table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
