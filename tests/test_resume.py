"""Kill -9 in the middle of an index run, then resume: nothing lost, nothing twice."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
from conftest import make_images


def _count(db) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


def _index_command(photos, store, batch_size: int) -> list[str]:
    """`mbm index` of ``photos`` into ``store`` with the tiny model, one worker, ``--quiet`` last."""
    return [
        sys.executable,
        "-c",
        "from mbm.cli import main; main()",
        "index",
        str(photos),
        "--store",
        str(store),
        "-m",
        "mbm-tiny",
        "--batch-size",
        str(batch_size),
        "--workers",
        "1",
        "--quiet",
    ]


def test_kill_mid_run_then_resume(tmp_path):
    photos = tmp_path / "photos"
    paths = make_images(photos, 300)
    store = tmp_path / "store"
    db = store / "collections" / "default" / "catalog.sqlite"
    cmd = _index_command(photos, store, batch_size=1)
    env = {**os.environ, "MBM_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _count(db) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _count(db)
    assert 0 < killed_at < len(paths), f"kill landed outside the run ({killed_at} rows)"

    done = subprocess.run(cmd[:-1] + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path FROM items").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(r[0] for r in rows) == sorted(str(p) for p in paths)  # every file exactly once

    from mbm.store.catalog import Catalog
    from mbm.store.vectors import VectorIndex

    catalog = Catalog.open(db)
    index = VectorIndex.load(db.parent, catalog.catalog_id)
    assert index is not None and index.ntotal == len(paths) and index.state == catalog.state()
    ids, vecs = next(catalog.read_embeddings())
    stored = np.stack([index.index.reconstruct(int(i)) for i in ids])
    np.testing.assert_allclose(stored, vecs, atol=1e-6)
    assert catalog.integrity_problems() == []


def test_search_while_indexing(tmp_path, tiny_encoder):
    from mbm import Engine

    photos = tmp_path / "photos"
    make_images(photos, 160)
    store = tmp_path / "store"
    db = store / "collections" / "default" / "catalog.sqlite"
    cmd = _index_command(photos, store, batch_size=2)
    proc = subprocess.Popen(cmd, env={**os.environ, "MBM_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _count(db) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    searched = 0
    try:
        while proc.poll() is None and time.time() < deadline:
            with Engine.open(store, encoder=tiny_encoder) as eng:
                hits = eng.search("a red car", k=5)  # never "database is locked"
            assert hits and all(h.path.startswith(str(photos)) for h in hits)
            searched += 1
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0 and searched > 0
