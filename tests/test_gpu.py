"""GPU paths: run where a CUDA GPU is present, skip cleanly elsewhere (CI has none)."""

import numpy as np
import pytest
from conftest import pattern_image

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_cuda_encoder_matches_cpu(tiny_encoder):
    from mbm.models import load_model

    gpu = load_model("mbm-tiny", device="cuda", precision="fp32")
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert gpu.fingerprint == tiny_encoder.fingerprint  # the same weights, wherever they run
    texts = ["a red car", "a dog on the beach", "x"]
    images = [pattern_image(i) for i in range(4)]
    for got, want in (
        (gpu.encode_texts(texts), tiny_encoder.encode_texts(texts)),
        (gpu.encode_images(images), tiny_encoder.encode_images(images)),
    ):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3)  # cuDNN may run the patch convolution in TF32
        assert (np.sum(got * want, axis=1) > 0.9999).all()


def test_faiss_gpu_search_matches_cpu():
    from mbm.store.catalog import CatalogState
    from mbm.store.vectors import VectorIndex, gpu_count

    if gpu_count() == 0:
        pytest.skip("faiss was built without GPU support (pip install 'mbm[gpu]')")
    rng = np.random.default_rng(0)
    n, k = 5000, 10
    x = rng.normal(size=(n, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[:200] + 0.1 * rng.normal(size=(200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(100, 100 + n)  # catalog ids are not row numbers
    index = VectorIndex.build(ids, x, CatalogState("gpu-test", 1, n), dim=64)
    gpu_scores, gpu_ids = index.search(queries, k)
    assert index._search_index is not index.index  # really searched on the GPU
    cpu_scores, cpu_ids = index.index.search(queries, k + 1)  # one more: to see ties at the k-th place
    np.testing.assert_allclose(gpu_scores, cpu_scores[:, :k], atol=1e-5)
    # ids agree everywhere except between results whose scores tie to float precision
    near = np.abs(np.diff(cpu_scores, axis=1)) < 1e-5
    ties = np.zeros((len(queries), k), bool)
    ties[:, 1:] |= near[:, : k - 1]
    ties |= near[:, :k]
    assert not ((gpu_ids != cpu_ids[:, :k]) & ~ties).any()
    assert (cpu_ids[:, 0] == ids[np.argmax(queries @ x.T, axis=1)]).all()  # and both are exact search
