"""The faiss-gpu probe: a faiss-gpu build whose kernels do not run on this GPU aborts the process at its
first search; mbm finds that out in a child process once, keeps FAISS on the CPU and says why."""

from __future__ import annotations

import json
import logging

import pytest

from mbm.store import faiss_gpu


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(faiss_gpu.faiss, "get_num_gpus", lambda: 2, raising=False)
    faiss_gpu.gpu_count.cache_clear()
    yield tmp_path / "mbm" / "faiss-gpu.json"
    faiss_gpu.gpu_count.cache_clear()  # the other tests see the real faiss again


def test_a_build_that_aborts_on_this_gpu_keeps_faiss_on_the_cpu(fake_gpu, monkeypatch, caplog):
    monkeypatch.setattr(faiss_gpu, "PROBE", "import sys, os\nprint('no kernel image', file=sys.stderr)\nos.abort()")
    with caplog.at_level(logging.WARNING, logger="mbm.store.faiss_gpu"):
        assert faiss_gpu.gpu_count() == 0
    assert "cannot search on this GPU (no kernel image)" in caplog.text and "faiss-gpu" in caplog.text
    assert json.loads(fake_gpu.read_text()) == {faiss_gpu.build_key(): {"ok": False, "why": "no kernel image"}}
    # the verdict is kept: a later process does not probe again
    faiss_gpu.gpu_count.cache_clear()
    monkeypatch.setattr(faiss_gpu, "probe", lambda: pytest.fail("probed twice"))
    assert faiss_gpu.gpu_count() == 0


def test_a_working_build_counts_its_gpus_and_the_verdict_is_per_build(fake_gpu, monkeypatch):
    monkeypatch.setattr(faiss_gpu, "PROBE", "pass")
    assert faiss_gpu.gpu_count() == 2
    fake_gpu.write_text(json.dumps({"another-build": {"ok": False, "why": "x"}}))  # another build's verdict
    faiss_gpu.gpu_count.cache_clear()
    assert faiss_gpu.gpu_count() == 2
    assert json.loads(fake_gpu.read_text())[faiss_gpu.build_key()] == {"ok": True, "why": "exit status 0"}


def test_a_probe_without_a_verdict_is_not_kept(fake_gpu, monkeypatch):
    monkeypatch.setattr(faiss_gpu.sys, "executable", "/nonexistent/python")
    assert faiss_gpu.gpu_count() == 0 and not fake_gpu.exists()


def test_no_gpu_means_no_probe(monkeypatch):
    monkeypatch.setattr(faiss_gpu.faiss, "get_num_gpus", lambda: 0, raising=False)
    monkeypatch.setattr(faiss_gpu, "probe", lambda: pytest.fail("probed without a GPU"))
    faiss_gpu.gpu_count.cache_clear()
    try:
        assert faiss_gpu.gpu_count() == 0
    finally:
        faiss_gpu.gpu_count.cache_clear()
