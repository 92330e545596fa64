"""JPEG decoding on the model's device (mbm.indexer.device_decode): its pixels match the CPU path's, EXIF
orientation included; a JPEG it cannot decode falls back to the CPU; an index run through it stores the
same facts and near-identical vectors. CUDA is what it is for; these run the same code on the CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import pattern_image
from PIL import Image

from mbm.indexer import device_decode, runner
from mbm.indexer.decode import decode, jpeg_header
from mbm.indexer.device_decode import DevicePixels, decode_on_device
from mbm.indexer.embed import Decoded, Encoded, Failed
from mbm.indexer.scan import FileEntry
from mbm.models.preprocess import pixel_transform

CFG = {"size": 64, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "interpolation": "bicubic"}


def photo(seed: int, size: tuple[int, int] = (150, 100)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    noise = rng.normal(0, 4, (size[1], size[0], 3))
    base = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC), np.float32)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_device_pixels_match_the_cpu_path_upright(orientation):
    data = jpeg(photo(orientation), orientation)
    facts, got_orientation = jpeg_header(data)
    cpu_image, cpu_facts = decode(data, 64)
    assert got_orientation == orientation and (facts.width, facts.height) == (cpu_facts.width, cpu_facts.height)
    want = pixel_transform(CFG)(cpu_image)
    got = DevicePixels(CFG, "cpu")([data], [orientation])[0].numpy()
    assert got.shape == want.shape == (3, 64, 64)
    std = np.asarray(CFG["std"], np.float32).reshape(3, 1, 1)
    diff = np.abs(got - want) * std * 255  # in 8-bit levels
    assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 3  # resampling code differs, the picture does not


def test_only_plain_jpegs_go_to_the_device_and_limits_still_hold():
    png = io.BytesIO()
    photo(0).save(png, "PNG")
    assert jpeg_header(png.getvalue()) is None
    assert jpeg_header(jpeg(photo(0).convert("CMYK"))) is None  # nvJPEG decodes neither
    with pytest.raises(Exception, match="over the 0 MP limit"):
        jpeg_header(jpeg(photo(0)), max_pixels=100)


def test_a_jpeg_the_device_refuses_is_decoded_on_the_cpu_or_fails_with_the_cpus_reason(monkeypatch):
    good, entry = jpeg(photo(1)), FileEntry("/x/a.jpg", 1, 1.0)
    facts, orientation = jpeg_header(good)
    decoder = DevicePixels(CFG, "cpu")
    monkeypatch.setattr(decoder, "_decode", lambda datas: [None] * len(datas))  # the GPU decodes nothing
    batch = [
        Encoded(entry, "h1", good, facts, orientation),
        Encoded(FileEntry("/x/b.jpg", 1, 1.0), "h2", good[:200], facts, 1),
    ]
    decode_on_device(batch, decoder, 64, pixel_transform(CFG), 10**8)
    assert isinstance(batch[0], Decoded) and batch[0].pixels.shape == (3, 64, 64)
    assert isinstance(batch[1], Failed) and "truncated" in batch[1].reason


def test_an_index_run_through_device_decoding_matches_the_cpu_run(tmp_path, engine_factory, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        (photos / f"p{i}.jpg").write_bytes(jpeg(photo(i, (120, 90)), orientation=6 if i == 2 else 1))
    pattern_image(9).save(photos / "drawing.png")
    (photos / "broken.jpg").write_bytes(jpeg(photo(7))[:300])
    plain = engine_factory("plain")
    plain.index([photos])
    used = []

    def on_cpu(device, cfg):
        used.append(cfg)
        return DevicePixels(cfg, "cpu")

    monkeypatch.setattr(runner, "device_pixels", on_cpu)
    eng = engine_factory("device")
    report = eng.index([photos])
    assert used and report.indexed == 6 and [p for p, _ in report.skipped] == [str(photos / "broken.jpg")]
    for path in sorted(photos.glob("*.jpg"))[1:] + [photos / "drawing.png"]:
        a, b = plain.search(path, k=1)[0], eng.search(path, k=1)[0]
        assert a.path == b.path == str(path)
        va, vb = plain.item_vector(a.id), eng.item_vector(b.id)
        assert float(np.dot(va, vb)) > 0.99
    rotated = next(h for h in eng.search(photos / "p2.jpg", k=1))
    assert (rotated.width, rotated.height) == (90, 120)  # upright size from the header


def test_decoding_goes_in_chunks_bounded_by_count_and_pixels(monkeypatch):
    monkeypatch.setattr(device_decode, "CHUNK", 3)
    monkeypatch.setattr(device_decode, "CHUNK_PIXELS", 100)
    assert device_decode.chunks([10, 10, 10, 10, 60, 50, 500, 1]) == [[0, 1, 2], [3, 4], [5], [6], [7]]


def test_no_device_decoding_without_cuda_or_when_turned_off(monkeypatch):
    assert device_decode.device_pixels("cpu", CFG) is None
    assert device_decode.device_pixels("cuda", None) is None
    monkeypatch.setenv(device_decode.ENV_SWITCH, "0")
    assert device_decode.device_pixels("cuda", CFG) is None
    monkeypatch.delenv(device_decode.ENV_SWITCH)
    if not torch.cuda.is_available():
        assert device_decode.device_pixels("cuda", CFG) is None
