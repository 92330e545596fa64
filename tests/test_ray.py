"""Bulk embedding on Ray Data (``--engine ray``) on a local Ray instance: the same collection as a local run,
resumable after a killed job. Skipped when ray is not installed (the ``scale`` extra)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_images

from mbm import Engine
from mbm.errors import MbmError, MissingExtra, UsageError
from mbm.scale.ray_index import _connect
from mbm.store.catalog import read_snapshot

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'mbm[scale]')"
)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance in a folder of its own. Ray gives its node 30 s to register and sometimes misses that
    on a loaded machine (the raylet never writes a log line): the start is tried three times before the module is
    skipped for it, which cannot hide an mbm fault, since nothing of mbm runs until Ray is up."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it (107-byte cap)
    failures = []
    for _ in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
            break
        except Exception as e:  # "The current node timed out during startup", a bare Exception
            failures.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
            ray.shutdown()
    else:
        shutil.rmtree(temp_dir, ignore_errors=True)
        pytest.skip(f"a local Ray instance did not start on this machine, three times: {failures[-1]}")
    if failures:  # in the test report's warnings, so that a flaky start stays visible
        warnings.warn(f"Ray started on try {len(failures) + 1} of 3, after: {failures[-1]}", stacklevel=1)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def snapshot(eng: Engine) -> dict[str, tuple]:
    """path -> (item id, hash, size, width, height, float32 embedding) of every item."""
    catalog = eng.catalog()
    with read_snapshot(catalog):
        states = catalog.file_states()
        ids = [i for s in states.values() for i in s.ids]
        rows = catalog.rows(ids)
        got, vecs = catalog.embeddings_of(ids)
    vec_of = dict(zip(got.tolist(), vecs))
    return {r["path"]: (r["id"], r["hash"], r["size"], r["width"], r["height"], vec_of[r["id"]]) for r in rows.values()}


def assert_same_items(a: dict[str, tuple], b: dict[str, tuple], *, same_ids: bool = True) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        (ia, *fa, va), (ib, *fb, vb) = a[path], b[path]
        assert fa == fb, path
        assert not same_ids or ia == ib, path
        np.testing.assert_allclose(va, vb, atol=2e-3)  # both stored as float16


@needs_ray
def test_ray_index_equals_local_run(tmp_path, tiny_encoder, ray_local):
    photos = tmp_path / "photos"
    make_images(photos, 20)
    shutil.copy(photos / "img0003.png", photos / "copy.png")  # a copy: embedded once, reused
    (photos / "bad.png").write_bytes(b"not a png")  # skipped with its reason, like a local run

    with Engine.open(tmp_path / "local", model="mbm-tiny", encoder=tiny_encoder) as local:
        want = local.index([photos], batch_size=4)
        expected = snapshot(local)
        query = local.item_vector(expected[str(photos / "img0005.png")][0])
        want_hits = [h.path for h in local.search(query, k=5)]
    with Engine.open(tmp_path / "ray", model="mbm-tiny", encoder=tiny_encoder) as eng:
        got = eng.index([photos], batch_size=4, engine="ray", ray_workers=2)
        assert (got.indexed, got.reused, got.unchanged) == (want.indexed, want.reused, 0) == (20, 1, 0)
        assert got.skipped == want.skipped and len(got.skipped) == 1
        assert "ray" in got.seconds
        assert_same_items(snapshot(eng), expected)  # same rows, same ids (scan order kept), same vectors
        assert [h.path for h in eng.search(query, k=5)] == want_hits

        again = eng.index([photos], batch_size=4, engine="ray")  # only bad.png is left: no pool is started
        assert (again.indexed, again.unchanged, "ray" in again.seconds) == (0, 21, False)


@needs_ray
def test_killed_ray_job_resumes_without_losing_or_redoing_work(tmp_path, tiny_encoder, ray_local):
    photos = tmp_path / "photos"
    make_images(photos, 24)

    class Killed(Exception):
        pass

    def kill_after_first_commit(done: int, total: int) -> None:
        if done > 0:
            raise Killed  # the driver dies right after a chunk is committed

    with Engine.open(tmp_path / "ray", model="mbm-tiny", encoder=tiny_encoder) as eng:
        with pytest.raises(Killed):
            eng.index([photos], batch_size=2, engine="ray", ray_workers=2, progress=kill_after_first_commit)
        committed = eng.catalog().count()
        assert committed == 16  # one transaction: 8 batches of 2
        (photos / "img0000.png").rename(photos / "moved.png")  # a committed file moves before the re-run

        report = eng.index([photos], batch_size=2, engine="ray", ray_workers=2)
        assert (report.indexed, report.unchanged, report.moved, report.removed) == (24 - committed, committed - 1, 1, 1)
        resumed = snapshot(eng)
    with Engine.open(tmp_path / "local", model="mbm-tiny", encoder=tiny_encoder) as local:
        local.index([photos], batch_size=2)
        assert_same_items(resumed, snapshot(local), same_ids=False)


def test_engine_and_extra_checks_fail_before_any_work(tmp_path, tiny_encoder, monkeypatch):
    photos = tmp_path / "photos"
    make_images(photos, 2)
    eng = Engine.open(tmp_path / "store", model="mbm-tiny", encoder=tiny_encoder)
    with pytest.raises(UsageError, match="--engine 'spark' is not known"):
        eng.index([photos], engine="spark")
    (tmp_path / "notes.txt").write_text("a line\n")
    with pytest.raises(UsageError, match="text collection without --engine ray"):
        eng.index([tmp_path / "notes.txt"], engine="ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the scale extra were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'mbm\[scale\]'"):
        eng.index([photos], engine="ray")
    assert not eng.exists  # nothing was created


@pytest.mark.parametrize(
    ("address", "names", "fix"),
    [
        (None, "a local Ray instance", "session_latest/logs"),
        ("ray://head:10001", "ray://head:10001", "check --address"),
    ],
)
def test_a_ray_that_does_not_come_up_is_an_mbm_error_naming_the_fix(monkeypatch, address, names, fix):
    def init(**kwargs):
        assert ("include_dashboard" in kwargs) == (address is None)  # only a Ray instance of our own goes without
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = SimpleNamespace(is_initialized=lambda: False, init=init)
    with pytest.raises(MbmError, match=f"cannot start or reach Ray at {names} .*timed out during startup.* — .*{fix}"):
        _connect(ray, address)
    assert _connect(SimpleNamespace(is_initialized=lambda: True), address) is False  # the caller's own connection
