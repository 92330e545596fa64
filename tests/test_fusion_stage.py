"""`mbm train-fusion`: a fusion head trained for a frozen dual encoder on its own hard negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train import make_manifest
from typer.testing import CliRunner

from mbm.cli import app
from mbm.models import load_model
from mbm.train.fusion_stage import DUAL_WEIGHTS, FusionStageConfig, Side, mine, train_fusion

TINY = {"width": 32, "layers": 1, "heads": 2, "max_text_tokens": 8, "image_grid": 2}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("pairs"), n_train=16, n_val=8)


def test_mined_negatives_leave_out_every_positive():
    emb = np.eye(4, dtype=np.float32)
    side = Side(
        image_emb=emb,
        image_tokens=torch.zeros(4, 1, 1),
        text_emb=emb[[0, 1]],
        text_tokens=torch.zeros(2, 1, 1),
        text_mask=torch.ones(2, 1, dtype=torch.bool),
        positives=[np.array([0, 2]), np.array([1])],
    )
    mined = mine(side, 3)
    assert set(mined[0][mined[0] >= 0]) == {1, 3}  # caption 0 is carried by pictures 0 and 2: neither is a negative
    assert 1 not in mined[1] and len(mined[1][mined[1] >= 0]) == 3


def _check_output(out, base_dim):
    enc = load_model(str(out))
    fusion = enc.heads["fusion"]
    assert fusion.cfg.embed_dim == base_dim == enc.dim  # the image embedding is one of its tokens
    assert fusion.cfg.dual_weight in DUAL_WEIGHTS
    report = json.loads((out / "fusion_stage.json").read_text())
    assert len(report["epochs"]) == 1 and report["dual_weight"] == fusion.cfg.dual_weight
    for key in ("dual", "w=0.0", "best_dual_weight"):
        assert key in report["start"]
    return enc


def _train_tiny_head(base: str, manifest, out) -> None:
    """One epoch of a tiny fusion head for ``base`` on the test manifest, written to ``out``."""
    cfg = FusionStageConfig(
        base=base,
        manifest=str(manifest),
        out_dir=str(out),
        epochs=1,
        batch_size=4,
        negatives=3,
        mine_top=6,
        val_top=4,
        warmup=1,
        fusion=TINY,
    )
    train_fusion(cfg)


def test_fusion_head_for_an_mbm_model(manifest, tmp_path):
    torch.manual_seed(0)
    _train_tiny_head("mbm-tiny", manifest, tmp_path / "out")
    base = load_model("mbm-tiny")
    enc = _check_output(tmp_path / "out", base.dim)
    pixels = torch.rand(2, 3, enc.image_size, enc.image_size)
    np.testing.assert_allclose(
        enc.encode_image_tensors(pixels), base.encode_image_tensors(pixels), atol=1e-5
    )  # towers frozen


def test_fusion_head_for_an_open_clip_model_without_one(manifest, tmp_path):
    """The path a pretrained CLIP takes (it has no fusion head): here the architecture with random weights."""
    _train_tiny_head("ViT-S-32:random", manifest, tmp_path / "clip")
    enc = _check_output(tmp_path / "clip", 384)
    assert enc.heads["fusion"].cfg.text_dim == 384  # CLIP's text tokens (ln_final), not a HF tower's


def test_train_fusion_command_errors_name_the_fix(tmp_path):
    result = CliRunner().invoke(app, ["train-fusion", "mbm-tiny", str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception) or "does not exist" in result.output


def test_a_new_head_for_a_checkpoint_folder_leaves_its_bases_calibration_behind(manifest, tmp_path):
    """The base's re-ranking calibration weighs the base's own head: the new folder re-ranks by its own."""
    import shutil

    from mbm.models.specs import spec_folder
    from mbm.retrieval import hubness

    base = tmp_path / "base"
    shutil.copytree(spec_folder("mbm-offline"), base)
    assert (base / hubness.RERANK_FILE).is_file()
    _train_tiny_head(str(base), manifest, tmp_path / "out")
    assert (tmp_path / "out" / "mbm_heads.json").is_file()
    assert hubness.load(tmp_path / "out") is None
