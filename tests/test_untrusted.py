"""Untrusted image files: nothing reaches a risky decoder, memory stays bounded, no global of the host changes."""

import io
import os
import struct
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from conftest import make_images
from PIL import EpsImagePlugin, Image, ImageFile, PngImagePlugin

from mbm.indexer import decode as decode_mod
from mbm.indexer.decode import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT,
    MAX_FILE_BYTES,
    DecodeError,
    PixelBudget,
    decode,
    read_file,
)
from mbm.indexer.embed import Failed, StageClock, make_preparer
from mbm.indexer.scan import FileEntry, one_line

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def load_sizes(monkeypatch):
    """The size of every image Pillow loads (after draft), i.e. what its decoder allocates."""
    sizes = []
    original = ImageFile.ImageFile.load

    def load(self):
        sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


# -- 1. format allowlist ----------------------------------------------------------------------------


def test_eps_named_jpg_never_reaches_the_eps_plugin(tmp_path, monkeypatch):
    assert EpsImagePlugin._accept(EPS[:16])  # Pillow's sniffing alone would hand these bytes to EPS
    calls = []

    def record(*args, **kwargs):
        calls.append(args)
        raise AssertionError("EPS plugin reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", record)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", record)
    path = tmp_path / "photo.jpg"
    path.write_bytes(EPS)
    with pytest.raises(DecodeError, match="PostScript/EPS, not an image format mbm decodes .*JPEG.*PNG"):
        decode(read_file(str(path))[0], 64)
    assert calls == []
    assert not {"EPS", "PDF"} & set(decode_mod.allowed_formats())


def test_allowlist_is_the_indexed_extensions():
    formats = set(decode_mod.allowed_formats())
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"} <= formats
    assert not formats & {"PSD", "ICO", "TGA", "PCX", "SGI", "FITS", "XBM"}  # Pillow reads them; mbm skips them


# -- 2. no global of the host changes -----------------------------------------------------------------

_SNAPSHOT = """
import json, logging, os, sys, warnings
import numpy  # its import adds warning filters of its own, in any program that uses it
from PIL import Image, ImageFile
def snap():
    return repr((Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, sorted(Image.OPEN), list(Image.ID),
                 sorted(Image.EXTENSION.items()), sorted(Image.MIME.items()), dict(os.environ),
                 logging.getLogger().level, logging.getLogger().handlers, [str(f) for f in warnings.filters],
                 sys.getrecursionlimit(), sys.get_int_max_str_digits()))
before = snap()
import mbm, mbm.indexer.decode, mbm.indexer.embed, mbm.indexer.runner, mbm.indexer.texts
after = snap()
print(json.dumps({"same": before == after, "before": before, "after": after, "torch": "torch" in sys.modules}))
"""


def test_import_changes_no_global_of_the_host():
    import json

    out = subprocess.run([sys.executable, "-c", _SNAPSHOT], capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"], (result["before"], result["after"])
    assert not result["torch"]  # so torch's RNG state cannot have been touched either


def test_host_pillow_limit_is_neither_used_nor_changed(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a host that is stricter than mbm
    data = _bytes(Image.effect_noise((120, 100), 40).convert("RGB"), "PNG")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out, facts = decode(data, 16)
    assert (facts.width, facts.height) == (120, 100) and out.mode == "RGB"
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_pillow_limit_at_load_is_a_clear_reason(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # TIFF checks it again when it allocates
    data = _bytes(Image.new("RGB", (120, 100)), "TIFF")
    with pytest.raises(DecodeError, match="Pillow's own size limit.*MAX_IMAGE_PIXELS"):
        decode(data, 16)


def test_concurrent_decodes_leave_the_warning_filters_alone(monkeypatch):
    # catch_warnings swaps the process-wide filter list: two overlapping threads leave it changed.
    before = list(warnings.filters)
    gates = [(threading.Event(), threading.Event()), (threading.Event(), threading.Event())]
    arrivals, first = iter(gates), threading.local()
    original = PngImagePlugin.PngImageFile.load

    def load(self):
        if not getattr(first, "seen", False):  # each thread waits at its first load only
            first.seen = True
            inside, go = next(arrivals)
            inside.set()
            go.wait(30)
        return original(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load, raising=False)
    data = _bytes(Image.new("RGB", (20, 20)), "PNG")
    threads = [threading.Thread(target=decode, args=(data, 8), daemon=True) for _ in gates]
    threads[0].start()
    assert gates[0][0].wait(30)
    threads[1].start()
    assert gates[1][0].wait(30)
    gates[0][1].set()  # the first to enter leaves first
    threads[0].join(30)
    gates[1][1].set()
    threads[1].join(30)
    assert not any(t.is_alive() for t in threads)
    assert warnings.filters == before


# -- 3. memory per image is bounded -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "I;16"])
def test_big_image_is_reduced_before_any_full_size_conversion(monkeypatch, mode):
    w, h, min_side = 2400, 1800, 64
    x = np.linspace(0, 1, w)[None, :] * np.linspace(0, 1, h)[:, None]
    rgba = Image.fromarray(np.dstack([x * 255, (1 - x) * 255, x * 128, 255 - x * 200]).astype(np.uint8), "RGBA")
    if mode == "P":
        img = rgba.convert("RGB").quantize(64)
        img.info["transparency"] = 0
    elif mode == "I;16":
        img = Image.fromarray((x * 60000).astype(np.uint16))
    else:
        img = rgba.convert(mode)
    data = _bytes(img, "PNG")
    converted = []
    convert, composite = Image.Image.convert, Image.alpha_composite

    def spy_convert(self, *args, **kwargs):
        converted.append(self.width * self.height)
        return convert(self, *args, **kwargs)

    def spy_composite(a, b):
        converted.append(a.width * a.height)
        return composite(a, b)

    monkeypatch.setattr(Image.Image, "convert", spy_convert)
    monkeypatch.setattr(Image, "alpha_composite", spy_composite)
    out, facts = decode(data, min_side)
    assert (facts.width, facts.height) == (w, h) and out.mode == "RGB"
    assert min_side <= min(out.size) < 2 * min_side  # about what the model needs
    assert converted and max(converted) <= decode_mod._STRIP_PIXELS < w * h


def test_reduction_by_strips_matches_reducing_the_whole_image(monkeypatch):
    monkeypatch.setattr(decode_mod, "_STRIP_PIXELS", 5000)  # many strips of 31 rows
    x = np.linspace(0, 1, 700)[None, :] * np.linspace(0, 1, 500)[:, None]
    arr = np.dstack([x * 255, np.full_like(x, 90), (1 - x) * 255, 255 - x * 255]).astype(np.uint8)
    img = Image.fromarray(arr, "RGBA")
    out, _ = decode(_bytes(img, "PNG"), 16)
    factor = 500 // 16
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    expected = Image.alpha_composite(white, img).convert("RGB").reduce(factor)
    assert out.size == expected.size
    assert np.abs(np.asarray(out, np.int16) - np.asarray(expected, np.int16)).max() <= 2


@pytest.mark.parametrize("size", [(4000, 20), (20, 4000)])
def test_extreme_aspect_ratio_keeps_the_centre(size):
    long_side = max(size)
    ramp = np.tile(np.linspace(0, 255, long_side).astype(np.uint8), (min(size), 1))
    img = Image.fromarray(ramp if size[0] > size[1] else ramp.T, "L")
    out, facts = decode(_bytes(img, "PNG"), 16)
    assert (facts.width, facts.height) == size
    assert max(out.size) == MAX_ASPECT * min(out.size) == MAX_ASPECT * min(size)
    centre = np.asarray(out)[..., 0]
    assert abs(int(centre.mean()) - 127) <= 2 and centre.min() > 100  # the middle of the ramp, not an end


def test_panorama_is_kept_whole():
    img = Image.effect_noise((3200, 400), 40).convert("RGB")  # 8:1
    out, _ = decode(_bytes(img, "JPEG", quality=85), 64)
    assert out.width / out.height == pytest.approx(8, rel=0.02)


def test_preprocess_intermediate_stays_small(tiny_encoder):
    img = Image.new("RGB", (100000, 10), (200, 30, 30))
    out, _ = decode(_bytes(img, "PNG"), tiny_encoder.image_size)
    assert out.width * out.height <= MAX_ASPECT * 10 * 10
    assert tuple(tiny_encoder.preprocess(out).shape[1:]) == (tiny_encoder.image_size,) * 2


def test_oversized_file_is_rejected_from_its_scan_size_without_opening_it(tmp_path, tiny_encoder):
    entry = FileEntry(str(tmp_path / "not-there.jpg"), MAX_FILE_BYTES + 1, 0)
    result = make_preparer(tiny_encoder.preprocess, 64, set(), DEFAULT_MAX_PIXELS, StageClock())(entry)
    assert isinstance(result, Failed) and "over the 512 MiB limit for an image" in result.reason


def test_pixel_budget_waits_for_room_and_lets_a_huge_image_through_alone():
    budget = PixelBudget(100)
    entered = []

    def second():
        with budget.hold(60):
            entered.append(budget.in_use)

    with budget.hold(60):
        t = threading.Thread(target=second, daemon=True)
        t.start()
        while budget.waiting == 0 and t.is_alive():
            threading.Event().wait(0.001)
        assert budget.waiting == 1 and entered == []  # 60 + 60 does not fit in 100
    t.join(30)
    assert entered == [60] and budget.in_use == 0
    with budget.hold(500):  # bigger than the whole budget: it runs alone
        assert budget.in_use == 500


def test_decode_holds_the_budget_for_the_pixels_it_decodes(monkeypatch):
    budget = PixelBudget()
    held = []
    original = ImageFile.ImageFile.load

    def load(self):
        held.append((budget.in_use, self.size))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    decode(_bytes(Image.effect_noise((300, 200), 40).convert("RGB"), "PNG"), 32, budget=budget)
    assert held and set(held) == {(300 * 200, (300, 200))} and budget.in_use == 0


def test_mpo_is_decoded_in_draft_mode(load_sizes):
    frames = [Image.effect_noise((2000, 1500), 40).convert("RGB") for _ in range(2)]
    data = _bytes(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    load_sizes.clear()
    out, facts = decode(data, 224)
    assert (facts.width, facts.height) == (2000, 1500)
    assert set(load_sizes) == {(500, 375)} and min(out.size) >= 224


# -- 4. a file that stops being a regular file ----------------------------------------------------------


def test_fifo_between_scan_and_read_does_not_hang(tmp_path, tiny_encoder):
    path = tmp_path / "photo.jpg"
    os.mkfifo(path)
    prepare = make_preparer(tiny_encoder.preprocess, 64, set(), DEFAULT_MAX_PIXELS, StageClock())
    results = []
    t = threading.Thread(target=lambda: results.append(prepare(FileEntry(str(path), 1000, 0))), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the reader so the thread can end, then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert isinstance(results[0], Failed) and "not a regular file" in results[0].reason


def test_symlink_to_a_file_is_read(tmp_path):
    (target,) = make_images(tmp_path / "real", 1)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert read_file(str(link))[0] == target.read_bytes()


# -- 5. broken EXIF ---------------------------------------------------------------------------------


def _exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """Raw EXIF (little-endian TIFF, one IFD) with (tag, type, count, 4-byte value) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_exif_that_pillow_cannot_rewrite_keeps_the_image_readable_and_rotated():
    # ImageLength stored as 4 BYTEs: Pillow reads it, but exif_transpose fails re-serializing it
    exif = _exif([(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x0101, 1, 4, b"\x01\x02\x03\x04")])
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))
    out, facts = decode(_bytes(img, "JPEG", exif=exif, quality=95), 64)
    assert out.size == (20, 60) and (facts.width, facts.height) == (20, 60)
    assert np.asarray(out)[:5, :, 0].mean() > 200


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_impossible_orientation_leaves_the_image_as_stored(orientation):
    exif = _exif([(0x0112, 3, 1, struct.pack("<HH", orientation, 0))])
    out, facts = decode(_bytes(Image.new("RGB", (60, 20)), "JPEG", exif=exif), 64)
    assert out.size == (60, 20) and (facts.width, facts.height) == (60, 20)


@pytest.mark.parametrize(
    "stamp,expected",
    [
        ("0000:00:00 00:00:00", None),
        ("2021:13:01 10:00:00", None),
        ("2021:02:30 10:00:00", None),
        ("    :  :     :  :  ", None),
        ("2021:07:04 25:00:00", None),
        ("2021:07:04 12:30:00\x00", "2021-07-04T12:30:00"),
        ("2021-07-04 12:30:00", "2021-07-04T12:30:00"),
    ],
)
def test_exif_dates_are_validated(stamp, expected):
    exif = Image.Exif()
    exif[0x0132] = stamp
    _, facts = decode(_bytes(Image.new("RGB", (30, 20)), "JPEG", exif=exif.tobytes()), 16)
    assert facts.taken_at == expected


def test_skip_reasons_are_one_line():
    assert one_line("cannot decode: bad\nthing\r\n\x00here") == "cannot decode: bad thing here"
    assert len(one_line("x" * 10000)) <= 300


# -- 7. which copy of identical content comes first -------------------------------------------------------


def test_first_copy_in_input_order_wins_whatever_the_thread_timing(tmp_path, engine_factory, monkeypatch):
    from mbm.indexer import embed

    photos = tmp_path / "photos"
    others = make_images(photos, 7, start=10)  # sort between the two copies
    eng = engine_factory()
    eng.index([photos])
    for p in others:  # touched: re-read, reused as Known, and they fill a batch before the second copy
        os.utime(p, ns=(1, 10**18))
    (copy,) = make_images(tmp_path / "src", 1, start=3)
    first, last = photos / "a_copy.png", photos / "z_copy.png"
    first.write_bytes(copy.read_bytes())
    last.write_bytes(copy.read_bytes())

    last_decoding = threading.Event()
    current = threading.local()
    read, dec = embed.read_file, embed.decode

    def slow_read(path):
        if path == str(first):  # adversarial: the first copy is read after the last one decodes
            assert last_decoding.wait(60)
        current.path = path
        return read(path)

    def spy_decode(data, *args, **kwargs):
        if current.path == str(last):
            last_decoding.set()
        return dec(data, *args, **kwargs)

    monkeypatch.setattr(embed, "read_file", slow_read)
    monkeypatch.setattr(embed, "decode", spy_decode)
    # batch_size=1 flushes every 8 reused files; 8 workers keep all 9 files in flight at once
    report = eng.index([photos], batch_size=1, workers=8)
    assert last_decoding.is_set()
    assert report.ok, report.skipped
    assert (report.indexed, report.reused) == (1, 8)
    catalog = eng.catalog()
    rows = catalog.file_states()
    assert rows[str(first)].hash == rows[str(last)].hash
    _, vecs = catalog.embeddings_of([rows[str(first)].ids[0], rows[str(last)].ids[0]])
    assert np.allclose(vecs[0], vecs[1])
