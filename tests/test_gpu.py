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

