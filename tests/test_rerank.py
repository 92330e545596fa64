"""Fusion re-ranking through the engine with a trained checkpoint: same candidates, new order, match
probabilities (stored tokens, their back-fill and the errors: test_rerank_tokens.py)."""

from __future__ import annotations

import pytest
import torch
from test_train import make_manifest, tiny_config

from mbm.errors import UsageError
from mbm.train.loop import train


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    from mbm import Engine

    root = tmp_path_factory.mktemp("rerank")
    manifest = make_manifest(root / "data", n_train=16, n_val=8)
    train(tiny_config(manifest, root / "run", epochs=2, val_every=0))
    with Engine.open(root / "store", model=str(root / "run" / "last")) as eng:
        eng.index([root / "data" / "img"])
    return root


def test_rerank_reorders_the_same_candidates_by_fusion_plus_dual(trained_store):
    from mbm import Engine
    from mbm.models.tokens import image_tokens, text_tokens
    from mbm.retrieval.rerank import rerank_order

    with Engine.open(trained_store / "store") as eng:
        plain = eng.search("a red circle", k=6)
        reranked = eng.search("a red circle", k=6, rerank=6)
        enc = eng.encoder()
    assert {h.path for h in plain} == {h.path for h in reranked}
    assert [h.rank for h in reranked] == list(range(1, 7))
    assert all(0.0 <= h.match <= 1.0 for h in reranked)
    # computed independently from the files and the towers' full outputs (re-ranking itself reads stored
    # float16 tokens): the same match probabilities, and the order fusion logit + logit_scale * cosine
    from mbm.indexer.decode import decode, read_file

    with torch.inference_mode():
        ids = enc.tokenizer(["a red circle"])
        _, tokens, mask = text_tokens(enc.model, ids)
        pixels = torch.stack([enc.preprocess(decode(read_file(h.path)[0], enc.image_size)[0]) for h in plain])
        _, cells = image_tokens(enc.model, pixels.to(next(enc.model.parameters()).dtype))
        logits = enc.heads["fusion"](tokens.float().expand(6, -1, -1), mask.expand(6, -1), cells.float()).double()
    match = {h.path: h.match for h in reranked}
    assert [match[h.path] for h in plain] == pytest.approx(torch.sigmoid(logits).tolist(), abs=2e-3)
    stored = torch.tensor([match[h.path] for h in plain], dtype=torch.float64).logit().numpy()
    order = rerank_order(stored, [h.score for h in plain], float(enc.model.logit_scale.detach().exp()))
    assert [h.path for h in reranked] == [plain[i].path for i in order]


def test_rerank_refuses_two_texts_and_image_queries_on_images(trained_store):
    from mbm import Engine
    from mbm.retrieval.query import Query

    picture = next((trained_store / "data" / "img").iterdir())
    with Engine.open(trained_store / "store") as eng:
        with pytest.raises(UsageError, match="has 2 positive text terms — keep one"):
            eng.search(Query.parse("a red circle + a blue square"), k=3, rerank=3)
        with pytest.raises(UsageError, match="has no positive text term"):
            eng.search(picture, k=3, rerank=3)
        with pytest.raises(UsageError, match="has no positive text term"):
            eng.search(Query.parse(None, images=[picture]), k=3, rerank=3)


def test_rerank_takes_the_structured_query_as_the_search_does(trained_store):
    from mbm import Engine
    from mbm.retrieval.query import Query

    with Engine.open(trained_store / "store") as eng:
        literal = eng.search("2:a red circle + a blue square", k=4, rerank=4)  # a str is one literal text
        structured = eng.search(Query.text("2:a red circle + a blue square"), k=4, rerank=4)
    assert [(h.path, h.match) for h in literal] == [(h.path, h.match) for h in structured]
    assert all(h.match is not None for h in literal)


def test_rerank_uses_the_checkpoints_hubness_calibration(trained_store):
    import numpy as np

    from mbm import Engine
    from mbm.retrieval import hubness
    from mbm.retrieval.rerank import rerank_order

    folder = trained_store / "run" / "last"
    with Engine.open(trained_store / "store") as eng:
        plain = eng.search("a red circle", k=6)
        ids, vectors = eng.searcher().catalog.embeddings_of([h.id for h in plain])
    by_id = dict(zip(ids.tolist(), vectors))
    # a bank of one query lying on the first hit: that picture is the hub, and ten times its cosine to the bank comes off
    bank = np.asarray(by_id[plain[0].id], np.float32)[None]
    cal = hubness.RerankCalibration(bank / np.linalg.norm(bank), beta=10.0, hub_weight=10.0, fusion_weight=0.0)
    hubness.save(folder, cal)
    try:
        with Engine.open(trained_store / "store") as eng:
            reranked = eng.search("a red circle", k=6, rerank=6)
            scale = float(eng.encoder().model.logit_scale.detach().exp())
    finally:
        (folder / hubness.RERANK_FILE).unlink()
    penalty = cal.penalty(np.stack([by_id[h.id] for h in plain]))
    order = rerank_order(np.zeros(6), [h.score for h in plain], scale, 1.0, penalty=penalty, fusion_weight=0.0)
    assert [h.path for h in reranked] == [plain[i].path for i in order]
    assert reranked[0].path != plain[0].path  # the hub lost its place
    assert [h.score for h in sorted(reranked, key=lambda h: h.id)] == [
        h.score for h in sorted(plain, key=lambda h: h.id)
    ]
