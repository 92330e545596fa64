"""Fast starts (``mbm.models.light``): lazy imports, the same vectors, the cached query-encoder export.

Each test gets its own mbm cache (``XDG_CACHE_HOME``): start records, ONNX exports and query
encoders are made in it by a first, full load, as on a machine that never ran the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images
from PIL import Image

HEAVY = ("torch", "open_clip", "torchvision", "timm", "transformers")
ROOT = Path(__file__).parents[1]

# indexes argv[2] into store argv[1] with model argv[3]; prints what was imported when the first batch was stored
_CHILD = """
import json, sys
from mbm import Engine
seen = []
def progress(done, total):
    if done and not seen:
        seen.append(sorted(m for m in HEAVY_NAMES if m in sys.modules))
with Engine.open(sys.argv[1], model=sys.argv[3], precision="fp32") as eng:
    report = eng.index([sys.argv[2]], progress=progress)
    loaded = eng.encoder().loaded
print(json.dumps({"at_first_batch": seen[0], "indexed": report.indexed, "loaded_before_end": loaded}))
""".replace("HEAVY_NAMES", repr(HEAVY))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory, tiny_encoder):
    from mbm.models.build import load_model_cfg, save_checkpoint

    return save_checkpoint(tiny_encoder.model, tmp_path_factory.mktemp("ck") / "tiny-vit", load_model_cfg("mbm-tiny"))


@pytest.fixture(scope="module")
def vit_fusion_checkpoint(tmp_path_factory, tiny_encoder):
    """mbm-tiny's ViT with a random fusion head that pools its 4x4 patch tokens to 2x2 and reads the embedding."""
    import torch

    from mbm.models.build import load_model_cfg, save_checkpoint
    from mbm.models.fusion import FusionConfig, FusionModel

    torch.manual_seed(0)
    cfg = FusionConfig(width=32, layers=1, heads=2, text_dim=64, image_dim=64, image_grid=2, embed_dim=tiny_encoder.dim)
    folder = tmp_path_factory.mktemp("ck") / "tiny-vit-fusion"
    return save_checkpoint(tiny_encoder.model, folder, load_model_cfg("mbm-tiny"), heads=(FusionModel(cfg), None))


def _index_in_child(store: Path, pics: Path, spec: str, cache: Path) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "MBM_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), str(pics), spec],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stored(store: Path) -> dict[str, tuple[np.ndarray, bytes | None]]:
    """path -> (embedding, tokens) of a collection."""
    from mbm import Engine

    with Engine.open(store) as eng:
        catalog = eng.catalog()
        states = catalog.file_states()
        content = catalog.embedding_by_hash({s.hash for s in states.values()})
        dtype = np.dtype(catalog.meta().get("dtype", "float16"))
        return {p: (np.frombuffer(content[s.hash].embedding, dtype), content[s.hash].tokens) for p, s in states.items()}


# -- pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_numpy_preprocess_equals_open_clip(interpolation):
    import open_clip

    from mbm.models.preprocess import pixel_transform

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    rng = np.random.default_rng(0)
    for size in (64, 224):
        want = open_clip.image_transform(
            size, is_train=False, mean=mean, std=std, interpolation=interpolation, resize_mode="shortest"
        )
        cfg = {"size": [size, size], "mean": list(mean), "std": list(std), "interpolation": interpolation}
        got = pixel_transform({**cfg, "resize_mode": "shortest", "mode": "RGB"})
        assert got is not None
        for h, w in ((300, 451), (451, 300), (size, size), (size + 1, size), (20, 33)):
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            assert np.array_equal(got(image), want(image).numpy())
    assert pixel_transform({"size": 64, "mean": mean, "std": std, "resize_mode": "squash"}) is None


def test_own_vit_equals_open_clip(tiny_encoder):
    import torch

    from mbm.models import vit
    from mbm.models.build import load_model_cfg
    from mbm.models.tokens import image_tokens

    cfg = load_model_cfg("mbm-tiny")
    assert vit.supported(cfg)
    tower = vit.build(cfg, tiny_encoder.model.state_dict(), torch.float32)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        pooled, tokens = tower(pixels)
        want_pooled, want_tokens = image_tokens(tiny_encoder.model, pixels)
    assert torch.equal(pooled, want_pooled) and torch.equal(tokens, want_tokens)


def test_own_vit_declines_what_it_does_not_build():
    from mbm.models import vit
    from mbm.models.build import load_model_cfg

    cfg = load_model_cfg("mbm-tiny")
    for change in (
        {"attentional_pool": True},
        {"pool_type": "avg"},
        {"timm_model_name": "resnet18"},
        {"layers": [2, 2]},
    ):
        assert not vit.supported({**cfg, "vision_cfg": {**cfg["vision_cfg"], **change}}), change
    assert not vit.supported({**cfg, "multimodal_cfg": {}})
    assert not vit.supported(load_model_cfg("mbm-lite0"))


def test_auto_precision_keeps_conv_towers_in_fp32_without_amx(monkeypatch):
    from mbm.models import factory

    monkeypatch.setattr(factory, "cpu_bf16", lambda: "avx512")
    assert factory.resolve_precision("auto", "cpu") == "bf16"
    assert factory.resolve_precision("auto", "cpu", conv=True) == "fp32"
    monkeypatch.setattr(factory, "cpu_bf16", lambda: "amx")
    assert factory.resolve_precision("auto", "cpu", conv=True) == "bf16"
    assert factory.is_conv_spec("mbm-offline") and not factory.is_conv_spec("mbm-tiny")


# -- a ViT checkpoint: torch, but no open_clip -----------------------------------------------------------


@pytest.fixture
def torch_vit(monkeypatch):
    """ViT image sides stay in torch (in fp32 on the CPU they go to ONNX Runtime: tested on their own below)."""
    from mbm.models import image_onnx

    monkeypatch.setenv(image_onnx.ENV_SWITCH, "0")


def test_a_vit_checkpoint_starts_fast_with_the_same_vectors(tmp_path, cache, vit_checkpoint, torch_vit):
    from mbm import load_model

    full = load_model(str(vit_checkpoint), device="cpu", precision="fp32")  # leaves the start record
    assert full.loaded and full.pixels is not None
    fast = load_model(str(vit_checkpoint), device="cpu", precision="fp32")
    assert not fast.loaded and fast.fingerprint == full.fingerprint and fast.dim == full.dim
    images = [Image.open(p) for p in make_images(tmp_path / "pics", 3)]
    assert np.array_equal(fast.encode_images(images), full.encode_images(images))
    assert not fast.loaded  # images never needed open_clip
    assert np.array_equal(fast.encode_text_batch(["a red circle"])[0], full.encode_texts(["a red circle"]))
    assert fast.loaded  # texts with tokens load the whole model, on demand


def test_a_changed_checkpoint_loads_fully_again(tmp_path, cache, tiny_encoder):
    from mbm import load_model
    from mbm.models.build import load_model_cfg, save_checkpoint

    folder = save_checkpoint(tiny_encoder.model, tmp_path / "ck", load_model_cfg("mbm-tiny"))
    load_model(str(folder), device="cpu", precision="fp32")
    weights = folder / "open_clip_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # its stat key changes
    assert load_model(str(folder), device="cpu", precision="fp32").loaded


def test_indexing_a_vit_checkpoint_imports_no_open_clip_and_stores_the_same_vectors(
    tmp_path, cache, vit_checkpoint, torch_vit
):
    from mbm import Engine, load_model

    pics = tmp_path / "pics"
    make_images(pics, 5)
    full = load_model(str(vit_checkpoint), device="cpu", precision="fp32")
    with Engine.open(tmp_path / "full", model=str(vit_checkpoint), encoder=full) as eng:
        eng.index([pics])  # the whole model, given: decoding and loading do not overlap
    child = _index_in_child(tmp_path / "fast", pics, str(vit_checkpoint), cache)
    assert child["indexed"] == 5 and child["at_first_batch"] == ["torch"]
    want, got = _stored(tmp_path / "full"), _stored(tmp_path / "fast")
    assert want.keys() == got.keys() and all(np.array_equal(want[p][0], got[p][0]) for p in want)


def test_an_fp32_vit_checkpoint_indexes_in_onnx_runtime_without_torch_after_one_full_run(
    tmp_path, cache, vit_fusion_checkpoint
):
    pytest.importorskip("onnxruntime")
    from mbm import Engine, load_model
    from mbm.models import light

    pics = tmp_path / "pics"
    make_images(pics, 5)
    full = load_model(str(vit_fusion_checkpoint), device="cpu", precision="fp32")
    import torch

    batch = np.stack([full.pixels(Image.open(p).convert("RGB")) for p in sorted(pics.iterdir())])
    want = full._torch_image_batch(torch.from_numpy(batch), True)
    with Engine.open(tmp_path / "full", model=str(vit_fusion_checkpoint), encoder=full) as eng:
        eng.index([pics])  # the first batch exports the image side and checks it against open_clip's tower
    engines = light.read_record(str(vit_fusion_checkpoint))["engines"]
    assert engines["vit"] and engines["onnx"].endswith("-image.onnx")
    export = cache / "mbm" / "image-onnx" / engines["onnx"]
    assert len(list(export.parent.glob(engines["onnx"] + ".*.data"))) == 1  # its weights, mapped on load
    child = _index_in_child(tmp_path / "fast", pics, str(vit_fusion_checkpoint), cache)
    assert child["indexed"] == 5 and child["at_first_batch"] == [] and not child["loaded_before_end"]
    got = _stored(tmp_path / "fast")
    for i, path in enumerate(sorted(got)):  # ONNX Runtime (stored as float16) vs open_clip in torch
        vector, tokens = got[path]
        assert float(vector.astype(np.float32) @ want[0][i]) > 0.9995
        stored = np.frombuffer(tokens, np.float16).astype(np.float32)
        direct = want[1][i].astype(np.float32).ravel()
        assert float(stored @ direct / np.linalg.norm(stored) / np.linalg.norm(direct)) > 0.999


def test_an_image_side_exported_again_keeps_one_weights_file_and_is_removed_whole(tmp_path, tiny_encoder):
    pytest.importorskip("onnxruntime")
    from mbm.models import image_onnx, vit
    from mbm.models.build import load_model_cfg
    from mbm.models.image_engines import OnnxImage

    state = {f"visual.{k}": v for k, v in tiny_encoder.model.visual.state_dict().items()}
    tower = vit.build(load_model_cfg("mbm-tiny"), state, tiny_encoder.torch_dtype)
    path = tmp_path / "side.onnx"
    for _ in range(2):
        image_onnx.export_image_side(tower, None, 64, path)
    weights = list(tmp_path.glob("side.onnx.*.data"))
    assert len(weights) == 1 and sorted(p.name for p in tmp_path.iterdir()) == sorted(["side.onnx", weights[0].name])
    assert weights[0].stat().st_mode == path.stat().st_mode  # readable by whoever may read the graph
    pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = OnnxImage(path).encode(pixels)[0]
    assert float((got * tiny_encoder.encode_image_tensors(pixels)).sum(1).min()) > 0.9999
    image_onnx.remove_export(path)
    assert list(tmp_path.iterdir()) == []


# -- the bundled model: no torch at all ------------------------------------------------------------------


def test_indexing_the_bundled_model_imports_no_torch_before_its_first_batch(tmp_path, cache):
    pytest.importorskip("onnxruntime")
    from mbm import Engine

    pics = tmp_path / "pics"
    make_images(pics, 6)
    with Engine.open(tmp_path / "full", model="mbm-offline", precision="fp32") as eng:
        eng.index([pics])  # full load: exports the image side, checks it on the first batch, records it
        assert eng.encoder().loaded
    assert list((cache / "mbm" / "starts").glob("*.json"))
    child = _index_in_child(tmp_path / "fast", pics, "mbm-offline", cache)
    assert child["indexed"] == 6 and child["at_first_batch"] == []
    want, got = _stored(tmp_path / "full"), _stored(tmp_path / "fast")
    assert want.keys() == got.keys()
    for path, (vector, tokens) in want.items():  # ONNX Runtime vs torch, both stored as float16
        other, other_tokens = got[path]
        assert float(vector.astype(np.float32) @ other.astype(np.float32)) > 0.9995
        a, b = (np.frombuffer(t, np.float16).astype(np.float32) for t in (tokens, other_tokens))
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_a_broken_fast_start_falls_back_to_the_whole_model(tmp_path, cache, vit_checkpoint, monkeypatch, torch_vit):
    from mbm import load_model
    from mbm.models import vit

    full = load_model(str(vit_checkpoint), device="cpu", precision="fp32")
    monkeypatch.setattr(vit, "read_visual_state", lambda path: (_ for _ in ()).throw(OSError("unreadable")))
    fast = load_model(str(vit_checkpoint), device="cpu", precision="fp32")
    images = [Image.open(p) for p in make_images(tmp_path / "pics", 2)]
    assert np.array_equal(fast.encode_images(images), full.encode_images(images)) and fast.loaded


# -- the query encoder: exported once per model, copied into each collection -----------------------------


def test_the_query_encoder_is_exported_once_and_copied_into_each_collection(tmp_path, cache, vit_checkpoint):
    from mbm import Engine
    from mbm.models.query_encoder import QUERY_ENCODER_DIR, cached_export_dir

    pics = tmp_path / "pics"
    make_images(pics, 4)
    hits = []
    for name in ("a", "b"):
        with Engine.open(tmp_path / name, model=str(vit_checkpoint)) as eng:
            eng.index([pics])
            fingerprint = eng.encoder().fingerprint
        with Engine.open(tmp_path / name) as eng:  # right after indexing, in a new Engine: the exported tower
            hits.append([(h.path, round(h.score, 5)) for h in eng.search("a red circle", k=4)])
    cached = cached_export_dir(fingerprint) / "model.onnx.data"
    copies = [tmp_path / n / "collections" / "default" / QUERY_ENCODER_DIR / "model.onnx.data" for n in "ab"]
    assert cached.is_file() and all(c.stat().st_ino == cached.stat().st_ino for c in copies)
    assert hits[0] == hits[1] and len(hits[0]) == 4


def test_the_text_engine_is_known_without_loading_it_and_keys_the_tag_vocabulary(tmp_path, cache, vit_checkpoint):
    pytest.importorskip("onnxruntime")
    from mbm import Engine, load_model
    from mbm.indexer.label_embeddings import cache_file, label_embeddings

    full = load_model(str(vit_checkpoint), device="cpu", precision="fp32")  # leaves the start record
    assert full.text_engine == "torch-fp32"
    fast = load_model(str(vit_checkpoint), device="cpu", precision="fp32")
    assert fast.text_engine == "torch-fp32" and not fast.loaded  # its text tower is not exported yet
    make_images(tmp_path / "pics", 2)
    with Engine.open(tmp_path / "store", model=str(vit_checkpoint), encoder=full) as eng:
        eng.index([tmp_path / "pics"])  # exports the query encoder into the machine's cache
    fast = load_model(str(vit_checkpoint), device="cpu", precision="fp32")
    assert fast.text_engine == "onnx" and not fast.loaded
    prompts = ["a photo of a dog", "a photo of a cat"]
    got = label_embeddings(fast, prompts)  # exactly what the ONNX tower gives, cached apart from torch's
    assert np.array_equal(got, fast.encode_texts(prompts)) and not fast.loaded
    assert cache_file(fast.fingerprint, prompts, "onnx").is_file()
    assert not cache_file(fast.fingerprint, prompts, "torch-fp32").is_file()
    assert np.array_equal(label_embeddings(full, prompts), full.encode_texts(prompts))
    assert cache_file(fast.fingerprint, prompts, "torch-fp32").is_file()
