"""The torch-free text tower (mbm.models.text_numpy) must give open_clip's tokens and vectors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbm.models.text_numpy import CONFIG_FILE, WEIGHTS_FILE, ClipTokenizer, NumpyTextEncoder, UnsupportedTextTower, export_text_tower

TEXTS = [
    "red car", "A Dog on the BEACH", "  extra   whitespace\tand\nnewlines  ", "numbers 123, 4.5% and 1e-3",
    "punctuation!?;:,. ...", "café crème brûlée", "naïve RÉSUMÉ", "an emoji 🚗🚲 of a car", "日本語のテキスト",
    "it's they're we've I'LL", "&amp;amp; html entities &lt;b&gt;", "", "x", "word " * 60, "<end_of_text> typed in",
]
MORE = [
    "a photo of a cat", "Photo of TWO dogs", "dog's toy", "t-shirt", "e.g. i.e.", "HTTP/2 over TLS", "C++ & C#",
    "user@example.com", "https://example.com/a?b=c", "2024-01-01T12:00:00Z", "3.14159", "1,000,000", "½ ¼ ¾", "x²",
    "Привет мир", "Ελληνικά", "مرحبا بالعالم", "שלום", "हिन्दी", "中文 字符", "한국어", "ไทย", "Ünïcödé", "ß straße",
    "İstanbul", "ﬁnance ligature", "ｆｕｌｌｗｉｄｔｈ", "curly “quotes” ‘and’ apostrophe’s", "em—dash – en", "tab\tsep",
    "zero\u200bwidth", "nbsp\u00a0space", "\x1b[31mansi", "ctrl\x0bchar", "mojibake cafÃ©", "emoji 👍🏽 skin", "flag 🇫🇷",
    "family 👨‍👩‍👧", "<start_of_text>", "a <b> tag", "&copy; 2020", "&#39;quoted&#39;", "don't can't won't",
    "ALLCAPS SENTENCE", "mIxEd CaSe", "snake_case_word", "camelCaseWord", "!!!???", "...", "a" * 300,
    "supercalifragilisticexpialidocious", "the quick brown fox jumps over the lazy dog " * 3,
]
VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def _torch_vectors(model, tokenizer, texts):
    import torch

    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1).numpy()


def _perturbed(model):
    """Random init leaves biases 0 and LayerNorm weights 1: perturb so every weight is exercised."""
    import torch

    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("visual"):
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _custom(**text_cfg):
    import torch
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(0)
    return _perturbed(CustomTextCLIP(32, VISION, {**TEXT, **text_cfg}))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder):
    folder = tmp_path_factory.mktemp("text_tower")
    export_text_tower(tiny_encoder.model, tiny_encoder.tokenizer, folder)  # the tokenizer object, checked by behaviour
    return folder


def test_tokenizer_matches_open_clip(tiny_encoder):
    from open_clip.tokenizer import SimpleTokenizer

    ours, theirs = ClipTokenizer(77), SimpleTokenizer(context_length=77)
    texts = TEXTS + MORE
    assert np.array_equal(ours(texts), theirs(texts).numpy())
    assert np.array_equal(ClipTokenizer(32)(texts), tiny_encoder.tokenizer(texts).numpy())  # truncation keeps EOT last


def test_vectors_match_open_clip(exported, tiny_encoder):
    enc = NumpyTextEncoder.load(exported)
    assert enc.config["dtype"] == "float32" and enc.config["activation"] == "gelu"  # 3.3M params: float32
    got, want = enc.encode_texts(TEXTS), tiny_encoder.encode_texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    one_by_one = np.concatenate([enc.encode_texts([t]) for t in TEXTS])  # batching (padding) changes nothing
    assert np.abs(one_by_one - got).max() < 1e-5
    assert enc.encode_texts([]).shape == (0, enc.dim)


def test_quick_gelu_clip_matches():
    import open_clip

    from mbm.models.factory import _import_open_clip

    model = _perturbed(_import_open_clip().create_model("mbm-tiny", pretrained=None, force_quick_gelu=True))
    tokenizer = open_clip.get_tokenizer("mbm-tiny")
    _check_roundtrip(model, tokenizer, {"kind": "clip-bpe"}, activation="quick_gelu")


@pytest.mark.parametrize(
    "text_cfg, expect",
    [
        ({"ls_init_value": 0.5, "proj_bias": True}, {"layer_scale": True, "projection": "linear"}),
        ({"pool_type": "last"}, {"pool_type": "last"}),
        ({"pool_type": "first"}, {"pool_type": "first"}),
        ({"pool_type": "eos", "eos_id": 49407}, {"pool_type": "eos"}),
        ({"act_kwargs": {"approximate": "tanh"}, "proj_type": "none"}, {"activation": "gelu_tanh", "projection": "none"}),
    ],
)
def test_custom_text_clip_variants_match(tmp_path, text_cfg, expect):
    from open_clip.tokenizer import SimpleTokenizer

    _check_roundtrip(_custom(**text_cfg), SimpleTokenizer(context_length=16), {"kind": "clip-bpe", "context_length": 16}, **expect)


def _check_roundtrip(model, tokenizer, info, **expect):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        export_text_tower(model, info, folder)
        enc = NumpyTextEncoder.load(folder)
    assert {k: enc.config[k] for k in expect} == expect
    assert np.abs(enc.encode_texts(TEXTS) - _torch_vectors(model, tokenizer, TEXTS)).max() < 1e-4


def test_bf16_model_and_float16_export(tmp_path, tiny_encoder):
    import torch

    bf16 = copy.deepcopy(tiny_encoder.model).to(torch.bfloat16)
    export_text_tower(bf16, {"kind": "clip-bpe"}, tmp_path / "bf16")
    want = _torch_vectors(bf16.float(), tiny_encoder.tokenizer, TEXTS)  # the same (bf16-rounded) weights in fp32
    assert np.abs(NumpyTextEncoder.load(tmp_path / "bf16").encode_texts(TEXTS) - want).max() < 1e-4

    export_text_tower(tiny_encoder.model, {"kind": "clip-bpe"}, tmp_path / "half", dtype="float16")
    half = NumpyTextEncoder.load(tmp_path / "half")
    assert half.config["dtype"] == "float16"
    cos = (half.encode_texts(TEXTS) * tiny_encoder.encode_texts(TEXTS)).sum(1)
    assert cos.min() > 0.999


def test_unsupported_towers_are_refused(tmp_path, tiny_encoder):
    import torch

    for text_cfg in ({"no_causal_mask": True}, {"qk_norm": True}, {"embed_cls": True}):
        with pytest.raises(UnsupportedTextTower):
            export_text_tower(_custom(**text_cfg), {"kind": "clip-bpe"}, tmp_path)
    hf_like = _custom()
    hf_like.text = torch.nn.Identity()  # stands in for HFTextEncoder (building one needs transformers: seconds)
    with pytest.raises(UnsupportedTextTower, match="not open_clip's TextTransformer"):
        export_text_tower(hf_like, {"kind": "clip-bpe"}, tmp_path)
    with pytest.raises(UnsupportedTextTower, match="not open_clip's TextTransformer"):
        export_text_tower(object(), {"kind": "clip-bpe"}, tmp_path)
    with pytest.raises(UnsupportedTextTower, match="tokenizer"):
        export_text_tower(tiny_encoder.model, {"kind": "HFTokenizer"}, tmp_path)
    from open_clip.tokenizer import SimpleTokenizer

    with pytest.raises(UnsupportedTextTower, match="tokenizer"):  # keeps case: not the default cleaning
        export_text_tower(tiny_encoder.model, SimpleTokenizer(context_length=32, clean="whitespace"), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written for a refused tower


def test_load_refuses_absent_partial_and_mismatched(tmp_path, exported):
    assert NumpyTextEncoder.load(tmp_path / "nothing") is None
    assert sorted(p.name for p in exported.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left
    for name in (CONFIG_FILE, WEIGHTS_FILE):  # one file of the pair missing
        (tmp_path / f"only-{name}").mkdir()
        (tmp_path / f"only-{name}" / name).write_bytes((exported / name).read_bytes())
        assert NumpyTextEncoder.load(tmp_path / f"only-{name}") is None
    other = tmp_path / "other"
    other.mkdir()
    (other / WEIGHTS_FILE).write_bytes((exported / WEIGHTS_FILE).read_bytes())
    config = json.loads((exported / CONFIG_FILE).read_text())
    for bad in ({"export_id": "another export"}, {"version": 99}, {"activation": "swish"}, {"layers": 3}):
        (other / CONFIG_FILE).write_text(json.dumps({**config, **bad}))
        assert NumpyTextEncoder.load(other) is None, bad
    (other / CONFIG_FILE).write_text("{not json")
    assert NumpyTextEncoder.load(other) is None
    (other / CONFIG_FILE).write_text(json.dumps(config))
    assert NumpyTextEncoder.load(other) is not None


def test_query_path_imports_neither_torch_nor_open_clip(exported):
    code = (
        "import sys; from mbm.models.text_numpy import NumpyTextEncoder as E; "
        f"v = E.load({str(exported)!r}).encode_texts(['a red car on a street']); assert v.shape[0] == 1; "
        "print(sorted(m for m in ('torch', 'open_clip', 'ftfy', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
