"""Tags at index time: stored, searchable, incremental, re-tagged when the vocabulary changes."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import make_images, pattern_image
from typer.testing import CliRunner

from mbm import Engine
from mbm.indexer.tagging import MAX_TAGS, MIN_CONFIDENCE, read_labels, retag, tag_items
from mbm.models.heads import ClassifierHead
from mbm.store.tags import tag_counts, tagging_progress, tags_of
from mbm.store.tags import untagged as untagged_ids

LABELS = ["alpha", "beta", "gamma"]


@pytest.fixture
def tagging_encoder(tiny_encoder):
    """The tiny model with a classifier head whose classes are the pictures of seeds 1, 2 and 3: a sharp scale,
    so each of those pictures gets its own label with a confidence near 1."""
    head = ClassifierHead(tiny_encoder.dim, LABELS)
    refs = tiny_encoder.encode_images([pattern_image(s) for s in (1, 2, 3)])
    head.init_from_text(torch.from_numpy(refs))
    with torch.no_grad():
        head.logit_scale.fill_(math.log(3000.0))
    return dataclasses.replace(tiny_encoder, heads={"classifier": head.eval()})


@pytest.fixture
def eng(tmp_path, tagging_encoder):
    with Engine.open(tmp_path / "store", "default", model="mbm-tiny", encoder=tagging_encoder) as e:
        yield e


def _item_tags(eng):
    catalog = eng.catalog()
    rows = catalog.rows([i for _, ids in catalog.paths() for i in ids])
    found = tags_of(catalog, list(rows))
    return {os.path.basename(rows[i]["path"]): found.get(i, []) for i in rows}


def test_index_stores_classifier_tags_with_confidences(tmp_path, eng):
    make_images(tmp_path / "photos", 6)
    eng.index([tmp_path / "photos"])
    tags = _item_tags(eng)
    for seed, label in zip((1, 2, 3), LABELS):
        top, score = tags[f"img{seed:04d}.png"][0]
        assert top == label and score > 0.9
    for found in tags.values():
        assert len(found) <= MAX_TAGS and all(MIN_CONFIDENCE <= s <= 1.0 for _, s in found)
    catalog = eng.catalog()
    assert tagging_progress(catalog, catalog.meta()["tags_vocabulary"]) == (6, 6)
    assert catalog.meta()["tags_source"] == "classifier"
    counts = {c.tag: c.items for c in tag_counts(catalog)}
    assert counts["alpha"] >= 1 and set(counts) <= set(LABELS)


def test_search_by_tag_and_tags_on_hits(tmp_path, eng):
    make_images(tmp_path / "photos", 6)
    eng.index([tmp_path / "photos"])
    tagged_beta = {n for n, t in _item_tags(eng).items() if any(tag == "beta" for tag, _ in t)}
    hits = eng.search("anything", k=10, tag="BETA")  # tags compare in any case
    assert {os.path.basename(h.path) for h in hits} == tagged_beta and "img0002.png" in tagged_beta
    assert all(any(t == "beta" for t, _ in h.tags) for h in hits)
    plain = eng.search("anything", k=3)
    assert all(h.tags is not None for h in plain)
    doc = plain[0].as_dict()
    assert isinstance(doc["tags"], list) and {"tag", "score"} <= set(doc["tags"][0]) if doc["tags"] else True
    assert eng.search("anything", k=5, tag="no-such-tag") == []
    # hybrid and keyword modes honour the tag too
    assert {h.path for h in eng.search("img0002", k=10, tag="beta", mode="keyword")} <= {h.path for h in hits}


def test_only_new_items_are_tagged_and_content_changes_retag(tmp_path, eng):
    photos = tmp_path / "photos"
    paths = make_images(photos, 4)
    eng.index([photos])
    catalog = eng.catalog(write=True)
    # a mark on every stored tag: a run that re-tagged an item would overwrite it
    with catalog.transaction() as conn:
        conn.execute("UPDATE item_tags SET score = 0.5")
    make_images(photos, 1, start=10)
    eng.index([photos])
    tags = _item_tags(eng)
    assert all(s == 0.5 for n, t in tags.items() if n != "img0010.png" for _, s in t)
    assert tags["img0010.png"] and all(s != 0.5 for _, s in tags["img0010.png"])
    # nothing left to tag: the model is not even asked
    assert tag_items(eng.catalog(write=True), lambda: pytest.fail("the model was loaded")) == 0
    # changed content: its old tags go with it (a trigger), the next run tags it again
    pattern_image(3).save(paths[0])
    os.utime(paths[0], ns=(1, 10**18))
    eng.index([photos])
    assert _item_tags(eng)["img0000.png"][0][0] == "gamma"
    # a deleted file leaves no tags behind
    paths[1].unlink()
    eng.index([photos])
    conn = eng.catalog().conn
    assert conn.execute("SELECT COUNT(*) FROM item_tags WHERE item_id NOT IN (SELECT id FROM items)").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM tagged WHERE item_id NOT IN (SELECT id FROM items)").fetchone()[0] == 0


def test_a_vocabulary_file_retags_everything_and_later_runs_keep_it(tmp_path, eng):
    photos = tmp_path / "photos"
    make_images(photos, 3)
    eng.index([photos])
    vocab = tmp_path / "tags.txt"
    vocab.write_text("# my tags\nsunny day\n\nrainy day  # comment\nsunny day\n")
    labels = read_labels(vocab)
    assert labels == ["sunny day", "rainy day"]
    assert retag(eng, labels) == 3
    tags = _item_tags(eng)
    assert all(t and {x for x, _ in t} <= set(labels) for t in tags.values())  # two labels: one is >= 0.5
    make_images(photos, 1, start=7)
    eng.index([photos])
    assert {x for x, _ in _item_tags(eng)["img0007.png"]} <= set(labels)
    assert eng.catalog().meta()["tags_source"] == "labels"
    assert retag(eng, None, reset=True) == 4
    assert {x for t in _item_tags(eng).values() for x, _ in t} <= set(LABELS)


def test_bad_vocabulary_files_are_refused(tmp_path):
    from mbm.errors import UsageError

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(UsageError, match="holds no tags"):
        read_labels(empty)
    with pytest.raises(UsageError, match="cannot be read"):
        read_labels(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        read_labels(latin)


def test_models_without_labels_tag_zero_shot_over_everyday_words(tmp_path, engine_factory):
    from mbm.indexer.tagging import EVERYDAY_TAGS

    make_images(tmp_path / "photos", 3)
    eng = engine_factory()
    eng.index([tmp_path / "photos"])
    catalog = eng.catalog()
    assert catalog.meta()["tags_source"] == "everyday"
    assert untagged_ids(catalog, catalog.meta()["tags_vocabulary"]) == []
    assert {t for ts in tags_of(catalog, [1, 2, 3]).values() for t, _ in ts} <= set(EVERYDAY_TAGS)


def test_cli_tags_counts_and_search_json(tmp_path, eng, monkeypatch, tagging_encoder):
    from mbm.cli import app

    make_images(tmp_path / "photos", 6)
    eng.index([tmp_path / "photos"])
    monkeypatch.setenv("MBM_HOME", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["tags", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tagged"] == doc["items"] == 6 and doc["source"] == "classifier"
    assert sum(t["items"] for t in doc["tags"]) >= 6 and {t["tag"] for t in doc["tags"]} <= set(LABELS)
    found = np.array([t["mean_score"] for t in doc["tags"]])
    assert ((found > 0) & (found <= 1)).all()


def test_concat_classifier_learns_from_the_text_half(tmp_path):
    from mbm.train.concat_classifier import ConcatClassifier, fit

    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    image = rng.normal(size=(200, 16))  # says nothing about the class
    text = rng.normal(scale=0.3, size=(200, 16)) + np.eye(16)[y] * 2  # says it plainly
    train, test = np.arange(150), np.arange(150, 200)
    labels = ["a", "b", "c", "d"]
    both = fit(image[train], text[train], y[train].tolist(), labels)
    alone = fit(image[train], None, y[train].tolist(), labels)
    acc_both = (both.logits(image[test], text[test]).argmax(1) == y[test]).mean()
    acc_alone = (alone.logits(image[test]).argmax(1) == y[test]).mean()
    assert acc_both >= 0.9 and acc_alone <= 0.5
    both.save(tmp_path)
    again = ConcatClassifier.load(tmp_path)
    assert again.labels == tuple(labels) and np.allclose(
        again.probabilities(image, text), both.probabilities(image, text)
    )


def test_trained_concat_classifier_tags_the_collection(tmp_path, engine_factory):
    from mbm.indexer.tagging import train_concat

    labelled = tmp_path / "labelled"
    for name, seeds in (("red", (1, 2, 3)), ("blue", (4, 5, 6))):
        folder = labelled / name
        folder.mkdir(parents=True)
        for s in seeds:
            pattern_image(s).save(folder / f"{name}_thing_{s}.png")
            (folder / f"{name}_thing_{s}.txt").write_text(f"a {name} thing\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    pattern_image(20).save(photos / "red_thing_new.png")
    pattern_image(21).save(photos / "blue_thing_new.png")
    eng = engine_factory()
    eng.index([photos])
    assert train_concat(eng, labelled) == 2
    catalog = eng.catalog()
    assert catalog.meta()["tags_source"] == "concat-classifier"
    tags = _item_tags(eng)
    assert tags["red_thing_new.png"][0][0] == "red" and tags["blue_thing_new.png"][0][0] == "blue"
    pattern_image(22).save(photos / "blue_thing_later.png")
    eng.index([photos])  # later index runs tag with it too
    assert _item_tags(eng)["blue_thing_later.png"][0][0] == "blue"


def test_batched_vectors_and_http_text_queries_carry_tags(tmp_path, eng, tagging_encoder):
    pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
    from fastapi.testclient import TestClient

    from mbm.server import ServerConfig, create_app

    make_images(tmp_path / "photos", 6)
    eng.index([tmp_path / "photos"])
    found, _ = eng.search_batch(eng.embed_texts(["anything", "else"]), k=3)
    assert all(h.tags is not None for hits in found for h in hits)
    served = {"default": Engine.open(tmp_path / "store", "default", encoder=tagging_encoder)}
    app = create_app(ServerConfig(store=tmp_path / "store"), served)
    with TestClient(app) as client:
        app.state.collections.wait_ready(60)
        hits = client.post("/search", json={"text": "anything", "k": 6}).json()["hits"]  # the micro-batched path
    by_name = {os.path.basename(h["path"]): h["tags"] for h in hits}
    assert by_name["img0002.png"] and by_name["img0002.png"][0]["tag"] == "beta"


class _CountingTexts:
    """An encoder's text side that counts how often it is asked to encode (the cache should spare it)."""

    def __init__(self, encoder, fingerprint=None, text_engine=None):
        self.encoder, self.calls = encoder, 0
        self.fingerprint, self.dim = fingerprint or encoder.fingerprint, encoder.dim
        self.text_engine = text_engine or encoder.text_engine

    def encode_texts(self, texts):
        self.calls += 1
        return self.encoder.encode_texts(texts)


def test_zero_shot_label_embeddings_are_cached_per_model_and_vocabulary(tmp_path, monkeypatch, tiny_encoder):
    from mbm.indexer.label_embeddings import cache_file, label_embeddings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prompts = ["a photo of a dog", "a photo of a cat"]
    counting = _CountingTexts(tiny_encoder)
    first = label_embeddings(counting, prompts)
    again = label_embeddings(counting, prompts)
    assert counting.calls == 1 and again.dtype == np.float32 and np.array_equal(first, again)
    np.testing.assert_allclose(first, tiny_encoder.encode_texts(prompts), atol=1e-6)
    label_embeddings(counting, prompts[:1])  # another vocabulary
    other = _CountingTexts(tiny_encoder, fingerprint="file:0123456789abcdef")  # other weights
    label_embeddings(other, prompts)
    onnx = _CountingTexts(tiny_encoder, text_engine="onnx")  # the same weights, another text engine
    label_embeddings(onnx, prompts)
    assert counting.calls == 2 and other.calls == 1 and onnx.calls == 1
    path = cache_file(tiny_encoder.fingerprint, prompts, tiny_encoder.text_engine)
    path.write_bytes(b"not an array")  # damaged: computed again and rewritten
    assert np.array_equal(label_embeddings(counting, prompts), first) and counting.calls == 3
    np.save(path, first[:1])  # another shape: not used
    assert np.array_equal(label_embeddings(counting, prompts), first) and counting.calls == 4
    assert label_embeddings(counting, prompts).shape == (2, tiny_encoder.dim) and counting.calls == 4


def test_zero_shot_tags_are_the_same_from_the_label_cache(tmp_path, monkeypatch, engine_factory):
    from mbm.indexer.label_embeddings import CACHE_DIR

    cache = tmp_path / "cache" / "mbm" / CACHE_DIR
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_images(tmp_path / "photos", 4)
    found = []
    for name in ("computed", "from-cache", "computed-again"):
        if name == "computed-again":
            for path in cache.iterdir():
                path.unlink()
        eng = engine_factory(name)
        eng.index([tmp_path / "photos"])  # the everyday vocabulary
        assert retag(eng, ["sunny day", "rainy day"]) == 4  # two labels: each item gets one at >= 0.5
        found.append(_item_tags(eng))
        assert len(list(cache.glob("*.npy"))) == 2
    assert found[0] == found[1] == found[2]
    assert all(found[0].values())


def test_the_classifier_scores_without_torch_as_the_torch_head_does(tmp_path):
    """Tagging reads a checkpoint's classifier with numpy (a fast-started encoder loads no torch heads for it; with
    the bundled model's ONNX image side an index run imports no torch at all), and scores as the loaded head does."""
    import subprocess
    import sys
    from pathlib import Path

    from mbm.indexer.tagging import classifier_vocabulary, model_classifier
    from mbm.models import load_model
    from mbm.models.build import create_from_config, load_model_cfg, save_checkpoint
    from mbm.models.classifier_numpy import CosineClassifier

    torch.manual_seed(0)
    model = create_from_config("mbm-tiny")[0]
    head = ClassifierHead(64, [f"label {i}" for i in range(7)], init_scale=12.0)
    with torch.no_grad():
        head.linear.weight.normal_()
        head.linear.bias.normal_(0, 0.1)
    folder = save_checkpoint(model, tmp_path / "tiny-cls", load_model_cfg("mbm-tiny"), heads=(None, head))
    loaded = load_model(str(folder), device="cpu", precision="fp32").heads["classifier"]
    ours = CosineClassifier.from_folder(folder)
    assert ours is not None and ours.labels == tuple(loaded.labels)
    emb = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    with torch.inference_mode():
        want = loaded(torch.from_numpy(emb)).double().numpy()
    assert np.abs(ours.logits(emb) - want).max() < 1e-4
    fresh = classifier_vocabulary(head)  # a head in memory scores by the same code
    with torch.inference_mode():
        assert np.allclose(fresh.scores(emb, []), torch.softmax(head(torch.from_numpy(emb)).double(), 1).numpy())
    assert CosineClassifier.from_folder(tmp_path) is None  # no heads: no classifier

    make_images(tmp_path / "pics", 3)
    code = (
        "import sys; from mbm.models import load_model; from mbm.indexer.tagging import model_classifier; "
        f"enc = load_model({str(folder)!r}, device='cpu', precision='fp32'); "
        "print(type(model_classifier(enc)).__name__, 'heads' in vars(enc), 'mbm.models.heads' in sys.modules)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):  # the first load leaves the start record; the second starts fast
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1]
        )
        assert out.returncode == 0, out.stderr
    # read from the folder: the heads (a torch module) were not loaded for it
    assert out.stdout.split()[-3:] == ["CosineClassifier", "False", "False"], out.stdout
    assert model_classifier(load_model(str(folder), device="cpu", precision="fp32")) is not None
