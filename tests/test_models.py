"""The model factory: specs, offline behaviour, precision and device choices."""

import json

import numpy as np
import pytest

from mbm.errors import ModelError, UsageError
from mbm.models import list_models, load_model
from mbm.models.factory import CONFIG_DIR, resolve_precision


def test_tiny_model_is_deterministic_and_normalized(tiny_encoder):
    again = load_model("mbm-tiny", device="cpu", precision="fp32")
    assert again.fingerprint == tiny_encoder.fingerprint
    v = again.encode_texts(["red car", "blue sky"])
    np.testing.assert_allclose(v, tiny_encoder.encode_texts(["red car", "blue sky"]))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v.dtype == np.float32 and v.shape == (2, tiny_encoder.dim)


def test_uncached_pretrained_fails_fast_offline(monkeypatch):
    import socket

    connects = []

    def refuse(*args, **kwargs):
        connects.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("MBM_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"not cached and offline mode is set \(MBM_OFFLINE=1\).*--model mbm-offline"):
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    assert connects == []  # decided before any network attempt: no 47-second retry loop


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no-such-model", "is not known"),
        ("ViT-B-32", "no pretrained tag"),
        ("ViT-B-32:no-such-tag", "not known for ViT-B-32"),
    ],
)
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec, device="cpu")


def test_checkpoint_folder_round_trip(tmp_path, tiny_encoder, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "runs" / "x" / "best"
    folder.mkdir(parents=True)
    cfg = json.loads((CONFIG_DIR / "mbm-tiny.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    state = {k: v.contiguous().clone() for k, v in tiny_encoder.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    monkeypatch.chdir(tmp_path)
    loaded = load_model("./runs/x/best", device="cpu", precision="fp32")
    assert loaded.spec == str(folder)  # the one spelling, whichever was typed and wherever
    np.testing.assert_allclose(loaded.encode_texts(["x y z"]), tiny_encoder.encode_texts(["x y z"]), atol=1e-6)
    again = load_model("runs/x/best", device="cpu", precision="fp32")
    assert (again.spec, again.fingerprint) == (loaded.spec, loaded.fingerprint)
    state["logit_scale"] += 1.0  # changes no embedding, but it is other weights
    save_file(state, str(folder / "open_clip_model.safetensors"))
    assert load_model(str(folder), device="cpu", precision="fp32").fingerprint != loaded.fingerprint


def test_a_failed_checkpoint_save_leaves_the_old_one_whole(tmp_path, tiny_encoder):
    from mbm.models.build import load_checkpoint, save_checkpoint

    cfg = json.loads((CONFIG_DIR / "mbm-tiny.json").read_text())
    folder = save_checkpoint(tiny_encoder.model, tmp_path / "best", cfg, extra={"epoch": 1})
    with pytest.raises(TypeError):
        save_checkpoint(tiny_encoder.model, folder, cfg, extra={"epoch": 2}, files={"optimizer.pt": "not bytes"})
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no half-built folder beside it
    assert json.loads((folder / "open_clip_config.json").read_text())["mbm"]["extra"] == {"epoch": 1}
    load_checkpoint(folder)


def test_a_failed_manifest_write_leaves_no_temporary_file(tmp_path):
    from mbm.train.sources.common import write_jsonl

    manifest = tmp_path / "manifest.jsonl"
    write_jsonl([{"image": "a.png"}], manifest)
    with pytest.raises(TypeError):
        write_jsonl([{"image": "b.png"}, {"image": object()}], manifest)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.jsonl"]
    assert manifest.read_text() == '{"image": "a.png"}\n'


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
