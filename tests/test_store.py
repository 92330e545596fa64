"""Catalog migrations and the FAISS cache: freshness, corruption, filtered search vs exact."""

import numpy as np
import pytest

from mbm.errors import CatalogError
from mbm.store.catalog import Catalog, read_snapshot
from mbm.store.lock import CollectionLock
from mbm.store.vectors import VectorIndex, index_file_name, open_vectors


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, dim))
    x = centers[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _catalog_with(tmp_path, vecs: np.ndarray) -> Catalog:
    cat = Catalog.open(tmp_path / "c.sqlite", create=True)
    cat.set_meta(dim=vecs.shape[1], dtype="float32", kind="image")
    rows = [{"path": f"/p/{i // 50}/{i}.jpg", "size": 1, "mtime_ns": 1, "hash": f"h{i}"} for i in range(len(vecs))]
    cat.add_items(rows, [v.tobytes() for v in vecs])
    return cat


def test_migrations_are_recorded_and_newer_catalogs_refused(tmp_path):
    cat = Catalog.open(tmp_path / "c.sqlite", create=True)
    assert [r[0] for r in cat.conn.execute("SELECT name FROM _migrations")] == [
        "001_initial",
        "002_identity_and_changes",
        "003_item_tokens",
        "004_tags_and_item_text",
    ]
    cat.conn.execute("INSERT INTO _migrations VALUES ('999_future', 'x')")
    cat.close()
    with pytest.raises(CatalogError, match="newer mbm"):
        Catalog.open(tmp_path / "c.sqlite")


def test_vectors_saved_loaded_and_rebuilt_when_stale_or_corrupt(tmp_path):
    vecs = _clustered(300, 16)
    cat = _catalog_with(tmp_path, vecs)
    first = open_vectors(cat, tmp_path, CollectionLock(tmp_path))
    assert first.ntotal == 300
    loaded = VectorIndex.load(tmp_path, cat.catalog_id)
    assert loaded is not None and loaded.state == cat.state()
    cat.add_items([{"path": "/p/new.jpg", "size": 1, "mtime_ns": 1, "hash": "new"}], [vecs[0].tobytes()])
    stale = VectorIndex.load(tmp_path, cat.catalog_id)
    assert stale is not None and stale.state != cat.state()  # older generation: caught up, not served as is
    assert open_vectors(cat, tmp_path, CollectionLock(tmp_path)).ntotal == 301
    (tmp_path / index_file_name(cat.state())).write_bytes(b"garbage" * 100)
    assert VectorIndex.load(tmp_path, cat.catalog_id) is None  # corrupt
    assert open_vectors(cat, tmp_path).ntotal == 301


def test_flat_and_filtered_search_equal_brute_force(tmp_path):
    vecs = _clustered(500, 32)
    cat = _catalog_with(tmp_path, vecs)
    index = open_vectors(cat, tmp_path)
    queries = _clustered(7, 32, seed=1)
    scores, ids = index.search(queries, 10)
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10] + 1  # item ids start at 1
    np.testing.assert_array_equal(ids, exact)
    allowed = cat.ids_under("/p/3")
    assert len(allowed) == 50
    _, fids = index.search(queries, 5, allowed)
    sub = allowed[np.argsort(-(queries @ vecs[allowed - 1].T), axis=1)[:, :5]]
    np.testing.assert_array_equal(fids, sub)


def test_reader_sees_consistent_snapshot_while_writer_commits(tmp_path):
    vecs = _clustered(10, 8)
    cat = _catalog_with(tmp_path, vecs)
    reader = Catalog.open(tmp_path / "c.sqlite")
    with read_snapshot(reader):
        before = reader.count()
        cat.add_items([{"path": "/x.jpg", "size": 1, "mtime_ns": 1, "hash": "x"}], [vecs[0].tobytes()])
        assert reader.count() == before  # WAL: no "database is locked", no torn read
    assert reader.count() == before + 1


def test_unreadable_catalog_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    for readonly in (False, True):
        with pytest.raises(CatalogError, match="is damaged") as info:
            Catalog.open(bad, readonly=readonly)
        assert "move it away" not in str(info.value)


def test_opening_the_library_does_not_import_pandas_and_pandas_still_imports():
    import subprocess
    import sys

    code = (
        "import sys, importlib.util, mbm.engine; "
        "print('pandas' in sys.modules, importlib.util.find_spec('pandas') is not None); "
        "import sqlite_utils; print(sqlite_utils.Database(memory=True).execute('select 1').fetchone()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and out[2] == "1"
    if out[1] == "True":  # where pandas is installed, it is still there for whoever needs it
        subprocess.run([sys.executable, "-c", "import mbm.engine, pandas; pandas.DataFrame()"], check=True)
