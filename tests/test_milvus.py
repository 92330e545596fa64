"""Milvus as the vector backend (``--backend milvus``), on milvus-lite: results match FAISS exact search,
``allowed`` filters, the copy follows the catalog's change log, and a collection searches it end to end.
Skipped when pymilvus / milvus-lite are not installed (the ``scale`` extra)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import make_images

from mbm import Engine
from mbm.errors import UsageError
from mbm.store.catalog import Catalog, read_snapshot
from mbm.store.vectors import build_from_catalog, read_stamp

needs_milvus = pytest.mark.skipif(
    importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None,
    reason="pymilvus and milvus-lite are not installed (pip install 'mbm[scale]')",
)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: neighbours are close and near-ties are common, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add_vectors(catalog: Catalog, vectors: np.ndarray, start: int = 0) -> None:
    rows = [
        {"path": f"/v/{start + i:06d}.jpg", "size": 1, "mtime_ns": 1, "hash": f"h{start + i}"}
        for i in range(len(vectors))
    ]
    catalog.add_items(rows, [v.astype(np.float16).tobytes() for v in vectors])


def synthetic_catalog(path, vectors: np.ndarray) -> Catalog:
    catalog = Catalog.open(path, create=True)
    catalog.init_meta(kind="image", model="synthetic", fingerprint="none", dim=vectors.shape[1], dtype="float16")
    add_vectors(catalog, vectors)
    return catalog


def milvus_index(tmp_path, catalog: Catalog, index_type: str):
    from mbm.scale.milvus import MilvusIndex, MilvusSettings, backend_meta

    catalog.set_meta(**backend_meta(str(tmp_path / "milvus.db"), "test", catalog.catalog_id, index_type))
    return MilvusIndex(MilvusSettings.from_meta(catalog.meta()))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, (y >= 0).sum()) for x, y in zip(a, b)]))


@needs_milvus
def test_milvus_results_match_faiss_exact_search(tmp_path):
    vectors = clustered(3000, 64)
    catalog = synthetic_catalog(tmp_path / "catalog.sqlite", vectors)
    faiss_index = build_from_catalog(catalog)
    assert faiss_index.kind == "Flat"  # exact: the reference
    queries = clustered(50, 64, seed=1)
    want_s, want_i = faiss_index.search(queries, 10)
    for index_type, floor in (("FLAT", 1.0), ("HNSW", 0.95)):
        index = milvus_index(tmp_path, catalog, index_type)
        assert index.sync(catalog) == "rebuilt"
        assert (index.ntotal, index.dim, index.state) == (3000, 64, catalog.state())
        got_s, got_i = index.search(queries, 10)
        top10 = overlap(got_i, want_i)
        print(f"Milvus {index_type} top-10 overlap with FAISS exact: {top10:.3f}")
        assert top10 >= floor
        np.testing.assert_allclose(got_s[:, 0], want_s[:, 0], atol=1e-4)
    catalog.close()


@needs_milvus
def test_allowed_ids_filter_like_faiss_in_chunks(tmp_path):
    from mbm.scale.milvus_filter import id_filters

    vectors = clustered(2000, 32, seed=2)
    catalog = synthetic_catalog(tmp_path / "catalog.sqlite", vectors)
    faiss_index = build_from_catalog(catalog)
    index = milvus_index(tmp_path, catalog, "FLAT")
    index.sync(catalog)
    rng = np.random.default_rng(3)
    allowed = np.unique(np.concatenate([np.arange(100, 400), rng.choice(np.arange(1, 2001), 300, replace=False)]))
    chunks = list(id_filters(allowed, 300))
    assert len(chunks) > 3 and sum(n for _, n in chunks) == len(allowed)
    index.max_filter_chars = 300  # several searches, merged to the best k
    queries = clustered(20, 32, seed=4)
    got_s, got_i = index.search(queries, 10, allowed)
    want_s, want_i = faiss_index.search(queries, 10, allowed)
    assert np.isin(got_i, allowed).all()
    assert overlap(got_i, want_i) == 1.0
    np.testing.assert_allclose(got_s, want_s, atol=1e-4)
    few = np.array([5, 17, 1999])  # fewer allowed than k: the rest is -1
    s, i = index.search(queries[:2], 10, few)
    assert sorted(i[0][i[0] >= 0]) == [5, 17, 1999] and (i[:, 3:] == -1).all()
    catalog.close()


@needs_milvus
def test_milvus_follows_the_catalog_change_log_and_rebuilds_when_it_cannot(tmp_path):
    from mbm.scale.milvus import MilvusIndex

    vectors = clustered(1500, 32, seed=5)
    catalog = synthetic_catalog(tmp_path / "catalog.sqlite", vectors)
    index = milvus_index(tmp_path, catalog, "FLAT")
    assert index.sync(catalog) == "rebuilt"
    assert index.sync(catalog) == "current"
    catalog.remove_paths([f"/v/{i:06d}.jpg" for i in range(0, 1500, 3)])  # 500 gone
    add_vectors(catalog, clustered(200, 32, seed=6), start=5000)
    assert index.sync(catalog) == "caught up"
    assert index.ntotal == catalog.count() == 1200
    queries = clustered(30, 32, seed=7)
    want = build_from_catalog(catalog).search(queries, 10)[1]
    assert overlap(index.search(queries, 10)[1], want) == 1.0
    assert MilvusIndex(index.settings).state == catalog.state()  # the state is kept in Milvus, not in this object

    before = index.state
    add_vectors(catalog, clustered(10, 32, seed=8), start=9000)
    catalog.prune_changes(catalog.generation())  # the log no longer reaches back to what Milvus holds
    assert index.sync(catalog) == "rebuilt" and index.state != before
    assert index.ntotal == 1210
    assert overlap(index.search(queries, 10)[1], build_from_catalog(catalog).search(queries, 10)[1]) == 1.0
    names = index.client.list_collections()
    assert len([n for n in names if n.startswith(index.settings.collection)]) == 1  # the old copy is dropped
    catalog.close()


@needs_milvus
def test_collection_on_milvus_searches_like_faiss_end_to_end(tmp_path, tiny_encoder):
    photos = tmp_path / "photos"
    make_images(photos, 30)
    uri = tmp_path / "vectors.db"
    with Engine.open(tmp_path / "faiss", model="mbm-tiny", encoder=tiny_encoder) as plain:
        plain.index([photos])
        query = plain.item_vector(4)
        want = [(h.path, h.score) for h in plain.search(query, k=8)]
        want_in = [h.path for h in plain.search(query, k=5, under=str(photos / "img0001.png"))]
    with Engine.open(tmp_path / "milvus", model="mbm-tiny", encoder=tiny_encoder) as eng:
        eng.index([photos], backend="milvus", uri=str(uri))
        info = eng.info()
        assert info.index["backend"] == "milvus" and info.index["milvus"]["uri"] == str(uri)
        got = [(h.path, h.score) for h in eng.search(query, k=8)]
        assert [p for p, _ in got] == [p for p, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4)
        assert [h.path for h in eng.search(query, k=5, under=str(photos / "img0001.png"))] == want_in
        assert type(eng.searcher().vectors).__name__ == "MilvusIndex"
        assert read_stamp(eng.folder) is None and not list(eng.folder.glob("vectors*"))  # no FAISS index built
        assert info.index_type == "not built"

        (photos / "img0003.png").unlink()  # the next run (no --backend: the recorded one stays) syncs the removal
        report = eng.index([photos])
        assert report.removed == 1
        paths = [h.path for h in eng.search(query, k=30)]
        assert len(paths) == 29 and str(photos / "img0003.png") not in paths
        with read_snapshot(eng.catalog()):
            assert eng.searcher().vectors.state == eng.catalog().state()
        (photos / "img0004.png").unlink()
        report = eng.check(fix=True)  # the fix syncs Milvus; the FAISS files are not checked nor built
        assert [p.kind for p in report.problems] == ["missing"] and report.problems[0].fixed
        assert read_stamp(eng.folder) is None and eng.catalog().changed_since(0) is None  # the log is pruned
        assert str(photos / "img0004.png") not in [h.path for h in eng.search(query, k=30)]


def test_backend_arguments_fail_before_any_work(tmp_path, tiny_encoder):
    photos = tmp_path / "photos"
    make_images(photos, 2)
    eng = Engine.open(tmp_path / "store", model="mbm-tiny", encoder=tiny_encoder)
    with pytest.raises(UsageError, match="--backend 'qdrant' is not known"):
        eng.index([photos], backend="qdrant")
    with pytest.raises(UsageError, match="give it with --backend milvus"):
        eng.index([photos], uri="http://localhost:19530")
    with pytest.raises(UsageError, match="ending in .db"):
        eng.index([photos], backend="milvus", uri="vectors.sqlite")
    with pytest.raises(UsageError, match="needs --uri"):  # a new collection: nowhere to put the vectors
        eng.index([photos], backend="milvus")
    assert not eng.exists


@needs_milvus
def test_cli_index_on_milvus_then_search_from_another_process(tmp_path):
    from test_cli import mbm

    photos = tmp_path / "photos"
    paths = make_images(photos, 6)
    store, uri = tmp_path / "store", tmp_path / "milvus.db"
    bad = mbm("index", str(photos), "-m", "mbm-tiny", "--uri", "x.sqlite", store=store, check=False)
    assert bad.returncode == 2 and "--backend milvus" in bad.stderr
    first = mbm("index", str(photos), "-m", "mbm-tiny", "--backend", "milvus", "--uri", str(uri), "--json", store=store)
    assert json.loads(first.stdout)["indexed"] == 6
    out = mbm(
        "search", "--image", str(paths[2]), "--json", "-k", "3", store=store
    )  # milvus-lite: one process at a time
    hits = json.loads(out.stdout)["hits"]
    assert hits[0]["path"] == str(paths[2]) and hits[0]["score"] > 0.999 and len(hits) == 3
    info = json.loads(mbm("info", "--json", store=store).stdout)["collections"][0]
    assert info["index"]["backend"] == "milvus" and info["index"]["milvus"]["uri"] == str(uri)
