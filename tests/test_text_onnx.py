"""The torch-free query path (mbm.models.text_onnx): open_clip's tokens and vectors without torch."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from mbm.models.query_encoder import export_query_encoder, load_query_encoder
from mbm.models.text_onnx import (
    CONFIG_FILE,
    DATA_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    OnnxTextEncoder,
)
from mbm.models.text_tokenizers import ClipTokenizer

TEXTS = [
    "red car",
    "A Dog on the BEACH",
    "  extra   whitespace\tand\nnewlines  ",
    "numbers 123, 4.5% and 1e-3",
    "punctuation!?;:,. ...",
    "café crème brûlée",
    "naïve RÉSUMÉ",
    "an emoji 🚗🚲 of a car",
    "日本語のテキスト",
    "it's they're we've I'LL",
    "&amp;amp; html entities &lt;b&gt;",
    "",
    " ",
    "\t\n",
    "x",
    "word " * 60,
    "<end_of_text> typed in",
]
MORE = [
    "a photo of a cat",
    "Photo of TWO dogs",
    "t-shirt",
    "C++ & C#",
    "https://example.com/a?b=c",
    "½ ¼ ¾",
    "Привет мир",
    "مرحبا بالعالم",
    "हिन्दी",
    "中文 字符",
    "ß straße",
    "ﬁnance ligature",
    "ｆｕｌｌｗｉｄｔｈ",
    "curly “quotes” ‘and’",
    "zero\u200bwidth",
    "nbsp\u00a0space",
    "ctrl\x0bchar",
    "family 👨‍👩‍👧",
    "<start_of_text>",
    "a" * 300,
    "the quick brown fox jumps over the lazy dog " * 3,
]
ALL = TEXTS + MORE


def _export(encoder, folder: Path) -> Path:
    assert export_query_encoder(encoder, folder)
    return folder


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory, tiny_encoder):
    return _export(tiny_encoder, tmp_path_factory.mktemp("clip") / "qe")


@pytest.fixture(scope="module")
def tiny_hf_encoder():
    from mbm.models import load_model

    return load_model("mbm-tiny-hf", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory, tiny_hf_encoder):
    return _export(tiny_hf_encoder, tmp_path_factory.mktemp("hf") / "qe")


def test_clip_tokenizer_matches_open_clip(tiny_encoder):
    from open_clip.tokenizer import SimpleTokenizer

    assert np.array_equal(ClipTokenizer(77)(ALL), SimpleTokenizer(context_length=77)(ALL).numpy())
    assert np.array_equal(ClipTokenizer(32)(ALL), tiny_encoder.tokenizer(ALL).numpy())  # truncation keeps EOT last


def test_hf_token_ids_match_open_clip(hf_export, tiny_hf_encoder):
    ids = OnnxTextEncoder.load(hf_export).tokenize(ALL)
    reference = tiny_hf_encoder.tokenizer(ALL).numpy()
    assert np.array_equal(ids, reference[:, : ids.shape[1]]) and not reference[:, ids.shape[1] :].any()


@pytest.mark.parametrize("kind", ["clip", "hf"])
def test_vectors_match_the_torch_model(kind, request):
    folder = request.getfixturevalue(f"{kind}_export")
    torch_encoder = request.getfixturevalue("tiny_encoder" if kind == "clip" else "tiny_hf_encoder")
    onnx_encoder = load_query_encoder(folder, torch_encoder.fingerprint)
    assert isinstance(onnx_encoder, OnnxTextEncoder) and onnx_encoder.dim == torch_encoder.dim
    ours, theirs = onnx_encoder.encode_texts(ALL), torch_encoder.encode_texts(ALL)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.min((ours * theirs).sum(1)) >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    one_by_one = np.concatenate([onnx_encoder.encode_texts([t]) for t in ALL])
    assert np.abs(one_by_one - ours).max() < 1e-5  # a batch's padding changes no row
    assert onnx_encoder.encode_texts([]).shape == (0, torch_encoder.dim)


def test_export_files_and_source_contract(clip_export, tiny_encoder):
    assert sorted(p.name for p in clip_export.iterdir()) == sorted([CONFIG_FILE, DATA_FILE, MODEL_FILE, "source.json"])
    source = json.loads((clip_export / "source.json").read_text())
    assert source == {
        "fingerprint": tiny_encoder.fingerprint,
        "spec": tiny_encoder.spec,
        "supported": True,
        "format": "onnx",
    }
    assert load_query_encoder(clip_export, "other weights") is None
    assert not export_query_encoder(tiny_encoder, clip_export)  # once per fingerprint


def test_hf_export_keeps_its_tokenizer(hf_export):
    assert {TOKENIZER_FILE, DATA_FILE, MODEL_FILE}.issubset(p.name for p in hf_export.iterdir())


def test_an_old_numpy_export_is_exported_again(tmp_path, tiny_encoder):
    folder = tmp_path / "qe"
    folder.mkdir()
    (folder / "text_tower.json").write_text(json.dumps({"format": "mbm-text-numpy"}))
    (folder / "source.json").write_text(
        json.dumps({"fingerprint": tiny_encoder.fingerprint, "spec": "mbm-tiny", "supported": True})
    )
    assert load_query_encoder(folder, tiny_encoder.fingerprint) is None
    assert export_query_encoder(tiny_encoder, folder)
    assert (
        not (folder / "text_tower.json").exists() and load_query_encoder(folder, tiny_encoder.fingerprint) is not None
    )


def test_an_unsupported_tower_is_recorded_and_falls_back(tmp_path, tiny_encoder):
    from open_clip.model import CLIP

    class Scaled(CLIP):
        def encode_text(self, text, normalize=False):  # a forward the export does not reproduce
            return super().encode_text(text, normalize) * 2

    model = copy.deepcopy(tiny_encoder.model)
    model.__class__ = Scaled
    odd = dataclasses.replace(tiny_encoder, model=model, fingerprint="scaled")
    folder = tmp_path / "qe"
    assert not export_query_encoder(odd, folder)
    assert [p.name for p in folder.iterdir()] == ["source.json"]
    assert json.loads((folder / "source.json").read_text())["supported"] is False
    assert load_query_encoder(folder, "scaled") is None
    assert not export_query_encoder(odd, folder)  # not tried again for the same weights


def test_without_the_export_packages_nothing_is_written(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec then reports it missing
    assert not export_query_encoder(tiny_encoder, tmp_path / "qe")
    assert not (tmp_path / "qe").exists()


def test_load_refuses_absent_and_partial(tmp_path, clip_export):
    assert OnnxTextEncoder.load(tmp_path / "nothing") is None
    for missing in (MODEL_FILE, DATA_FILE, CONFIG_FILE):
        partial = tmp_path / f"without-{missing}"
        partial.mkdir()
        for p in clip_export.iterdir():
            if p.name != missing:
                (partial / p.name).write_bytes(p.read_bytes())
        assert OnnxTextEncoder.load(partial) is None, missing
    (partial / CONFIG_FILE).write_text("{not json")
    assert OnnxTextEncoder.load(partial) is None


def _python(code: str) -> str:
    """Run ``code`` in a new interpreter from the repository root; its stdout (it must succeed)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("kind", ["clip", "hf"])
def test_loading_and_encoding_import_no_torch(kind, request):
    folder = request.getfixturevalue(f"{kind}_export")
    code = (
        "import sys; from mbm.models.text_onnx import OnnxTextEncoder as E; "
        f"v = E.load({str(folder)!r}).encode_texts(['a red car on a street', 'café']); assert v.shape[0] == 2; "
        "print(sorted(m for m in ('torch', 'open_clip', 'transformers', 'onnx', 'onnxscript') if m in sys.modules))"
    )
    assert _python(code).strip() == "[]"


def test_engine_exports_it_and_a_cold_text_search_needs_no_torch(tmp_path):
    from mbm import Engine

    make_images(tmp_path / "pics", 4)
    store = tmp_path / "store"
    with Engine.open(store, model="mbm-tiny-hf") as eng:
        eng.index([tmp_path / "pics"])
        expected = [h.path for h in eng.search("a red circle", k=4)]
    assert (store / "collections" / "default" / "query_encoder" / MODEL_FILE).is_file()
    code = (
        "import sys; from mbm import Engine; "
        f"eng = Engine.open({str(store)!r}); hits = eng.search('a red circle', k=4); "
        "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules)); print([h.path for h in hits])"
    )
    imported, paths = _python(code).strip().splitlines()
    assert imported == "[]" and paths == repr(expected)


def test_a_damaged_cached_export_is_made_again_not_copied(tmp_path, tiny_encoder, monkeypatch):
    from mbm.models.query_encoder import cached_export_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert export_query_encoder(tiny_encoder, tmp_path / "a")
    cached = cached_export_dir(tiny_encoder.fingerprint) / DATA_FILE
    cached.unlink()  # replaced whole, as the cache's files only ever are: collection a keeps its hard link
    cached.write_bytes(b"not the weights")
    assert export_query_encoder(tiny_encoder, tmp_path / "b")  # exported again, not the damaged copy
    assert load_query_encoder(tmp_path / "b", tiny_encoder.fingerprint) is not None
    assert load_query_encoder(tmp_path / "a", tiny_encoder.fingerprint) is not None
