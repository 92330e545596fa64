"""`mbm import`: clip-retrieval's inference output and plain .npy + .parquet/.jsonl pairs, into a
collection; dimension checked against the model; re-imports and interrupted imports never duplicate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mbm.errors import CollectionError, MissingExtra, UsageError
from mbm.indexer import importer


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_retrieval_output(root, dim: int, shards=(40, 25), texts: bool = False) -> list[np.ndarray]:
    """The layout clip-retrieval's NumpyWriter leaves: {img,text}_emb/<kind>_emb_<N>.npy (float16) and
    metadata/metadata_<N>.parquet with image_path / caption / url and the input's JSON fields."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    out, start = [], 0
    for n, count in enumerate(shards):
        x = unit(count, dim, n)
        for kind in ("img", "text") if texts else ("img",):
            (root / f"{kind}_emb").mkdir(parents=True, exist_ok=True)
            np.save(root / f"{kind}_emb" / f"{kind}_emb_{n}.npy", x.astype(np.float16))
        (root / "metadata").mkdir(exist_ok=True)
        ids = range(start, start + count)
        table = pa.table(
            {
                "image_path": [f"/data/images/{i:05d}.jpg" for i in ids],
                "caption": [f"picture number {i}" for i in ids],
                "url": [f"https://example.org/{i}.jpg" for i in ids],
                "width": [640] * count,
                "similarity": [0.3] * count,
            }
        )
        pq.write_table(table, root / "metadata" / f"metadata_{n}.parquet")
        out.append(x)
        start += count
    return out


def test_clip_retrieval_output_imports_and_searches(tmp_path, engine_factory, tiny_encoder):
    shards = clip_retrieval_output(tmp_path / "out", tiny_encoder.dim)
    eng = engine_factory("laion")
    report = eng.import_embeddings(tmp_path / "out")
    assert (report.shards, report.imported, report.unchanged, report.rejected) == (2, 65, 0, [])
    assert report.total_items == 65 and eng.info().model == "mbm-tiny" and eng.info().kind == "image"
    hits = eng.search(shards[1][3], k=2)
    assert hits[0].path == "/data/images/00043.jpg" and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert hits[0].width == 640
    state = eng.state()
    again = eng.import_embeddings(tmp_path / "out")  # idempotent: nothing written, nothing rebuilt
    assert (again.imported, again.unchanged, again.shards_unchanged) == (0, 65, 2)
    assert eng.state() == state


def test_text_embeddings_import_into_a_text_collection(tmp_path, engine_factory, tiny_encoder):
    clip_retrieval_output(tmp_path / "out", tiny_encoder.dim, shards=(12,), texts=True)
    eng = engine_factory("captions")
    eng.import_embeddings(tmp_path / "out", texts=True)
    info = eng.info()
    assert info.kind == "text" and info.items == 12
    assert eng.search(unit(12, tiny_encoder.dim, 0)[5], k=1)[0].text == "picture number 5"
    with pytest.raises(CollectionError, match="holds texts; .* are images"):
        eng.import_embeddings(tmp_path / "out")  # image embeddings into the text collection


def test_plain_npy_with_jsonl_resumes_after_a_crash_without_duplicates(
    tmp_path, engine_factory, tiny_encoder, monkeypatch
):
    x = unit(30, tiny_encoder.dim, 3)
    np.save(tmp_path / "vecs.npy", x)
    (tmp_path / "vecs.jsonl").write_text("".join(json.dumps({"path": f"/pics/{i}.png"}) + "\n" for i in range(30)))
    eng = engine_factory("plain")
    monkeypatch.setattr(importer, "BATCH", 10)
    calls = {"n": 0}
    real = importer.Catalog.add_items

    def crash_on_second(self, rows, blobs, tokens=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed mid-import
        return real(self, rows, blobs, tokens)

    monkeypatch.setattr(importer.Catalog, "add_items", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        eng.import_embeddings(tmp_path / "vecs.npy")
    monkeypatch.setattr(importer.Catalog, "add_items", real)
    assert eng.catalog().count() == 10
    report = eng.import_embeddings(tmp_path / "vecs.npy")
    assert (report.imported, report.unchanged) == (20, 10)  # the first batch is not written again
    paths = [p for p, _ in eng.catalog().paths()]
    assert sorted(paths) == sorted(f"/pics/{i}.png" for i in range(30))
    # a changed file is read again; only rows whose embedding changed are written
    x[4] = unit(1, tiny_encoder.dim, 99)[0]
    np.save(tmp_path / "vecs.npy", x)
    report = eng.import_embeddings(tmp_path / "vecs.npy")
    assert (report.imported, report.unchanged, report.shards_unchanged) == (1, 29, 0)
    assert eng.search(x[4], k=1)[0].path == "/pics/4.png"


def test_mistakes_are_named_with_their_fix(tmp_path, engine_factory, tiny_encoder, monkeypatch):
    dim = tiny_encoder.dim
    np.save(tmp_path / "wrong.npy", unit(5, dim + 1, 0))
    eng = engine_factory("mistakes")
    with pytest.raises(UsageError, match=f"holds {dim + 1}-dimensional embeddings but model mbm-tiny makes {dim}"):
        eng.import_embeddings(tmp_path / "wrong.npy")
    np.save(tmp_path / "short.npy", unit(5, dim, 0))
    (tmp_path / "short.jsonl").write_text('{"path": "/a.png"}\n')
    with pytest.raises(UsageError, match="has 1 rows but .*short.npy has 5 embeddings"):
        eng.import_embeddings(tmp_path / "short.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no embeddings in .* expected clip-retrieval's img_emb/"):
        eng.import_embeddings(tmp_path / "empty")
    (tmp_path / "clip" / "text_emb").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds text_emb/ but no img_emb/ — add --texts"):
        importer.find_shards(tmp_path / "clip")
    (tmp_path / "pq").mkdir()
    np.save(tmp_path / "pq" / "a.npy", unit(2, dim, 0))
    (tmp_path / "pq" / "a.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtra, match=r"pip install 'mbm\[parquet\]'"):
        eng.import_embeddings(tmp_path / "pq")


def test_a_new_collection_needs_the_model_and_zero_vectors_are_skipped(tmp_path, tiny_encoder):
    from mbm import Engine

    x = unit(4, tiny_encoder.dim, 1)
    x[2] = 0
    np.save(tmp_path / "v.npy", x)
    with Engine.open(tmp_path / "store", "nomodel") as eng:
        with pytest.raises(UsageError, match="name the model that computed the embeddings with --model"):
            eng.import_embeddings(tmp_path / "v.npy")
    env = {**os.environ, "MBM_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "MBM_HOME": str(tmp_path / "store")}
    cli = [sys.executable, "-c", "from mbm.cli import main; main()"]
    cmd = [*cli, "import", str(tmp_path / "v.npy"), "-c", "cli", "-m", "mbm-tiny", "--index-type", "Flat", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, proc.stderr  # finished, but a row was skipped
    doc = json.loads(proc.stdout)
    assert doc["imported"] == 3 and doc["rejected"][0][1] == "zero or non-finite embedding"
    assert doc["index"]["type"] == "Flat" and "v.npy#2: zero or non-finite embedding" in proc.stderr
    info = subprocess.run([*cli, "info"], capture_output=True, text=True, env=env, timeout=300)
    assert "cli" in info.stdout and "index: Flat" in info.stdout
