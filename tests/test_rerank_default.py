"""Re-ranking as the default search, and without torch: the fusion head exported beside the text tower, the
calibrated model's searches re-ranked unless told otherwise, every other search left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from mbm.config import CATALOG_FILE
from mbm.errors import CollectionError, UsageError
from mbm.retrieval import hubness
from mbm.retrieval.rerank import DEFAULT_RERANK_TOP


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """A random-weight tiny model with a fusion head over a 2x2 grid, and a collection of 60 pictures."""
    import torch

    from mbm import Engine
    from mbm.models import load_model
    from mbm.models.build import create_from_config, load_model_cfg, save_checkpoint
    from mbm.models.fusion import FusionConfig, FusionModel

    root = tmp_path_factory.mktemp("fused")
    torch.manual_seed(0)
    model = create_from_config("mbm-tiny")[0]
    cfg = FusionConfig(width=32, layers=2, heads=2, text_dim=64, image_dim=64, max_text_tokens=8, image_grid=2)
    folder = save_checkpoint(model, root / "tiny-fusion", load_model_cfg("mbm-tiny"), heads=(FusionModel(cfg), None))
    encoder = load_model(str(folder), device="cpu", precision="fp32")
    make_images(root / "pics", 60)
    with Engine.open(root / "store", model=encoder.spec, encoder=encoder) as eng:
        eng.index([root / "pics"])
    return root, folder, encoder


@pytest.fixture
def calibrated(fused):
    """The model's folder given a re-ranking calibration (a bank of two random queries) for one test."""
    root, folder, _ = fused
    bank = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    cal = hubness.RerankCalibration(bank / np.linalg.norm(bank, axis=1, keepdims=True), 10.0, 0.5, 0.5)
    hubness.save(folder, cal)
    yield cal
    (folder / hubness.RERANK_FILE).unlink()


def _engine(fused, **kw):
    from mbm import Engine

    root, _, encoder = fused
    return Engine.open(root / "store", encoder=encoder, **kw)


def test_the_export_holds_the_fusion_head_and_agrees_with_torch(fused):
    from mbm.models.fusion_onnx import CONFIG_FILE, MODEL_FILE
    from mbm.retrieval.query import Term
    from mbm.retrieval.rerank import OnnxScorer, TorchScorer
    from mbm.store.tokens import TokenFormat, tokens_of

    root, _, encoder = fused
    qe = root / "store" / "collections" / "default" / "query_encoder"
    assert {MODEL_FILE, CONFIG_FILE} <= {p.name for p in qe.iterdir()}
    assert json.loads((qe / "source.json").read_text())["fusion"] is True
    with _engine(fused) as eng:
        onnx = OnnxScorer(eng._fast_text(), eng._fast_fusion())
        torch_side = TorchScorer(encoder)
        catalog = eng.catalog()
        ids = [h.id for h in eng.search("a red circle", k=20, rerank=0)]
        stored = tokens_of(catalog, ids)
        fmt = TokenFormat.of_meta(catalog.meta())
        blobs = [stored[i] for i in ids]
        for text in ("a red circle", "x", "a very long caption about many coloured shapes in a row " * 3):
            term = Term(1.0, "text", text)
            ours = onnx.logits(onnx.query_tokens(term), blobs, fmt)
            theirs = torch_side.logits(torch_side.query_tokens(term), blobs, fmt)
            assert ours.shape == (20,) and np.abs(ours - theirs).max() < 1e-3
    assert (onnx.logit_scale, onnx.dual_weight) == pytest.approx((torch_side.logit_scale, torch_side.dual_weight))


def test_without_a_calibration_the_default_search_is_not_reranked(fused):
    with _engine(fused) as eng:
        assert eng.default_rerank("a red circle") == 0 and eng.info().rerank_default == 0
        hits = eng.search("a red circle", k=10)
        assert all(h.match is None for h in hits) and "rerank" not in eng.timings
        assert [h.id for h in hits] == [h.id for h in eng.search("a red circle", k=10, rerank=0)]


def test_with_a_calibration_text_queries_rerank_by_default(fused, calibrated):
    root, _, _ = fused
    picture = next((root / "pics").iterdir())
    with _engine(fused) as eng:
        assert eng.default_rerank("a red circle") == DEFAULT_RERANK_TOP == eng.info().rerank_default
        default = eng.search("a red circle", k=10)
        assert "rerank" in eng.timings and "rerank_query" in eng.timings
        asked = eng.search("a red circle", k=10, rerank=True)
        plain = eng.search("a red circle", k=DEFAULT_RERANK_TOP, rerank=0)
        assert [(h.id, h.match) for h in default] == [(h.id, h.match) for h in asked]
        assert all(h.match is not None for h in default)
        assert {h.id for h in default} <= {h.id for h in plain}
        # what the default leaves alone: image queries, keyword search, other sort orders, rerank=0
        for query, kw in ((picture, {}), ("red", {"mode": "keyword"}), ("a red circle", {"sort": "path"})):
            assert eng.default_rerank(query, kw.get("mode", "vector"), kw.get("sort", "score")) == 0
            assert all(h.match is None for h in eng.search(query, k=5, **kw))
        assert all(h.match is None for h in eng.search("a red circle", k=5, rerank=0))


def test_reranking_reorders_the_top_n_and_the_rest_keep_their_order(fused, calibrated):
    with _engine(fused) as eng:
        plain = eng.search("a blue square", k=30, rerank=0)
        head = eng.search("a blue square", k=10, rerank=10)
        past = eng.search("a blue square", k=5, offset=10, rerank=10)  # the page after the re-ranked ten
        assert {h.id for h in head} == {h.id for h in plain[:10]} and all(h.match is not None for h in head)
        assert [h.id for h in past] == [h.id for h in plain[10:15]] and all(h.match is None for h in past)
        wide = eng.search("a blue square", k=20, rerank=10)  # at least k are re-ordered
        assert {h.id for h in wide} == {h.id for h in plain[:20]} and all(h.match is not None for h in wide)
        # pages of one order: the default re-orders the top 50 whatever the page; the rest follow as they were
        first = [h.id for h in eng.search("a blue square", k=DEFAULT_RERANK_TOP)]
        rest = [h.id for h in eng.search("a blue square", k=56, rerank=0)][DEFAULT_RERANK_TOP:]
        pages = [h.id for off in range(0, 56, 7) for h in eng.search("a blue square", k=7, offset=off)]
        assert pages == first + rest and len(set(pages)) == 56
        assert [h.id for h in eng.search("a blue square", k=56)] == first + rest  # a longer list starts the same


def test_a_default_search_over_candidates_without_tokens_is_plain_and_an_asked_one_says_why(fused, calibrated):
    import sqlite3

    root, _, _ = fused
    path = root / "store" / "collections" / "default" / CATALOG_FILE
    with _engine(fused) as eng:
        expected = [h.id for h in eng.search("a green circle", k=10, rerank=0)]
    conn = sqlite3.connect(path)
    saved = conn.execute("SELECT id, tokens FROM items").fetchall()
    with conn:
        conn.execute("UPDATE items SET tokens = NULL")  # as if indexed before tokens were stored
    try:
        with _engine(fused) as eng:
            hits = eng.search("a green circle", k=10)
            assert [h.id for h in hits] == expected and all(h.match is None for h in hits)
            with pytest.raises(CollectionError, match="--rerank-tokens"):
                eng.search("a green circle", k=10, rerank=True)
    finally:
        with conn:
            conn.executemany("UPDATE items SET tokens = ? WHERE id = ?", [(t, i) for i, t in saved])
        conn.close()


def test_a_cold_reranked_search_needs_no_torch_and_matches_the_torch_path(fused, calibrated):
    root, _, _ = fused
    code = (
        "import sys, json; from mbm import Engine; "
        f"eng = Engine.open({str(root / 'store')!r}); hits = eng.search('a red circle', k=8); "
        "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules)); "
        "print(json.dumps([[h.id, h.match] for h in hits]))"
    )

    def run(**env):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=Path(__file__).parents[1],
            env={**os.environ, **env},
        )
        assert out.returncode == 0, out.stderr
        imported, hits = out.stdout.strip().splitlines()[-2:]
        return imported, json.loads(hits)

    imported, fast = run()
    assert imported == "[]" and all(m is not None for _, m in fast)
    imported, slow = run(MBM_NO_FAST_TEXT="1")  # the query and its re-ranking through the model itself
    assert imported != "[]"
    assert [i for i, _ in fast] == [i for i, _ in slow]
    # the export is of the fp32 model; the model itself loads in bf16 where the CPU has bf16 maths (precision auto)
    assert np.allclose([m for _, m in fast], [m for _, m in slow], atol=2e-2)


def test_cli_rerank_switches(fused, calibrated):
    from test_cli import cli

    root, _, _ = fused
    base = ["search", "a red circle", "--store", root / "store", "-k", "3", "--json"]
    code, on, _ = cli(*base)
    assert code == 0 and all(h["match"] is not None for h in json.loads(on)["hits"])
    code, off, _ = cli(*base, "--no-rerank")
    assert code == 0 and all(h["match"] is None for h in json.loads(off)["hits"])
    code, _, err = cli(*base, "--no-rerank", "--rerank-top", "9")
    assert code != 0 and "--no-rerank and --rerank-top 9 contradict" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="no positive text term"), _engine(fused) as eng:
        eng.search(next((root / "pics").iterdir()), k=3, rerank=True)  # asked for and impossible: still an error


def test_the_http_api_reranks_as_the_cli_does_and_pages_one_order(fused, calibrated):
    pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
    from fastapi.testclient import TestClient

    from mbm.server import ServerConfig, create_app

    root, _, _ = fused
    with _engine(fused) as eng:
        expected = [(h.id, h.match) for h in eng.search("a red circle", k=12)]
        plain = [h.id for h in eng.search("a red circle", k=12, rerank=0)]
    engines = {"default": _engine(fused)}
    app = create_app(ServerConfig(store=root / "store"), engines)
    try:
        with TestClient(app) as c:
            app.state.collections.wait_ready(60)
            got = c.post("/search", json={"text": "a red circle", "k": 12}).json()["hits"]
            pages = [
                c.post("/search", json={"text": "a red circle", "k": 4, "offset": o}).json()["hits"] for o in (0, 4, 8)
            ]
            off = c.post("/search", json={"text": "a red circle", "k": 12, "rerank": False}).json()["hits"]
            listed = {x["name"]: x for x in c.get("/collections").json()}
    finally:
        engines["default"].close()
    assert [(h["id"], h["match"]) for h in got] == expected
    assert [h["id"] for page in pages for h in page] == [i for i, _ in expected]
    assert [h["rank"] for page in pages for h in page] == list(range(1, 13))
    assert [h["id"] for h in off] == plain and all(h["match"] is None for h in off)
    assert listed["default"]["rerank_default"] == DEFAULT_RERANK_TOP  # what the search page's toggle starts from


def test_concurrent_default_reranked_queries_share_one_encoding_and_match_single_searches(fused, calibrated):
    pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
    import asyncio
    import re

    import httpx
    from fastapi.testclient import TestClient

    from mbm.server import ServerConfig, create_app

    root, _, _ = fused
    texts = [f"a {c} {s}" for c in ("red", "blue", "green", "dark") for s in ("circle", "square", "stripe row")]
    with _engine(fused) as eng:
        fast = eng._fast_text()
        many = fast.encode_tokens_many(texts)  # one padded run: each row as its own run gives it
        fast._recent.clear()
        for text, (vec, tok) in zip(texts, many):
            one_vec, one_tok = fast.encode_tokens(text)
            assert tok.shape == one_tok.shape and np.abs(tok - one_tok).max() < 1e-4
            assert float(vec @ one_vec) > 0.99999
        expected = {t: [(h.id, round(h.match, 4)) for h in eng.search(t, k=5, offset=2)] for t in texts}
    engines = {"default": _engine(fused)}
    served_text = engines["default"]._fast_text()
    runs: list[int] = []
    batch_run = served_text.encode_tokens_many
    served_text.encode_tokens_many = lambda ts: (runs.append(len(ts)), batch_run(ts))[1]
    app = create_app(ServerConfig(store=root / "store"), engines)

    async def concurrently(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await asyncio.gather(*[ac.post("/search", json={"text": t, "k": 5, "offset": 2}) for t in texts])

    try:
        with TestClient(app) as c:
            app.state.collections.wait_ready(60)
            responses = asyncio.run(concurrently(app))
            metrics = c.get("/metrics").text
    finally:
        engines["default"].close()
    for text, r in zip(texts, responses):
        hits = r.json()["hits"]
        assert [(h["id"], round(h["match"], 4)) for h in hits] == expected[text]
        assert [h["rank"] for h in hits] == [3, 4, 5, 6, 7]
    total, count = (
        float(re.search(rf"mbm_batch_size_{k}{{[^}}]*}} ([0-9.e+]+)", metrics).group(1)) for k in ("sum", "count")
    )
    assert total > count and max(runs) > 1  # some batch held several queries, encoded in one run
