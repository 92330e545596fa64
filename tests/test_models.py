"""The model factory: specs, offline behaviour, precision and device choices."""

import time

import numpy as np
import pytest

from mbm.errors import ModelError, UsageError
from mbm.models import list_models, load_model
from mbm.models.factory import resolve_precision


def test_tiny_model_is_deterministic_and_normalized(tiny_encoder):
    again = load_model("mbm-tiny", device="cpu", precision="fp32")
    assert again.fingerprint == tiny_encoder.fingerprint
    v = again.encode_texts(["red car", "blue sky"])
    np.testing.assert_allclose(v, tiny_encoder.encode_texts(["red car", "blue sky"]))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v.dtype == np.float32 and v.shape == (2, tiny_encoder.dim)


def test_uncached_pretrained_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("MBM_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="not cached and the network is unreachable"):
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    assert time.perf_counter() - t0 < 20  # no 47-second retry loop (generous for slow CI)


@pytest.mark.parametrize("spec,message", [("no-such-model", "is not known"), ("ViT-B-32", "no pretrained tag"),
                                          ("ViT-B-32:no-such-tag", "not known for ViT-B-32")])
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec, device="cpu")


def test_checkpoint_folder_round_trip(tmp_path, tiny_encoder):
    import json

    import open_clip
    from safetensors.torch import save_file

    cfg = json.loads(open(__import__("mbm.models.factory", fromlist=["x"]).CONFIG_DIR / "mbm-tiny.json").read())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in tiny_encoder.model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    loaded = load_model(str(tmp_path), device="cpu", precision="fp32")
    assert loaded.fingerprint.startswith("file:")
    np.testing.assert_allclose(loaded.encode_texts(["x y z"]), tiny_encoder.encode_texts(["x y z"]), atol=1e-6)
    assert open_clip is not None


def test_precision_and_device_choices():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(UsageError, match="fp16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(UsageError, match="not known"):
        resolve_precision("int3", "cpu")


def test_list_models_marks_weights_presence():
    rows = {m.spec: m for m in list_models()}
    assert rows["mbm-tiny"].weights_present and "tests" in rows["mbm-tiny"].note
    assert any(m.kind == "open_clip pretrained" for m in rows.values())
