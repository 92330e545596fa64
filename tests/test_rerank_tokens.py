"""Fusion re-ranking from tokens stored at index time: stored with every item, back-filled for old ones,
reused by copies, read by the re-ranker instead of the files (which may be gone).

A tiny checkpoint (mbm-tiny + an untrained fusion head) stands in for a trained model; where the
order must mean something, the head is trained for a few steps on the stored tokens themselves.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_images
from typer.testing import CliRunner

from mbm.errors import CollectionError, UsageError
from mbm.store import tokens as stored_tokens

FUSION = {"width": 32, "layers": 1, "heads": 2, "text_dim": 64, "image_dim": 64, "max_text_tokens": 8}
TOKEN_BYTES = 16 * 32 * 2  # mbm-tiny: 64 px / patch 16 = 16 image tokens x width 32, float16


@pytest.fixture(autouse=True)
def _no_text_export(monkeypatch):
    monkeypatch.setenv(
        "MBM_NO_FAST_TEXT", "1"
    )  # the torch-free query path is not what these tests are about (and costs seconds)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint folder: mbm-tiny's towers with a (random) fusion head beside them."""
    from mbm.models.build import create_from_config, load_model_cfg, save_checkpoint
    from mbm.models.fusion import FusionConfig, FusionModel

    torch.manual_seed(0)
    model = create_from_config("mbm-tiny")[0]
    fusion = FusionModel(FusionConfig(**FUSION))
    return save_checkpoint(
        model, tmp_path_factory.mktemp("ck") / "tiny-fusion", load_model_cfg("mbm-tiny"), heads=(fusion, None)
    )


@pytest.fixture(scope="module")
def fusion_encoder(checkpoint):
    from mbm.models import load_model

    return load_model(str(checkpoint), device="cpu", precision="fp32")


@pytest.fixture
def open_engine(tmp_path, fusion_encoder):
    from mbm import Engine

    opened = []

    def make(collection: str = "default", encoder=fusion_encoder):
        eng = Engine.open(tmp_path / "store", collection, model=encoder.spec, encoder=encoder)
        opened.append(eng)
        return eng

    yield make
    for eng in opened:
        eng.close()


def _forget_tokens(eng) -> None:
    """Make the collection look indexed before tokens were stored."""
    cat = eng.catalog(write=True)
    with cat.transaction():
        cat.conn.execute("UPDATE items SET tokens = NULL")
        cat.conn.execute("DELETE FROM meta WHERE key IN ('tokens', 'fusion')")


def _all_tokens(eng) -> dict[int, bytes]:
    cat = eng.catalog()
    return stored_tokens.tokens_of(cat, [int(i) for (i,) in cat.conn.execute("SELECT id FROM items")])


def test_indexing_stores_tokens_and_info_reports_their_size(tmp_path, open_engine):
    make_images(tmp_path / "photos", 6)
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    tokens = _all_tokens(eng)
    assert len(tokens) == 6 and {len(b) for b in tokens.values()} == {TOKEN_BYTES}
    fmt = stored_tokens.TokenFormat.of_meta(eng.catalog().meta())
    assert fmt == stored_tokens.TokenFormat("image", 16, 32, "float16")
    info = eng.info()
    assert (info.fusion, info.token_bytes_per_item, info.token_bytes, info.items_without_tokens) == (
        True,
        TOKEN_BYTES,
        6 * TOKEN_BYTES,
        0,
    )


def test_rerank_reorders_only_within_the_top_n_and_drops_nothing(tmp_path, open_engine):
    make_images(tmp_path / "photos", 12)
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    plain = eng.search("a red car", k=12)
    top8 = eng.search("a red car", k=8, rerank=8)
    assert {h.id for h in top8} == {h.id for h in plain[:8]}  # the same candidates, none dropped
    assert [h.rank for h in top8] == list(range(1, 9)) and all(0 <= h.match <= 1 for h in top8)
    cosine = {h.id: h.score for h in plain}
    assert all(h.score == cosine[h.id] for h in top8)  # score stays the dual encoder's cosine
    first3 = eng.search("a red car", k=3, rerank=8)
    assert [h.id for h in first3] == [h.id for h in top8[:3]]  # k cuts after re-ranking the top N
    assert eng.timings["rerank"] > 0 and "rerank_query" in eng.timings
    assert {h.id for h in eng.search("a red car", k=5, rerank=True)} <= {h.id for h in plain}


def test_a_fusion_head_trained_on_a_pair_puts_that_pair_first(tmp_path, open_engine, checkpoint):
    from mbm.models import load_model

    encoder = load_model(str(checkpoint), device="cpu", precision="fp32")  # its head is trained below
    make_images(tmp_path / "photos", 10)
    eng = open_engine(encoder=encoder)
    eng.index([tmp_path / "photos"])
    query = "a zebra on the moon"
    plain = eng.search(query, k=10)
    target = plain[-1]  # the dual encoder's last choice
    stored = stored_tokens.tokens_of(eng.catalog(), [h.id for h in plain])
    fmt = stored_tokens.TokenFormat.of_meta(eng.catalog().meta())
    images = torch.from_numpy(stored_tokens.unpack_images([stored[h.id] for h in plain], fmt)).float()
    text = torch.from_numpy(np.array(encoder.encode_text_batch([query])[1][0])).float()[None]
    labels = torch.tensor([float(h.id == target.id) for h in plain])
    fusion = encoder.fusion
    # the projections stay as they are, so the tokens stored at index time stay valid
    params = [p for name, p in fusion.named_parameters() if not name.startswith(("image_in", "text_in"))]
    opt = torch.optim.Adam(params, lr=1e-2)
    fusion.train()
    for _ in range(40):
        logits = fusion.match(
            text,
            torch.ones(text.shape[:2], dtype=torch.bool),
            images,
            text_index=torch.zeros(len(plain), dtype=torch.long),
        )
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fusion.eval()
    reranked = eng.search(query, k=10, rerank=10)
    assert reranked[0].id == target.id and reranked[0].match > 0.9
    assert plain[0].id != target.id


def test_rerank_order_is_fusion_plus_dual_logit_with_ties_to_the_cosine():
    from mbm.retrieval.rerank import rerank_order

    logits = np.array([3.0, 2.0, 1.0, 1.0])
    cosines = np.array([0.5, 0.25, 0.375, 0.625])
    assert list(rerank_order(logits, cosines, logit_scale=8.0)) == [0, 3, 2, 1]  # 7, 4, 4, 6: the tie to the cosine
    assert list(rerank_order(logits, cosines, logit_scale=0.0)) == [0, 1, 3, 2]  # the fusion head alone
    assert list(rerank_order(np.zeros(3), np.zeros(3), 1.0)) == [0, 1, 2]  # full ties keep the search's order


def test_backfill_is_resumable_incremental_and_leaves_no_item_without_tokens(
    tmp_path, open_engine, checkpoint, monkeypatch
):
    from mbm import Engine
    from mbm.indexer import backfill

    make_images(tmp_path / "photos", 10)
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    fresh = _all_tokens(eng)
    _forget_tokens(eng)
    generation = eng.catalog().generation()
    assert eng.info().items_without_tokens == 10

    real, calls = backfill.set_tokens, []

    def interrupted(catalog, items):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(catalog, items)

    monkeypatch.setattr(backfill, "set_tokens", interrupted)
    with pytest.raises(KeyboardInterrupt):
        eng.index([tmp_path / "photos"], batch_size=4)
    assert eng.info().items_without_tokens == 6  # the first batch was committed
    monkeypatch.setattr(backfill, "set_tokens", real)

    report = eng.index([tmp_path / "photos"], batch_size=4)
    assert report.tokens_filled == 6 and report.as_dict()["tokens_filled"] == 6 and report.indexed == 0
    assert _all_tokens(eng) == fresh  # the same tokens as indexing computes
    assert eng.catalog().generation() == generation  # the vectors did not change
    assert eng.info().items_without_tokens == 0

    def no_loading(*_a, **_k):
        raise AssertionError("an unchanged re-run loaded the model")

    monkeypatch.setattr("mbm.collection.handle.load_model", no_loading)
    with Engine.open(tmp_path / "store") as again:
        report = again.index([tmp_path / "photos"])
    assert (report.unchanged, report.tokens_filled, report.model) == (10, 0, None)


def test_backfill_skips_a_file_whose_content_changed(tmp_path, open_engine):
    paths = make_images(tmp_path / "photos", 3)
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    _forget_tokens(eng)
    cat = eng.catalog(write=True)
    with cat.transaction():  # as if the file changed behind an unchanged size and mtime: the scan cannot tell
        cat.conn.execute("UPDATE items SET hash = 'older content' WHERE path = ?", (str(paths[0]),))
    report = eng.index([tmp_path / "photos"], rerank_tokens=True)
    assert report.tokens_filled == 2 and [p for p, _ in report.tokens_skipped] == [str(paths[0])]
    assert "content changed" in report.tokens_skipped[0][1]


def test_rerank_never_opens_the_files_library_and_cli(tmp_path, checkpoint, monkeypatch):
    from mbm import Engine
    from mbm.cli import app

    photos = tmp_path / "photos"
    make_images(photos, 8)
    store = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(photos), "-m", str(checkpoint), "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    shutil.rmtree(photos)

    from mbm.indexer import decode

    def no_reading(path):
        raise AssertionError(f"re-ranking read {path}")

    monkeypatch.setattr(decode, "read_file", no_reading)
    with Engine.open(store) as eng:
        hits = eng.search("a red car", k=5, rerank=True)
    assert len(hits) == 5 and all(h.match is not None for h in hits)

    result = runner.invoke(app, ["search", "a red car", "--rerank", "-k", "4", "--json", "--store", str(store)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["hits"]) == 4 and all({"score", "match"} <= set(h) and h["match"] is not None for h in doc["hits"])
    assert "rerank" in doc["seconds"]
    table = runner.invoke(app, ["search", "a red car", "--rerank-top", "6", "-k", "3", "--store", str(store)])
    assert table.exit_code == 0 and len(table.stdout.splitlines()) == 3 and "match" in table.stdout
    plain = runner.invoke(app, ["search", "a red car", "-k", "3", "--store", str(store)])
    assert "match" not in plain.stdout


def test_clear_errors_for_an_old_collection_and_a_model_without_fusion(tmp_path, open_engine, engine_factory):
    from test_cli import cli

    photos = tmp_path / "photos"
    make_images(photos, 6)
    old = open_engine("old")
    old.index([photos])
    _forget_tokens(old)
    with pytest.raises(CollectionError, match=r"6 of the 6 candidates have no stored re-ranking tokens") as e:
        old.search("a red car", k=6, rerank=6)
    assert f"mbm index {photos} --rerank-tokens -c old" in str(e.value)

    plain = engine_factory("plain")  # mbm-tiny: no fusion head
    plain.index([photos])
    assert plain.info().fusion is False
    for call in (lambda: plain.search("a red car", rerank=True), lambda: plain.index([photos], rerank_tokens=True)):
        with pytest.raises(CollectionError, match=r"model 'mbm-tiny' has no fusion head.*`mbm train`"):
            call()
    code, _, err = cli("search", "a red car", "--rerank", "-c", "plain", "--store", tmp_path / "store")
    assert code == 1 and "'mbm-tiny' has no fusion head" in err and "Traceback" not in err
    code, _, err = cli("search", "x", "--rerank-top", "0", "-c", "plain", "--store", tmp_path / "store")
    assert code == 2 and "--rerank-top must be at least 1, not 0" in err


def test_weighted_queries_rerank_with_their_one_positive_text(tmp_path, open_engine):
    from mbm.retrieval.query import Query

    make_images(tmp_path / "photos", 8)
    picture = tmp_path / "photos" / "img0001.png"
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    single = {h.id: h.match for h in eng.search("a red car", k=8, rerank=8)}
    for query in (Query.parse("2:a red car - night"), Query.terms([(1, "a red car"), (1, picture)])):
        hits = eng.search(query, k=8, rerank=8)
        assert all(h.match == pytest.approx(single[h.id], abs=1e-6) for h in hits)  # scored by "a red car" alone
    with pytest.raises(UsageError, match="has 2 positive text terms"):
        eng.search(Query.parse("a red car + a blue bird"), rerank=4)
    with pytest.raises(UsageError, match="has no positive text term"):
        eng.search(picture, rerank=4)
    with pytest.raises(UsageError, match="has no positive text term"):
        eng.search(Query.terms([(1, picture), (-1, "night")]), rerank=4)


def test_image_to_text_reranking_on_a_text_collection(tmp_path, open_engine, fusion_encoder):
    from mbm.models.tokens import image_tokens, text_tokens
    from mbm.retrieval.rerank import rerank_order
    from mbm.retrieval.searcher import decode_query_image

    captions = ["a red car", "a dog on a beach", "two cats", "a bowl of soup at night", "mountains", "x"]
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    picture = make_images(tmp_path / "q", 1)[0]
    eng = open_engine("captions")
    eng.index([tmp_path / "captions.txt"])
    fmt = stored_tokens.TokenFormat.of_meta(eng.catalog().meta())
    assert fmt.kind == "text" and fmt.per_item == FUSION["max_text_tokens"]
    plain = eng.search(picture, k=6)
    hits = eng.search(picture, k=6, rerank=6)
    assert {h.text for h in hits} == set(captions) and all(h.match is not None for h in hits)
    enc = fusion_encoder  # the order, computed independently from the towers' full outputs
    with torch.inference_mode():
        pixels = enc.preprocess(decode_query_image(str(picture), enc.image_size))[None]
        _, cells = image_tokens(enc.model, pixels)
        _, tokens, mask = text_tokens(enc.model, enc.tokenizer([h.text for h in plain]))
        logits = enc.fusion(tokens, mask, cells.expand(len(plain), -1, -1)).double().numpy()
    reranker_scale = float(enc.model.logit_scale.detach().exp())
    want = [plain[i].id for i in rerank_order(logits, np.array([h.score for h in plain]), reranker_scale)]
    assert [h.id for h in hits] == want
    assert [h.match for h in sorted(hits, key=lambda h: h.id)] == pytest.approx(
        [float(1 / (1 + np.exp(-z))) for _, z in sorted(zip([h.id for h in plain], logits))], abs=2e-3
    )
    with pytest.raises(UsageError, match="has no positive image term"):
        eng.search("a red car", rerank=3)


def test_copies_and_moves_reuse_stored_tokens(tmp_path, open_engine, fusion_encoder, monkeypatch):
    photos = tmp_path / "photos"
    paths = make_images(photos, 4)
    eng = open_engine()
    eng.index([photos])
    before = {eng.catalog().rows([i])[i]["path"]: b for i, b in _all_tokens(eng).items()}
    shutil.copy(paths[0], photos / "copy.png")
    (photos / "sub").mkdir()
    paths[1].rename(photos / "sub" / "moved.png")

    def no_embedding(*_a, **_k):
        raise AssertionError("a copy or a move was embedded again")

    monkeypatch.setattr(type(fusion_encoder), "encode_image_batch", no_embedding)
    report = eng.index([photos])
    assert (report.indexed, report.reused, report.moved) == (0, 2, 1)
    after = {eng.catalog().rows([i])[i]["path"]: b for i, b in _all_tokens(eng).items()}
    assert after[str(photos / "copy.png")] == before[str(paths[0])]
    assert after[str(photos / "sub" / "moved.png")] == before[str(paths[1])]
    assert eng.info().items_without_tokens == 0


def test_text_collections_store_only_real_tokens_and_backfill_from_the_stored_text(tmp_path, open_engine, monkeypatch):
    (tmp_path / "notes.txt").write_text("red\na much longer caption with many words in it\n")
    eng = open_engine("notes")
    eng.index([tmp_path / "notes.txt"])
    fresh = _all_tokens(eng)
    rows = sorted(len(b) // (32 * 2) for b in fresh.values())
    assert rows[0] < rows[1] == FUSION["max_text_tokens"]  # "red": start, word, end; the long one cut at 8

    def no_reading(*_a, **_k):
        raise AssertionError("the back-fill read the text file")

    _forget_tokens(eng)
    monkeypatch.setattr("mbm.indexer.runner.read_texts", no_reading)
    report = eng.index([tmp_path / "notes.txt"])
    assert (report.unchanged, report.tokens_filled) == (1, 2) and _all_tokens(eng) == fresh


def test_catalog_add_items_keeps_tokens_with_the_embedding_and_clears_them_on_replace(tmp_path):
    from mbm.store.catalog import Catalog

    cat = Catalog.open(tmp_path / "c.sqlite", create=True)
    vec = np.ones(4, np.float16).tobytes()
    cat.add_items([{"path": "/a.jpg", "size": 1, "mtime_ns": 1, "hash": "h"}], [vec], [b"tok"])
    assert stored_tokens.tokens_of(cat, [1]) == {1: b"tok"}
    assert cat.embedding_by_hash(["h"])["h"].tokens == b"tok"
    generation = cat.generation()
    assert stored_tokens.set_tokens(cat, [(1, "other", b"x")]) == 0  # another content: left alone
    assert stored_tokens.set_tokens(cat, [(1, "h", b"new")]) == 1 and cat.generation() == generation
    cat.add_items([{"path": "/a.jpg", "size": 2, "mtime_ns": 2, "hash": "h2"}], [vec])  # replaced content
    assert stored_tokens.tokens_of(cat, [1]) == {} and [m.id for m in stored_tokens.missing(cat)] == [1]
    assert stored_tokens.token_stats(cat) == stored_tokens.TokenStats(0, 1, 0)


def test_a_head_reading_the_image_embedding_stores_it_as_one_more_token(fusion_encoder):
    from mbm.models.fusion import FusionConfig, FusionModel

    torch.manual_seed(3)
    fusion = FusionModel(FusionConfig(**FUSION, embed_dim=fusion_encoder.dim)).eval()
    enc = dataclasses.replace(fusion_encoder, heads={"fusion": fusion})
    pixels = torch.randn(3, 3, 64, 64)
    emb, tokens = enc.encode_image_batch(pixels)
    assert tokens.shape == (3, 17, 32)  # 16 patch tokens + the embedding
    text = enc.encode_text_batch(["a red car"])[1][0]
    from mbm.models.tokens import image_tokens, text_tokens

    with torch.inference_mode():
        _, cells = image_tokens(enc.model, pixels)
        _, words, mask = text_tokens(enc.model, enc.tokenizer(["a red car"]))
        full = fusion(words.expand(3, -1, -1), mask.expand(3, -1), cells, image_embedding=torch.from_numpy(emb))
        stored = fusion.match(
            torch.from_numpy(text)[None],
            torch.ones(1, len(text), dtype=torch.bool),
            torch.from_numpy(tokens),
            text_index=torch.zeros(3, dtype=torch.long),
        )
    torch.testing.assert_close(stored, full, atol=2e-2, rtol=0)


def test_a_catalog_from_before_tokens_reads_as_lacking_them_and_gains_the_column(tmp_path, monkeypatch):
    from mbm.store import migrations
    from mbm.store.catalog import Catalog

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])  # the released schema before 003
    old = Catalog.open(tmp_path / "c.sqlite", create=True)
    with old.transaction():
        old.conn.execute(
            "INSERT INTO items (path, part, size, mtime_ns, hash, embedding) VALUES ('/a.jpg', 0, 1, 1, 'h', x'00')"
        )
    old.close()
    monkeypatch.undo()
    readonly = Catalog.open(tmp_path / "c.sqlite", readonly=True)  # a search: no migration
    assert not readonly.has_tokens and stored_tokens.tokens_of(readonly, [1]) == {}
    assert stored_tokens.token_stats(readonly) == stored_tokens.TokenStats(0, 1, 0)
    assert readonly.embedding_by_hash(["h"])["h"].tokens is None
    readonly.close()
    migrated = Catalog.open(tmp_path / "c.sqlite")  # an index run migrates
    assert migrated.has_tokens and [m.path for m in stored_tokens.missing(migrated)] == ["/a.jpg"]


def test_check_finds_damaged_token_blobs_and_the_next_run_recomputes_them(tmp_path, open_engine):
    make_images(tmp_path / "photos", 4)
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    fresh = _all_tokens(eng)
    cat = eng.catalog(write=True)
    with cat.transaction():  # a torn write: half a blob
        cat.conn.execute("UPDATE items SET tokens = substr(tokens, 1, 100) WHERE id = (SELECT MIN(id) FROM items)")
    report = eng.check()
    assert [p.kind for p in report.problems] == ["tokens"] and not report.ok
    report = eng.check(fix=True)
    assert report.ok and eng.info().items_without_tokens == 1
    assert eng.index([tmp_path / "photos"]).tokens_filled == 1
    assert _all_tokens(eng) == fresh and eng.check().problems == []


def test_a_file_the_backfill_cannot_use_is_not_retried_until_it_changes_or_is_asked_for(
    tmp_path, open_engine, monkeypatch
):
    import os

    from mbm import Engine

    paths = make_images(tmp_path / "photos", 3)
    eng = open_engine()
    eng.index([tmp_path / "photos"])
    _forget_tokens(eng)
    bad = paths[0]
    st = bad.stat()
    bad.write_bytes(b"\0" * st.st_size)  # unreadable now, behind the same size and mtime: the scan cannot tell
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = eng.index([tmp_path / "photos"])
    assert report.tokens_filled == 2 and [p for p, _ in report.tokens_skipped] == [str(bad)]
    assert eng.info().items_without_tokens == 1

    def no_loading(*_a, **_k):
        raise AssertionError("the re-run loaded the model for a file it could not read before")

    with monkeypatch.context() as m:
        m.setattr("mbm.collection.handle.load_model", no_loading)
        with Engine.open(tmp_path / "store") as again:
            report = again.index([tmp_path / "photos"])
    assert (report.tokens_filled, report.tokens_skipped, report.tokens_not_retried) == (0, [], 1)
    assert report.as_dict()["tokens_not_retried"] == 1
    report = eng.index([tmp_path / "photos"], rerank_tokens=True)  # asked for: tried again
    assert [p for p, _ in report.tokens_skipped] == [str(bad)] and report.tokens_not_retried == 0
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: indexed again, with tokens
    report = eng.index([tmp_path / "photos"])
    assert report.skipped and eng.info().items_without_tokens == 0
