"""ANN indexes: the choice by size and memory, recall against exact search, filtered search that
returns k whenever k match, incremental adds/removes (tombstones for HNSW), retraining, the
float16 row file, and the Engine/CLI options. Data is clustered with a low intrinsic dimension
(like real embeddings): ANN recall on i.i.d. random vectors says nothing."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from mbm.errors import UsageError
from mbm.store import ann, vector_index
from mbm.store.ann import IndexSettings, choose_index, parse_memory
from mbm.store.catalog import Catalog
from mbm.store.lock import CollectionLock
from mbm.store.rows import RowFile
from mbm.store.vectors import VectorIndex, describe, ensure_saved, open_vectors, read_stamp

DIM = 32


def clustered(n: int, dim: int = DIM, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Points of a 16-dim mixture of 40 Gaussians, embedded linearly in ``dim`` dims, plus a little noise."""
    rng = np.random.default_rng(1234)  # the same embedding for every call: one "model"
    proj = rng.normal(size=(16, dim))
    centers = rng.normal(size=(40, 16)) * 2 + shift
    rng = np.random.default_rng(seed)
    z = centers[rng.integers(0, 40, n)] + rng.normal(size=(n, 16))
    x = z @ proj + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalog_of(folder, x: np.ndarray, index_type: str | None = None, **meta) -> Catalog:
    cat = Catalog.open(folder / "c.sqlite", create=True)
    cat.set_meta(dim=x.shape[1], dtype="float32", kind="image", **({"index_type": index_type} if index_type else {}))
    if meta:
        cat.set_meta(**meta)
    add(cat, x, 0)
    return cat


def add(cat: Catalog, x: np.ndarray, start: int, folder: str = "/p") -> None:
    rows = [
        {"path": f"{folder}/{(start + i) // 100}/{start + i}.jpg", "size": 1, "mtime_ns": 1, "hash": f"h{start + i}"}
        for i in range(len(x))
    ]
    cat.add_items(rows, [v.tobytes() for v in x])


def exact_ids(cat: Catalog, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    ids, vecs = next(cat.read_embeddings(batch=10**9))
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vecs = ids[keep], vecs[keep]
    return ids[np.argsort(-(queries @ vecs.T), axis=1)[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


# -- choosing ---------------------------------------------------------------------------------------
def test_choice_follows_size_and_memory_budget():
    big = IndexSettings(max_memory=64 * 2**30)
    assert choose_index(10_000, 512, big).factory == "Flat"
    assert choose_index(1_000_000, 512, big).factory == "HNSW32"
    tight = choose_index(1_000_000, 512, IndexSettings(max_memory=parse_memory("512MB")))
    assert tight.factory == "IVF2048,PQ64" and tight.estimated_bytes <= 512 * 2**20
    assert "re-scored exactly" in tight.reason
    forced = choose_index(100, 512, IndexSettings("IVF4096,PQ32"))
    assert forced.factory == "IVF4096,PQ32" and forced.reason == "forced with --index-type"
    with pytest.raises(UsageError, match=r"--max-memory 1\.0 MB is too small .* raise --max-memory"):
        choose_index(1_000_000, 512, IndexSettings(max_memory=2**20))
    # the estimate of an HNSW graph stays within 1.5x of the raw float32 vectors
    assert ann.estimate_bytes("HNSW32", 10**6, 512) < 1.5 * 4 * 512 * 10**6


def test_sizes_and_factory_strings_are_checked_with_the_fix_named():
    assert parse_memory("2GB") == 2 * 2**30 and parse_memory("512 MiB") == 2**29 and parse_memory("1.5g") == 3 * 2**29
    for bad in ("lots", "2 parsecs", "-1GB", "0"):
        with pytest.raises(UsageError, match="--max-memory .* write it like 2GB"):
            parse_memory(bad)
    with pytest.raises(UsageError, match="'IVF12,Bogus' is not a FAISS factory string"):
        ann.check_factory("IVF12,Bogus", 64)
    with pytest.raises(UsageError, match="leave out IDMap"):
        ann.check_factory("IDMap,Flat", 64)
    assert ann.settings_meta("HNSW16", "auto", 64) == {"index_type": "HNSW16", "max_memory": ""}


# -- recall -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["HNSW32", "IVF64,PQ8", "OPQ8,IVF64,PQ8", "HNSW16_SQ8"])
def test_every_ann_index_is_tuned_to_the_recall_target_and_holds_it_on_new_queries(tmp_path, factory):
    everything = clustered(6200)
    x, held_out = everything[:6000], everything[6000:]
    cat = catalog_of(tmp_path, x, factory)
    index = open_vectors(cat, tmp_path, CollectionLock(tmp_path))
    assert index.kind == factory and index.ntotal == 6000
    assert index.tuning.recall >= ann.TARGET_RECALL and index.tuning.queries == ann.SAMPLE_QUERIES
    assert bool(index.tuning.rescore) == (factory != "HNSW32")  # compressed codes are re-scored exactly
    found = index.search(held_out, 10)[1]
    assert recall(found, exact_ids(cat, held_out, 10)) >= 0.9
    info = describe(tmp_path, cat.catalog_id)
    assert info["type"] == factory and info["recall_at_10"] == index.tuning.recall
    assert info["rows_bytes"] >= 6000 * DIM * 2 and info["memory_bytes"] > 0
    # thoroughness can be turned up per search
    deeper = index.search(held_out, 10, nprobe=64, ef=256)[1]
    assert recall(deeper, exact_ids(cat, held_out, 10)) >= recall(found, exact_ids(cat, held_out, 10)) - 0.01
    with pytest.raises(UsageError, match="--nprobe must be at least 1, not 0"):
        index.search(held_out, 10, nprobe=0)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,PQ8"])
def test_a_k_beyond_what_the_tuned_lists_hold_still_gets_k_results(tmp_path, factory):
    x = clustered(6000)
    cat = catalog_of(tmp_path, x, factory)
    index = open_vectors(cat, tmp_path, CollectionLock(tmp_path))
    assert index.tuning.nprobe * 6000 / 64 < 2500  # the tuned probes alone hold fewer than k vectors
    scores, ids = index.search(x[:3], 2500)
    assert (ids >= 0).all() and all(len(set(row)) == 2500 for row in ids)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall(ids[:, :100], exact_ids(cat, x[:3], 100)) >= 0.95


# -- filtered search ----------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["HNSW32", "IVF64,PQ8", "Flat"])
def test_filtered_search_returns_the_exact_top_k_among_allowed(tmp_path, factory, monkeypatch):
    x = clustered(5000)
    cat = catalog_of(tmp_path, x, factory)
    index = open_vectors(cat, tmp_path)
    queries = clustered(20, seed=7)
    small = cat.ids_under("/p/3")  # 100 items: scored exactly from the rows
    np.testing.assert_array_equal(index.search(queries, 10, small)[1], exact_ids(cat, queries, 10, small))
    few = np.array([5, 17, 4000], np.int64)  # fewer than k match: all of them, then -1
    ids = index.search(queries, 10, few)[1]
    assert (np.sort(ids[:, :3], axis=1) == few).all() and (ids[:, 3:] == -1).all()
    # large allowed sets go through a FAISS selector; a query the ANN leaves short is answered exactly
    monkeypatch.setattr(vector_index, "FILTER_EXACT_MAX", 10)
    odd = np.arange(1, 5001, 2)
    scores, ids = index.search(queries, 10, odd)
    assert (ids % 2 == 1).all() and (ids > 0).all()
    assert recall(ids, exact_ids(cat, queries, 10, odd)) >= 0.9
    rare = np.concatenate([cat.ids_under("/p/7"), cat.ids_under("/p/42")])  # 200 ids in a few IVF lists
    ids = index.search(queries, 10, rare, nprobe=1)[1]
    assert (ids >= 0).all() and np.isin(ids, rare).all()  # k results although one list holds few of them
    assert (index.search(queries, 10, np.array([999_999], np.int64))[1] == -1).all()  # no such item: nothing


# -- incremental ------------------------------------------------------------------------------------
def test_hnsw_takes_adds_removals_and_replacements_with_tombstones(tmp_path):
    x = clustered(3000)
    cat = catalog_of(tmp_path, x, "HNSW32")
    index = open_vectors(cat, tmp_path, CollectionLock(tmp_path))
    add(cat, clustered(200, seed=3), 3000)
    cat.remove_paths([f"/p/0/{i}.jpg" for i in range(100)])  # ids 1..100
    new_look = clustered(10, seed=9)
    cat.add_items(
        [{"path": f"/p/1/{i}.jpg", "size": 1, "mtime_ns": 1, "hash": f"n{i}"} for i in range(100, 110)],
        [v.tobytes() for v in new_look],
    )  # same paths (ids 101..110), new vectors
    assert index.catch_up(cat) and index.state == cat.state()
    assert index.dead == 110 and index.ntotal == cat.count() == 3100
    ids = index.search(x[:100], 10)[1]
    assert not np.isin(ids, np.arange(1, 101)).any()  # removed items never come back
    scores, ids = index.search(new_look, 1)
    assert (ids[:, 0] == np.arange(101, 111)).all() and np.allclose(scores[:, 0], 1.0, atol=1e-3)
    queries = clustered(30, seed=11)
    assert recall(index.search(queries, 10)[1], exact_ids(cat, queries, 10)) >= 0.9
    assert ensure_saved(cat, tmp_path)
    loaded = VectorIndex.load(tmp_path, cat.catalog_id)
    assert loaded is not None and loaded.dead == 110 and loaded.ntotal == 3100
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    # past a fifth of tombstones the index is rebuilt rather than patched
    cat.remove_paths([f"/p/{i // 100}/{i}.jpg" for i in range(200, 1000)])
    assert not loaded.catch_up(cat)
    rebuilt = open_vectors(cat, tmp_path, CollectionLock(tmp_path), loaded)
    assert rebuilt is not loaded and rebuilt.dead == 0 and rebuilt.ntotal == cat.count()


def test_ivf_removes_in_place_and_retrains_when_grown_or_drifted(tmp_path):
    x = clustered(3000)
    cat = catalog_of(tmp_path, x, "IVF32,PQ8")
    index = open_vectors(cat, tmp_path, CollectionLock(tmp_path))
    cat.remove_paths([f"/p/0/{i}.jpg" for i in range(50)])
    add(cat, clustered(500, seed=4), 3000)
    assert index.catch_up(cat) and index.dead == 0 and index.ntotal == cat.count()
    assert not np.isin(index.search(x[:50], 10)[1], np.arange(1, 51)).any()
    add(cat, clustered(1000, seed=5, shift=6.0), 4000, folder="/elsewhere")  # another distribution
    assert not index.catch_up(cat)  # drifted from its centroids
    index = open_vectors(cat, tmp_path, CollectionLock(tmp_path), index)
    add(cat, clustered(4 * cat.count(), seed=6), 10_000)
    assert not index.catch_up(cat)  # grown 4x since training


def test_exact_grows_into_hnsw_and_settings_changes_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_MAX_WORK", 2000 * DIM)
    cat = catalog_of(tmp_path, clustered(1500))
    lock = CollectionLock(tmp_path)
    index = open_vectors(cat, tmp_path, lock)
    assert index.kind == "Flat" and index.rows is None and index.tuning.recall is None
    add(cat, clustered(1500, seed=2), 1500)
    index = open_vectors(cat, tmp_path, lock, index)
    assert index.kind == "HNSW32" and index.tuning.recall >= ann.TARGET_RECALL
    assert read_stamp(tmp_path)["kind"] == "HNSW32"
    cat.set_meta(**ann.settings_meta("IVF16,PQ8", None, DIM))
    assert ensure_saved(cat, tmp_path)  # same generation, new settings: rebuilt
    assert read_stamp(tmp_path)["kind"] == "IVF16,PQ8" and not ensure_saved(cat, tmp_path)


def test_an_index_larger_than_its_budget_is_memory_mapped_and_rebuilt_on_change(tmp_path):
    cat = catalog_of(tmp_path, clustered(3000), "IVF16,Flat", max_memory="4096")
    ensure_saved(cat, tmp_path)
    loaded = VectorIndex.load(tmp_path, cat.catalog_id)
    assert loaded is not None and loaded.mapped
    queries = clustered(5, seed=8)
    assert recall(loaded.search(queries, 10)[1], exact_ids(cat, queries, 10)) >= 0.9
    add(cat, clustered(5, seed=9), 3000)
    assert not loaded.catch_up(cat)  # read-only mapping: a change means a rebuild


# -- the row file -----------------------------------------------------------------------------------
def test_row_file_round_trip_overlay_and_flush(tmp_path):
    x = clustered(50)
    ids = np.arange(1, 51)
    rows = RowFile.write(tmp_path / "r.f16", ids, x)
    np.testing.assert_allclose(rows.get(ids), x, atol=2e-3)
    assert rows.pending == 0 and (tmp_path / "r.f16").stat().st_size == 32 + 51 * DIM * 2
    newer = clustered(3, seed=5)
    rows.put(np.array([7, 60, 7]), np.stack([newer[0], newer[1], newer[2]]))  # the last value of an id wins
    got = rows.get(np.array([7, 60, 8]))
    np.testing.assert_allclose(got, np.stack([newer[2], newer[1], x[7]]), atol=2e-3)
    rows.flush(tmp_path / "r.f16")
    again = RowFile.open(tmp_path / "r.f16", DIM)
    np.testing.assert_allclose(again.get(np.array([7, 60])), newer[[2, 1]], atol=2e-3)
    with pytest.raises(ValueError, match="not a row file of 16 dimensions"):
        RowFile.open(tmp_path / "r.f16", 16)


def test_a_missing_row_file_means_a_rebuild_never_wrong_scores(tmp_path):
    cat = catalog_of(tmp_path, clustered(2000), "IVF16,PQ8")
    ensure_saved(cat, tmp_path)
    (tmp_path / read_stamp(tmp_path)["rows_file"]).unlink()
    assert VectorIndex.load(tmp_path, cat.catalog_id) is None
    index = open_vectors(cat, tmp_path, CollectionLock(tmp_path))
    assert index.ntotal == 2000 and (tmp_path / read_stamp(tmp_path)["rows_file"]).exists()


def test_untrainable_forced_type_names_the_fix(tmp_path):
    cat = catalog_of(tmp_path, clustered(50), "IVF4096,PQ8")
    with pytest.raises(UsageError, match="cannot be trained on 50 vectors .* --index-type"):
        open_vectors(cat, tmp_path)


# -- through the Engine and the CLI -------------------------------------------------------------------
def test_engine_index_type_search_settings_and_info(tmp_path, engine_factory):
    from mbm.cli import app

    photos = tmp_path / "photos"
    paths = make_images(photos, 40)
    eng = engine_factory("ann")
    eng.index([photos], index_type="HNSW16", max_memory="1GB")
    info = eng.info()
    assert info.index["type"] == "HNSW16" and info.index["settings"] == {"index_type": "HNSW16", "max_memory": 2**30}
    assert info.index["recall_at_10"] >= ann.TARGET_RECALL
    hits = eng.search(paths[3], k=3, ef=64)
    assert hits[0].path == str(paths[3])
    with pytest.raises(UsageError, match="--ef must be at least 1"):
        eng.search(paths[3], k=3, ef=0)
    with pytest.raises(UsageError, match="not a FAISS factory string"):
        eng.index([photos], index_type="HNSW16,Bogus")
    result = CliRunner().invoke(app, ["info", "--json", "--store", str(eng.store)])
    doc = json.loads(result.output)
    assert doc["collections"][0]["index"]["type"] == "HNSW16"
    table = CliRunner().invoke(app, ["info", "--store", str(eng.store)]).output
    assert "index: HNSW16 (efSearch=" in table and "recall@10" in table
    eng.index([photos], index_type="auto")
    assert eng.info().index["type"] == "Flat"


def test_an_index_type_change_reaches_a_warm_engine_without_any_file_change(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 30)
    writer = engine_factory("warm")
    writer.index([photos])
    server = type(writer)(writer.store, "warm", encoder=writer.encoder())  # a long-lived reader, as `mbm serve`
    assert server.search(paths[0], k=1)[0].path == str(paths[0])
    assert server._vectors.kind == "Flat"
    before = server.generation()
    writer.index([photos], index_type="HNSW16")  # no file changed: only the settings did
    assert server.generation()[1] == before[1] + 1
    assert server.search(paths[1], k=1)[0].path == str(paths[1])
    assert server._vectors.kind == "HNSW16"
    writer.index([photos], index_type="HNSW16")  # the same settings again: nothing changes
    writer.index([photos])  # settings not given: kept as recorded
    assert server.generation()[1] == before[1] + 1
    writer.index([photos], index_type="auto")
    assert server.search(paths[2], k=1)[0].path == str(paths[2]) and server._vectors.kind == "Flat"


def test_faiss_threads_and_selectors_need_no_global_state():
    # per-call parameters: searching with one nprobe never changes the index's own
    x = clustered(2000)
    index = ann.new_index("IVF16,Flat", DIM)
    ann.train(index, x)
    index.add_with_ids(x, np.arange(2000))
    before = faiss.extract_index_ivf(index).nprobe
    index.search(x[:2], 5, params=ann.search_params(index, nprobe=8))
    assert faiss.extract_index_ivf(index).nprobe == before


@pytest.mark.parametrize("nq", [5, ann.BATCHED_EXACT + 20])  # numpy's path, FAISS's
def test_exact_topk_skips_rows_without_copying_the_rest(nq):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((70_000, 8)).astype(np.float32)  # two chunks
    ids = np.arange(100, 70_100, dtype=np.int64)
    q = rng.standard_normal((nq, 8)).astype(np.float32)
    skip = np.zeros(len(x), bool)
    skip[rng.choice(len(x), 30_000, replace=False)] = True
    got_s, got_i = ann.exact_topk(q, x, ids, 10, skip=skip)
    want_s, want_i = ann.exact_topk(q, x[~skip], ids[~skip], 10)
    assert np.array_equal(got_i, want_i) and np.allclose(got_s, want_s)
    scores = q @ x[~skip].T  # brute force, every row scored
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert np.array_equal(got_i, ids[~skip][top]) and np.allclose(got_s, np.take_along_axis(scores, top, 1), atol=1e-5)
    few = np.ones(len(x), bool)
    few[:3] = False  # fewer rows than k left: padded with -1, as for a small collection
    _, padded = ann.exact_topk(q, x, ids, 10, skip=few)
    assert (padded[:, 3:] == -1).all() and set(padded[0, :3]) == {100, 101, 102}


def test_row_file_put_of_a_whole_build_and_later_changes():
    rows = RowFile(4)
    ids = np.array([3, 5, 9], np.int64)
    x = np.eye(4, dtype=np.float32)[:3]
    rows.put(ids, x)  # sorted, once each: the build's fast path
    rows.put(np.array([5]), np.eye(4, dtype=np.float32)[3:])  # a later change wins
    rows.put(np.array([9, 9]), np.stack([np.eye(4)[0], np.eye(4)[1]]).astype(np.float32))  # the last of a repeat wins
    assert np.allclose(rows.get(np.array([3, 5, 9])), np.eye(4)[[0, 3, 1]])
