"""GPU paths: run where a CUDA GPU is present, skip cleanly elsewhere (CI has none)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_cuda_encoder_matches_cpu(tiny_encoder):
    from mbm.models import load_model

    gpu = load_model("mbm-tiny", device="cuda", precision="fp32")
    texts = ["a red car", "a dog on the beach"]
    np.testing.assert_allclose(gpu.encode_texts(texts), tiny_encoder.encode_texts(texts), atol=1e-4)


def test_faiss_gpu_search_matches_cpu():
    import faiss

    from mbm.store.vectors import VectorIndex, gpu_count

    if gpu_count() == 0:
        pytest.skip("faiss was built without GPU support (pip install 'mbm[gpu]')")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex.build(np.arange(5000), x, generation=1, dim=64)
    _, ids = index.search(x[:20], 5)
    assert index._search_index is not index.index  # really on the GPU
    exact = np.argsort(-(x[:20] @ x.T), axis=1)[:, :5]
    assert (ids[:, 0] == exact[:, 0]).all()
    assert isinstance(faiss.get_num_gpus(), int)


def test_cuda_training_steps_lower_the_loss(tmp_path):
    from test_train import make_manifest, step_losses, tiny_config

    from mbm.train.loop import train

    manifest = make_manifest(tmp_path / "data", n_train=8, n_val=4, two_captions=False)
    train(tiny_config(manifest, tmp_path / "run", epochs=10, augment=0.0, val_every=0, lr=5e-3, w_itm=0.0, w_cls=0.0, device="cuda"))
    losses = step_losses(tmp_path / "run")
    assert losses[10][0] < 0.8 * losses[1][0]
