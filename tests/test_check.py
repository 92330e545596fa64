"""`mbm check`: problems are found and named; `--fix` repairs only what loses no data."""

from __future__ import annotations

import numpy as np
from conftest import make_images

from mbm.store.catalog import Catalog
from mbm.store.vectors import STAMP_FILE, read_stamp


def test_healthy_collection_is_ok(tmp_path, engine_factory):
    make_images(tmp_path / "photos", 3)
    eng = engine_factory()
    eng.index([tmp_path / "photos"])
    report = eng.check()
    assert report.ok and report.problems == [] and report.items == 3


def test_problems_found_then_fixed_without_touching_unmounted_folders(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos / "here", 4)
    make_images(photos / "drive", 2, start=10)
    eng = engine_factory()
    eng.index([photos])
    eng.close()
    paths[0].unlink()  # gone from a folder that still exists
    drive = photos / "drive"
    drive.rename(tmp_path / "elsewhere")  # a whole folder missing: maybe an unmounted drive
    cat = Catalog.open(eng.folder / "catalog.sqlite")
    cat.conn.execute("UPDATE items SET embedding = x'0000' WHERE path = ?", (str(paths[1]),))
    cat.close()
    (eng.folder / "vectors-0000-1.faiss").write_bytes(b"old")
    (eng.folder / ".vectors.json.dead.tmp").write_text("{}")
    report = eng.check()
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["embedding", "missing", "orphan", "temp", "unmounted"], report.problems
    assert not report.ok
    fixed = eng.check(fix=True)
    assert [p.kind for p in fixed.problems if not p.fixed] == ["unmounted"]
    assert fixed.items == 6 - 2  # the missing file's row and the damaged row; the unmounted rows stay
    assert not (eng.folder / "vectors-0000-1.faiss").exists() and not (eng.folder / ".vectors.json.dead.tmp").exists()
    stamp = read_stamp(eng.folder)
    assert stamp["count"] == 4 and (eng.folder / STAMP_FILE).exists()
    again = eng.check()
    assert [p.kind for p in again.problems] == ["unmounted"]
    hits = eng.search(np.asarray(eng.encoder().encode_texts(["x"])[0]), k=10)
    assert len(hits) == 4


def test_check_command_reports_and_exits_nonzero_until_fixed(tmp_path):
    import os
    import subprocess
    import sys

    photos = tmp_path / "photos"
    paths = make_images(photos, 3)
    cli = [sys.executable, "-c", "from mbm.cli import main; main()"]
    env = {**os.environ, "MBM_OFFLINE": "1"}
    store = ["--store", str(tmp_path / "store")]
    assert subprocess.run([*cli, "index", str(photos), *store, "-m", "mbm-tiny", "-q"], env=env).returncode == 0
    paths[0].unlink()
    found = subprocess.run([*cli, "check", *store], env=env, capture_output=True, text=True)
    assert found.returncode == 1 and "missing" in found.stdout and "fixable with --fix" in found.stdout
    fixed = subprocess.run([*cli, "check", *store, "--fix"], env=env, capture_output=True, text=True)
    assert fixed.returncode == 0 and "[fixed] missing" in fixed.stdout
    again = subprocess.run([*cli, "check", *store, "--json"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and '"ok": true' in again.stdout
