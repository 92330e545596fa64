"""Every kind of bad or odd input: skipped with a reason, or decoded correctly."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mbm.indexer.decode import DecodeError, decode, read_file


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb) without the memory."""
    data = bytearray(_bytes(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        read_file(str(p))


def test_vanished_file(tmp_path):
    with pytest.raises(DecodeError, match="vanished"):
        read_file(str(tmp_path / "gone.jpg"))


def test_text_file_named_jpg():
    with pytest.raises(DecodeError, match="not an image"):
        decode(b"hello, I am text\n" * 10, 64)


def test_truncated_jpeg():
    data = _bytes(Image.effect_noise((400, 300), 60).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(DecodeError, match="truncated|corrupt|cannot decode"):
        decode(data[: len(data) // 2], 64)


def test_decompression_bomb_rejected_from_header():
    with pytest.raises(DecodeError, match="30000x30000"):
        decode(png_with_header_size(30000, 30000), 64)


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("L", "JPEG"),
        ("1", "BMP"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
        ("RGB", "PPM"),
        ("L", "PPM"),
        ("RGB", "GIF"),
    ],
)
def test_odd_modes_and_formats_become_rgb(mode, fmt):
    base = Image.effect_noise((40, 30), 50)
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base, np.uint16) * 200)
    out, facts = decode(_bytes(img, fmt), 16)
    assert out.mode == "RGB" and (facts.width, facts.height) == (40, 30)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    out, _ = decode(_bytes(img, "PNG"), 8)
    assert out.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_keeps_contrast():
    arr = np.linspace(0, 65535, 100 * 10).reshape(10, 100).astype(np.uint16)
    out, _ = decode(_bytes(Image.fromarray(arr), "PNG"), 8)
    gray = np.asarray(out)[..., 0]
    assert gray.min() == 0 and gray.max() == 255


def test_gif_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out, _ = decode(buf.getvalue(), 8)
    r, _, b = out.getpixel((out.width // 2, out.height // 2))
    assert r > 200 and b < 50


def test_exif_orientation_applied_and_upright_size_reported():
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x0132] = "2021:07:04 12:30:00"
    out, facts = decode(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), 64)
    assert out.size == (20, 60) and (facts.width, facts.height) == (20, 60)
    assert np.asarray(out)[:5, :, 0].mean() > 200  # the stripe is now on top
    assert facts.taken_at == "2021-07-04T12:30:00"


def test_jpeg_draft_mode_decodes_large_photo_small_but_not_below_target():
    big = Image.effect_noise((3000, 2000), 40).convert("RGB")
    out, facts = decode(_bytes(big, "JPEG", quality=80), 224)
    assert (facts.width, facts.height) == (3000, 2000)
    assert min(out.size) >= 224 and min(out.size) < 2000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_whole_file_handed_to_the_decoder_gives_pillows_own_pixels(fmt):
    from mbm.indexer.decode import DECODER_BLOCK

    photo = Image.effect_noise((1200, 800), 60).convert("RGB")  # compresses badly: well over Pillow's 64 KiB blocks
    data = _bytes(photo, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    assert 64 * 1024 < len(data) < DECODER_BLOCK
    reference = Image.open(io.BytesIO(data))
    if fmt == "JPEG":
        reference.draft("RGB", (336, 224))
    reference.load()
    out, _ = decode(data, 224 if fmt == "JPEG" else 800)  # a PNG is not reduced at its own size
    assert out.size == reference.size and np.array_equal(np.asarray(out), np.asarray(reference.convert("RGB")))
