"""Collections shared between runs and processes: the vector cache knows its catalog, one writer
at a time, searches on read-only stores, and an Engine that stays warm."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import make_images

from mbm.errors import CatalogError, CollectionError
from mbm.models.factory import legacy_fingerprint_of
from mbm.store import connection
from mbm.store.catalog import Catalog
from mbm.store.lock import CollectionBusy, CollectionLock
from mbm.store.vectors import STAMP_FILE, VectorIndex, build_from_catalog, read_stamp, save_cache

CLI = [sys.executable, "-c", "from mbm.cli import main; main()"]


def _env() -> dict[str, str]:
    return {**os.environ, "MBM_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _vec_rows(n: int, dim: int, seed: int, prefix: str = "/p") -> tuple[list[dict], list[bytes]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [{"path": f"{prefix}/{seed}-{i}.jpg", "size": 1, "mtime_ns": 1, "hash": f"{seed}-{i}"} for i in range(n)]
    return rows, [v.tobytes() for v in x]


def _new_catalog(path: Path, dim: int = 16) -> Catalog:
    cat = Catalog.open(path, create=True)
    cat.set_meta(dim=dim, dtype="float32", kind="image")
    return cat


def _exact(cat: Catalog, queries: np.ndarray, k: int) -> np.ndarray:
    return build_from_catalog(cat).search(queries, k)[1]


def test_replaced_catalog_never_serves_the_old_vectors(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    first = make_images(photos / "a", 6)
    eng = engine_factory()
    eng.index([photos / "a"])
    eng.close()
    # the user replaces catalog.sqlite and indexes the same number of other pictures
    (eng.folder / "catalog.sqlite").unlink()
    others = make_images(photos / "b", 6, start=100)
    eng = engine_factory()
    eng.index([photos / "b"])
    hits = eng.search(others[2], k=1)
    assert hits[0].path == str(others[2]) and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(not h.path.startswith(str(photos / "a")) for h in eng.search(first[0], k=6))


def test_a_stamp_names_its_own_file_and_an_older_save_never_overwrites_a_newer(tmp_path):
    cat = _new_catalog(tmp_path / "c.sqlite")
    cat.add_items(*_vec_rows(50, 16, 1))
    old = build_from_catalog(cat)
    cat.add_items(*_vec_rows(30, 16, 2))
    new = build_from_catalog(cat)
    lock = CollectionLock(tmp_path)
    assert save_cache(new, tmp_path, lock)
    assert not save_cache(old, tmp_path, lock)  # a slow writer of an older generation loses
    loaded = VectorIndex.load(tmp_path, cat.catalog_id)
    assert loaded is not None and loaded.state == cat.state() and loaded.ntotal == 80
    # even a stamp rewritten by hand to an older generation cannot describe the newer file
    stamp = read_stamp(tmp_path)
    (tmp_path / STAMP_FILE).write_text(stamp_text := __import__("json").dumps({**stamp, "generation": old.generation}))
    assert stamp_text and VectorIndex.load(tmp_path, cat.catalog_id) is None


def test_incremental_catch_up_equals_a_rebuild(tmp_path):
    cat = _new_catalog(tmp_path / "c.sqlite")
    cat.add_items(*_vec_rows(200, 16, 1))
    index = build_from_catalog(cat)
    rows, blobs = _vec_rows(40, 16, 2)
    cat.add_items(rows, blobs)
    cat.remove_paths([f"/p/1-{i}.jpg" for i in range(0, 200, 3)])
    replaced, _ = _vec_rows(10, 16, 1)
    cat.add_items(replaced, _vec_rows(10, 16, 9)[1])  # same paths, new content: ids kept, vectors change
    assert index.catch_up(cat) and index.state == cat.state()
    queries = np.stack([np.frombuffer(b, np.float32) for b in _vec_rows(10, 16, 9)[1]])
    np.testing.assert_array_equal(index.search(queries, 10)[1], _exact(cat, queries, 10))


def test_empty_write_keeps_the_generation(tmp_path):
    cat = _new_catalog(tmp_path / "c.sqlite")
    cat.add_items(*_vec_rows(5, 16, 1))
    before = cat.state()
    cat.add_items([], [])
    cat.remove_paths(["/not/indexed.jpg"])
    cat.mark_empty("/notes/empty.txt", 0, 1)
    assert cat.state() == before
    assert cat.file_states()["/notes/empty.txt"].ids == ()


def test_faiss_write_error_never_fails_a_search_and_leaves_no_temp_files(tmp_path, engine_factory, monkeypatch):
    photos = tmp_path / "photos"
    paths = make_images(photos, 5)
    eng = engine_factory()
    eng.index([photos])
    for f in eng.folder.glob("vectors*"):
        f.unlink()

    def full_disk(index, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Error: 'ret == (size)' failed: write error (No space left on device)")

    monkeypatch.setattr(faiss, "write_index", full_disk)
    eng.close()
    hits = engine_factory().search(paths[1], k=1)
    assert hits[0].path == str(paths[1])
    assert not [p.name for p in eng.folder.iterdir() if p.name.endswith(".tmp")]


def test_unchanged_rerun_and_warm_searches_read_the_index_file_once(tmp_path, engine_factory, monkeypatch):
    photos = tmp_path / "photos"
    paths = make_images(photos, 8)
    eng = engine_factory()
    eng.index([photos])
    reads = []
    real_read = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda *a: reads.append(a) or real_read(*a))
    eng.index([photos])
    assert reads == []  # an unchanged re-run judges the saved index by its stamp alone
    for p in paths[:4]:
        assert eng.search(p, k=1)[0].path == str(p)
    assert len(reads) == 1
    # another process adds pictures: the warm index catches up from the change log, no file read
    new = make_images(photos, 2, start=50)
    engine_factory().index([photos])
    reads.clear()
    assert eng.search(new[1], k=1)[0].path == str(new[1])
    assert reads == []


def test_search_during_an_index_run_does_not_rewrite_the_cache(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    make_images(photos, 4)
    eng = engine_factory()
    eng.index([photos])
    folder = eng.folder
    before = read_stamp(folder)
    cat = Catalog.open(folder / "catalog.sqlite")
    dim = int(cat.meta()["dim"])
    rows, _ = _vec_rows(3, dim, 7, prefix=str(photos))
    vec = eng.encoder().encode_texts(["x"])[0].astype(np.float16).tobytes()
    with CollectionLock(folder).hold():  # an index run in progress elsewhere
        cat.add_items(rows, [vec] * 3)
        searcher = engine_factory()
        hits = searcher.search(np.frombuffer(vec, np.float16).astype(np.float32), k=3)
        assert {h.path for h in hits} == {r["path"] for r in rows}
        assert read_stamp(folder) == before  # no rebuild written while the run holds the lock
    cat.close()


def test_second_index_run_waits_or_refuses(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    make_images(photos, 3)
    eng = engine_factory()
    eng.index([photos])
    told = []
    with CollectionLock(eng.folder).hold():
        with pytest.raises(CollectionBusy, match="another `mbm index` run"):
            engine_factory().index([photos], wait=False, notify=told.append)
    assert told == []
    assert engine_factory().index([photos], wait=False).unchanged == 3


def test_concurrent_first_runs_never_mix_models(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, 6)
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [*CLI, "index", str(photos), "--store", str(store), "-m", spec, "--quiet"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in ("mbm-tiny", "mbm-small")
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] == 1, results
    assert "was indexed with model" in next(err for rc, err in results if rc == 1)
    cat = Catalog.open(store / "collections" / "default" / "catalog.sqlite", readonly=True)
    dims = {len(r[0]) for r in cat.conn.execute("SELECT embedding FROM items")}
    assert len(dims) == 1 and cat.count() == 6


def _can_mount_readonly() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount --bind / /mnt 2>/dev/null || mount --bind /tmp /tmp"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_readonly(), reason="needs unshare with user and mount namespaces")
def test_read_only_store_can_be_searched_and_listed(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 4)
    eng = engine_factory()
    eng.index([photos])
    eng.close()
    store = tmp_path / "store"
    for f in eng.folder.glob("vectors*"):  # even the derived cache is missing: rebuilt in memory
        f.unlink()
    listing = sorted(str(p) for p in store.rglob("*"))
    script = (
        f"mount --bind {store} {store} && mount -o remount,bind,ro {store} && "
        f"{' '.join(CLI[:2])} '{CLI[2]}' search --image {paths[2]} --store {store} --paths -k 1 && "
        f"{' '.join(CLI[:2])} '{CLI[2]}' info --store {store} && "
        f"{' '.join(CLI[:2])} '{CLI[2]}' index {photos} --store {store} -m mbm-tiny --quiet; echo index-rc=$?"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == str(paths[2])
    assert "default" in done.stdout and "index-rc=1" in done.stdout
    assert "read-only" in done.stderr and "Traceback" not in done.stderr
    assert sorted(str(p) for p in store.rglob("*")) == listing  # nothing written


def test_locked_catalog_is_told_apart(tmp_path, monkeypatch):
    cat = _new_catalog(tmp_path / "c.sqlite")
    cat.close()
    holder = __import__("sqlite3").connect(tmp_path / "c.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(connection, "BUSY_TIMEOUT_MS", 50)
    try:
        with pytest.raises(CatalogError, match="locked by another process"):
            Catalog.open(tmp_path / "c.sqlite").add_items(*_vec_rows(1, 16, 1))
    finally:
        holder.execute("ROLLBACK")


def test_text_file_beside_a_folder_is_refused_not_guessed(tmp_path, engine_factory):
    notes = tmp_path / "notes.txt"
    notes.write_text("a red car\n")
    photos = tmp_path / "photos"
    make_images(photos, 2)
    with pytest.raises(Exception, match="--texts") as info:
        engine_factory().index([notes, photos])
    assert not isinstance(info.value, CollectionError) or "separate" in str(info.value)
    (photos / "captions.txt").write_text("a blue boat\n")
    report = engine_factory("t").index([photos], texts=True)
    assert report.indexed == 1 and report.total_items == 1


def test_collection_fingerprinted_by_an_older_mbm_keeps_working_and_is_upgraded(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 3)
    eng = engine_factory()
    eng.index([photos])
    full = eng.encoder().fingerprint
    legacy = legacy_fingerprint_of(eng.encoder())
    assert legacy and legacy != full
    Catalog.open(eng.folder / "catalog.sqlite").set_meta(fingerprint=legacy)
    eng.close()
    assert engine_factory().search(paths[0], k=1)[0].path == str(paths[0])
    make_images(photos, 1, start=9)  # the next run that loads the model records the full fingerprint
    engine_factory().index([photos])
    assert Catalog.open(eng.folder / "catalog.sqlite", readonly=True).meta()["fingerprint"] == full


def test_one_engine_serves_threads_while_another_engine_indexes(tmp_path, engine_factory):
    import threading

    photos = tmp_path / "photos"
    paths = make_images(photos, 6)
    eng = engine_factory()
    eng.index([photos])
    errors: list[BaseException] = []

    def searches() -> None:
        try:
            for p in paths * 3:
                assert eng.search(p, k=1)[0].path == str(p)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=searches) for _ in range(4)]
    for t in threads:
        t.start()
    writer = engine_factory()
    for start in (20, 30, 40):
        make_images(photos, 2, start=start)
        writer.index([photos])
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert eng.search(photos / "img0041.png", k=1)[0].path == str(photos / "img0041.png")


def test_an_index_run_removes_temp_files_of_a_crashed_write(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    make_images(photos, 2)
    eng = engine_factory()
    eng.index([photos])
    (eng.folder / ".vectors-x-3.faiss.1234abcd.tmp").write_bytes(b"half a file")
    (eng.folder / ".query_encoder.5678abcd.tmp").mkdir()
    eng.index([photos])
    assert not [p for p in eng.folder.iterdir() if p.name.endswith(".tmp")]
