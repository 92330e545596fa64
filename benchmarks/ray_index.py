"""Beyond one machine, measured on one: Ray Data embedding vs the local indexer, Milvus vs FAISS exact search.

    python benchmarks/ray_index.py --images 200 --vectors 20000

1. The same folder of generated photos indexed by the local indexer and by ``--engine ray`` with N local
   Ray workers (one model each): wall time (Ray's includes starting the actors and loading a model in
   each), images/s, and whether both collections hold the same items and embeddings (fp16 tolerance).
   On a 2-core machine expect no gain: the point is that the cluster code path is correct.
2. Clustered unit vectors in a catalog, searched through FAISS (exact: Flat) and through Milvus (milvus-lite,
   FLAT and HNSW): top-10 overlap with exact search, single-query latency, filtered-search latency (an
   ``allowed`` set), build (rebuild) and incremental-sync times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import make_photo_folder, median, report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mbm import Engine, load_model  # noqa: E402
from mbm.store.catalog import Catalog, read_snapshot  # noqa: E402
from mbm.store.vectors import build_from_catalog  # noqa: E402


def items(eng: Engine) -> dict[str, tuple[str, np.ndarray]]:
    catalog = eng.catalog()
    with read_snapshot(catalog):
        states = catalog.file_states()
        ids = [i for s in states.values() for i in s.ids]
        got, vecs = catalog.embeddings_of(ids)
    by_id = dict(zip(got.tolist(), vecs))
    return {p: (s.hash, by_id[s.ids[0]]) for p, s in states.items()}


def ray_part(args: argparse.Namespace) -> tuple[dict, list[tuple[str, str]]]:
    import ray

    make_photo_folder(args.corpus, args.images, size=(800, 600))
    encoder = load_model(args.model, device="cpu", precision=args.precision)
    store = Path(tempfile.mkdtemp(prefix="mbm-bench-ray-"))
    ray.init(num_cpus=args.ray_workers, include_dashboard=False, log_to_driver=False)
    local_s, ray_s, ray_stage = [], [], []
    try:
        for _ in range(args.runs):  # interleaved, so both see the same machine state
            for name in ("local", "ray"):
                shutil.rmtree(store / name, ignore_errors=True)
                with Engine.open(store / name, model=args.model, encoder=encoder) as eng:
                    t0 = time.perf_counter()
                    rep = eng.index(
                        [args.corpus],
                        batch_size=args.batch,
                        engine=name,
                        ray_workers=args.ray_workers if name == "ray" else None,
                    )
                    wall = time.perf_counter() - t0
                    assert rep.indexed == args.images, rep.as_dict()
                    (local_s if name == "local" else ray_s).append(wall)
                    if name == "ray":
                        ray_stage.append(rep.seconds["ray"])
        with Engine.open(store / "local") as a, Engine.open(store / "ray") as b:
            la, lb = items(a), items(b)
        same_items = sorted(la) == sorted(lb) and all(la[p][0] == lb[p][0] for p in la)
        max_diff = max(float(np.abs(la[p][1] - lb[p][1]).max()) for p in la)
    finally:
        ray.shutdown()
        shutil.rmtree(store, ignore_errors=True)
    lm, rm, rs = median(local_s), median(ray_s), median(ray_stage)
    result = {
        "model": args.model,
        "precision": encoder.precision,
        "images": args.images,
        "image_size": "800x600 JPEG q90",
        "batch": args.batch,
        "ray_workers": args.ray_workers,
        "runs": args.runs,
        "local_wall_s": round(lm, 2),
        "ray_wall_s": round(rm, 2),
        "ray_stage_s": round(rs, 2),
        "local_images_per_s": round(args.images / lm, 1),
        "ray_images_per_s": round(args.images / rm, 1),
        "same_items_and_hashes": same_items,
        "max_embedding_abs_diff": round(max_diff, 5),
    }
    rows = [
        ("model", f"{args.model} ({encoder.precision}), batch {args.batch}, {args.images} photos 800x600"),
        ("local indexer", f"{lm:.1f} s ({args.images / lm:.1f} images/s)"),
        (
            f"ray, {args.ray_workers} local workers",
            f"{rm:.1f} s ({args.images / rm:.1f} images/s), Ray stage {rs:.1f} s",
        ),
        ("same items / max |diff|", f"{same_items} / {max_diff:.1e}"),
    ]
    return result, rows


def clustered(n: int, dim: int, seed: int, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def latency_ms(search, queries: np.ndarray, allowed: np.ndarray | None = None) -> float:
    search(queries[:1], 10, allowed)  # warm-up
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None, :], 10, allowed)
        times.append(time.perf_counter() - t0)
    return median(times) * 1000


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, (y >= 0).sum()) for x, y in zip(a, b)]))


def milvus_part(args: argparse.Namespace) -> tuple[dict, list[tuple[str, str]]]:
    from mbm.scale.milvus import MilvusIndex, MilvusSettings, backend_meta

    folder = Path(tempfile.mkdtemp(prefix="mbm-bench-milvus-"))
    catalog = Catalog.open(folder / "catalog.sqlite", create=True)
    catalog.init_meta(kind="image", model="synthetic", fingerprint="none", dim=args.dim, dtype="float16")
    x = clustered(args.vectors, args.dim, 0)
    records = [{"path": f"/v/{i:07d}.jpg", "size": 1, "mtime_ns": 1, "hash": f"h{i}"} for i in range(len(x))]
    catalog.add_items(records, [v.astype(np.float16).tobytes() for v in x])
    queries = clustered(args.queries, args.dim, 1)
    rng = np.random.default_rng(2)
    allowed = np.sort(rng.choice(np.arange(1, args.vectors + 1), args.allowed, replace=False))
    faiss_index = build_from_catalog(catalog)
    truth = faiss_index.search(queries, 10)[1]
    truth_allowed = faiss_index.search(queries, 10, allowed)[1]
    result = {
        "vectors": args.vectors,
        "dim": args.dim,
        "queries": args.queries,
        "allowed": args.allowed,
        "faiss": {
            "kind": faiss_index.kind,
            "latency_ms": round(latency_ms(faiss_index.search, queries), 3),
            "filtered_latency_ms": round(latency_ms(faiss_index.search, queries, allowed), 3),
        },
    }
    rows = [
        (
            f"FAISS {faiss_index.kind} (exact)",
            f"{result['faiss']['latency_ms']:.2f} ms/query, filtered {result['faiss']['filtered_latency_ms']:.2f} ms",
        ),
    ]
    for index_type in ("FLAT", "HNSW"):
        catalog.set_meta(**backend_meta(str(folder / "milvus.db"), "bench", catalog.catalog_id, index_type))
        index = MilvusIndex(MilvusSettings.from_meta(catalog.meta()))
        t0 = time.perf_counter()
        index.sync(catalog)
        build = time.perf_counter() - t0
        described = index.client.describe_index(index.settings.collection, "vector")
        found = index.search(queries, 10)[1]
        found_allowed = index.search(queries, 10, allowed)[1]
        catalog.remove_paths([f"/v/{i:07d}.jpg" for i in range(0, 1000)])
        catalog.add_items(records[:1000], [v.astype(np.float16).tobytes() for v in x[:1000]])  # 1000 ids replaced
        t0 = time.perf_counter()
        how = index.sync(catalog)
        sync = time.perf_counter() - t0
        entry = {
            "top10_overlap_with_exact": round(overlap(found, truth), 4),
            "filtered_top10_overlap_with_exact": round(overlap(found_allowed, truth_allowed), 4),
            "latency_ms": round(latency_ms(index.search, queries), 2),
            "filtered_latency_ms": round(latency_ms(index.search, queries, allowed), 2),
            "build_s": round(build, 2),
            "sync_2000_changes_s": round(sync, 2),
            "sync": how,
            "index_state_after_build": {
                k: described.get(k) for k in ("index_type", "indexed_rows", "pending_index_rows")
            },
        }
        result[f"milvus_{index_type.lower()}"] = entry
        rows.append(
            (
                f"Milvus-lite {index_type}",
                f"top-10 overlap {entry['top10_overlap_with_exact']:.3f} (filtered {entry['filtered_top10_overlap_with_exact']:.3f}), "
                f"{entry['latency_ms']:.1f} ms/query (filtered {entry['filtered_latency_ms']:.1f}), "
                f"build {build:.1f} s, sync of 2000 changes {sync:.2f} s ({how})",
            )
        )
        faiss_index = build_from_catalog(catalog)  # the next round compares against the changed catalog
        truth = faiss_index.search(queries, 10)[1]
        truth_allowed = faiss_index.search(queries, 10, allowed)[1]
    catalog.close()
    shutil.rmtree(folder, ignore_errors=True)
    return result, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--model", default="mbm-offline")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--allowed", type=int, default=2_000, help="size of the filtered searches' allowed id set")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mbm-bench-photos-800")
    args = ap.parse_args()
    result: dict = {"note": "2-core machine shared with other work while measuring; Ray cannot gain here"}
    rows: list[tuple[str, str]] = []
    if not args.skip_ray:
        result["ray"], part = ray_part(args)
        rows += part
    result["milvus"], part = milvus_part(args)
    rows += part
    report("ray_index", result, rows)


if __name__ == "__main__":
    main()
