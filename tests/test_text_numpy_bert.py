"""The torch-free query path for Hugging Face BERT text towers (the bundled model's MiniLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from mbm.models.text_numpy import CONFIG_FILE, WEIGHTS_FILE, UnsupportedTextTower
from mbm.models.text_numpy_bert import TOKENIZER_FILE, NumpyBertEncoder, export_bert_tower

TEXTS = ["red car", "A  yellow school bus.", "", "café & crème brûlée", "a very long caption " * 20, "t-shirt", "&amp; more"]


@pytest.fixture(scope="module")
def tiny_hf_encoder():
    from mbm.models import load_model

    return load_model("mbm-tiny-hf", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_hf_encoder):
    folder = tmp_path_factory.mktemp("bert")
    export_bert_tower(tiny_hf_encoder.model, tiny_hf_encoder.tokenizer, folder)
    return folder


def test_vectors_match_the_torch_model(exported, tiny_hf_encoder):
    numpy_encoder = NumpyBertEncoder.load(exported)
    assert numpy_encoder is not None and numpy_encoder.dim == tiny_hf_encoder.dim
    ours, theirs = numpy_encoder.encode_texts(TEXTS), tiny_hf_encoder.encode_texts(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.min((ours * theirs).sum(1)) > 0.9999  # float16 matrices (MiniLM has 22M parameters)
    assert np.allclose(numpy_encoder.encode_texts(TEXTS[:1]), ours[:1], atol=1e-6)  # batch-independent


def test_token_ids_match_open_clip(exported, tiny_hf_encoder):
    numpy_encoder = NumpyBertEncoder.load(exported)
    ids = numpy_encoder.tokenize(TEXTS)
    reference = tiny_hf_encoder.tokenizer(TEXTS).numpy()
    assert np.array_equal(ids, reference[:, : ids.shape[1]]) and not reference[:, ids.shape[1]:].any()


def test_load_refuses_absent_partial_and_mismatched(tmp_path, exported):
    assert NumpyBertEncoder.load(tmp_path / "nothing") is None
    assert sorted(p.name for p in exported.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE])
    config = json.loads((exported / CONFIG_FILE).read_text())
    other = tmp_path / "other"
    other.mkdir()
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        (other / name).write_bytes((exported / name).read_bytes())
    for bad in ({"export_id": "another export"}, {"version": 99}, {"layers": 7}):
        (other / CONFIG_FILE).write_text(json.dumps({**config, **bad}))
        assert NumpyBertEncoder.load(other) is None, bad
    (other / CONFIG_FILE).write_text(json.dumps(config))
    assert NumpyBertEncoder.load(other) is not None
    (other / TOKENIZER_FILE).unlink()
    assert NumpyBertEncoder.load(other) is None


def test_clip_text_towers_are_refused(tmp_path, tiny_encoder):
    with pytest.raises(UnsupportedTextTower):
        export_bert_tower(tiny_encoder.model, tiny_encoder.tokenizer, tmp_path)


def test_engine_exports_it_and_a_cold_text_search_needs_no_torch(tmp_path):
    from mbm import Engine

    make_images(tmp_path / "pics", 4)
    store = tmp_path / "store"
    with Engine.open(store, model="mbm-tiny-hf") as eng:
        eng.index([tmp_path / "pics"])
        expected = [h.path for h in eng.search("a red circle", k=4)]
    assert (store / "collections" / "default" / "query_encoder" / TOKENIZER_FILE).is_file()
    code = (
        "import sys; from mbm import Engine; "
        f"eng = Engine.open({str(store)!r}); hits = eng.search('a red circle', k=4); "
        "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules)); print([h.path for h in hits])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    imported, paths = out.stdout.strip().splitlines()
    assert imported == "[]" and paths == repr(expected)
