"""The evaluation-only sets: the photo table, the icon concepts, the manifests they write, the Wilson interval."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from mbm.train import evalsets
from mbm.train.evalsets import icons, photos
from mbm.train.recall import wilson_interval
from mbm.train.sources.common import load_manifest

FIELDS = {"image", "captions", "label", "source", "group", "split", "licence", "sha256", "origin"}


def test_photo_table_is_well_formed():
    table = photos.PHOTOS
    assert 25 <= len(table) <= 60
    assert len({p.id for p in table}) == len(table)
    assert len({p.path for p in table}) == len(table)
    captions = [c for p in table for c in p.captions]
    assert len(set(captions)) == len(captions), "a caption shared by two photos would have two right answers"
    for p in table:
        assert p.captions and all(c.strip() == c and len(c) > 3 for c in p.captions), p.id
        assert p.licence and p.author, p.id
        if p.wheel is None:
            assert p.path.startswith("/usr/share/") and p.source in photos.DEBIAN_PACKAGES, p.id
        else:
            assert not p.path.startswith("/"), p.id


def test_no_photo_comes_from_a_pooch_download():
    """scikit-image fetches most of skimage.data on first use; only files inside the wheel may be used."""
    for p in photos.PHOTOS:
        if p.wheel is None:
            continue
        path = photos.source_path(p)
        if path is None:
            pytest.skip(f"{p.wheel} is not installed")
        assert photos.shipped_in_wheel(p), f"{p.id}: {p.path} is not in {p.wheel}'s RECORD"
        assert path.is_relative_to(photos.package_dir(p.source)), p.id
        assert ".cache" not in path.parts and "pooch" not in str(path).lower()


def test_icon_concepts_have_distinct_captions():
    captions = [c for _, caps in icons.CONCEPTS.values() for c in caps]
    assert len(set(captions)) == len(captions)
    assert all(len(caps) >= 2 for _, caps in icons.CONCEPTS.values())
    assert len({t.style for t in icons.THEMES}) == len(icons.THEMES)
    assert all("never train" in icons.EVAL_ONLY for _ in icons.THEMES)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_rows(manifest: Path, split: str) -> list[dict]:
    rows = _rows(manifest)
    assert rows
    for r in rows:
        assert FIELDS <= set(r), set(r) ^ FIELDS
        assert r["split"] == split and r["captions"] and all(isinstance(c, str) and c for c in r["captions"])
        assert "evaluation only" in r["licence"]
        image = manifest.parent / r["image"]
        assert hashlib.sha256(image.read_bytes()).hexdigest() == r["sha256"]
    assert len(load_manifest(manifest)) == len(rows)  # the training manifest reader accepts it
    return rows


def test_build_photos_writes_manifest_rows_and_small_copies(tmp_path, monkeypatch):
    wheel = [p for p in photos.PHOTOS if p.wheel and photos.source_path(p)][:3]
    if not wheel:
        pytest.skip("scikit-image / scikit-learn not installed")
    missing = photos.Photo(
        "not_installed", "no-such-wallpapers", "/usr/share/no/such.jpg", "CC0-1.0", "x", ("nothing",)
    )
    monkeypatch.setattr(photos, "PHOTOS", (*wheel, missing))
    log = []
    manifest = evalsets.build_photos(tmp_path, max_side=200, log=log.append)
    rows = _check_rows(manifest, "photos")
    assert [r["group"] for r in rows] == [f"photo:{p.id}" for p in wheel]
    assert [r["captions"] for r in rows] == [list(p.captions) for p in wheel]
    for r in rows:
        with Image.open(tmp_path / r["image"]) as img:
            assert max(img.size) <= 200 and img.mode == "RGB"
    assert any("no-such-wallpapers" in line and "apt-get install" in line for line in log)
    assert any(f"{len(wheel)} photos" in line for line in log)
    again = tmp_path / "again"
    evalsets.build_photos(again, max_side=200, log=lambda _: None)
    assert _rows(again / evalsets.PHOTOS_FILE) == rows  # deterministic


def _theme(root: Path, folder: str, files: dict[str, Image.Image | str]) -> None:
    for rel, content in files.items():
        path = root / folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            content.save(path)


SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">'
    '<circle cx="8" cy="8" r="6" fill="#c00"/></svg>'
)


def test_icon_themes_pick_the_largest_drawing_and_share_groups(tmp_path, monkeypatch):
    red, blue = Image.new("RGBA", (64, 64), "red"), Image.new("RGBA", (128, 128), "blue")
    _theme(
        tmp_path,
        "A",
        {
            "48x48/devices/camera-photo.png": Image.new("RGBA", (48, 48), "green"),
            "128x128/devices/camera-photo.png": blue,
            "16x16/devices/printer.png": red,  # too small: left out
            "symbolic/devices/printer.svg": SVG,  # monochrome: left out
            "64x64/status/weather-storm.svg": SVG,
        },
    )
    _theme(
        tmp_path,
        "B",
        {"64/devices/camera-photo.png": red, "legacy/printer.png": blue, "64/status/weather-storm.svg": SVG},
    )  # the same drawing as theme A's: left out
    monkeypatch.setattr(icons, "ICON_ROOT", tmp_path)
    monkeypatch.setattr(
        icons,
        "THEMES",
        (
            icons.Theme("a", "a-icons", "A", "GPL-3.0"),
            icons.Theme("b", "b-icons", "B", "CC-BY-SA-4.0", skip_dirs=("legacy",)),
            icons.Theme("c", "c-icons", "C", "GPL-3.0"),
        ),
    )
    found = icons.find_icons(icons.THEMES[0])
    assert found == {
        "camera-photo": tmp_path / "A/128x128/devices/camera-photo.png",
        "weather-storm": tmp_path / "A/64x64/status/weather-storm.svg",
    }
    log = []
    manifest = evalsets.build_icon_themes(tmp_path / "out", size=32, log=log.append)
    rows = _check_rows(manifest, "style-shift")
    assert [(r["style"], r["group"]) for r in rows] == [
        ("a", "icon:camera-photo"),
        ("a", "icon:weather-storm"),
        ("b", "icon:camera-photo"),
    ]
    assert rows[0]["captions"] == list(icons.CONCEPTS["camera-photo"][1]) and rows[0]["label"] == "devices"
    with Image.open(tmp_path / "out" / rows[1]["image"]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
        assert img.getpixel((16, 16))[0] > 150 and img.getpixel((0, 0)) == (255, 255, 255)  # red disc on white
    assert any("c not installed" in line and "c-icons" in line for line in log)


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(1, 2) == pytest.approx((0.09453, 0.90547), abs=1e-5)
    lo, hi = wilson_interval(36, 108)
    lo2, hi2 = wilson_interval(72, 108)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2))  # symmetric in hits <-> misses
    assert lo < 36 / 108 < hi
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_find_eval_manifest_next_to_the_manifest_or_beside_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "cache" / "mbm-data"
    data.mkdir(parents=True)
    manifest = data / "manifest.jsonl"
    manifest.write_text("")
    assert evalsets.find_eval_manifest("photos.jsonl", manifest) is None
    beside = tmp_path / "cache" / "mbm-eval" / "photos.jsonl"
    beside.parent.mkdir()
    beside.write_text("")
    assert evalsets.find_eval_manifest("photos.jsonl", manifest) == beside
    (data / "photos.jsonl").write_text("")
    assert evalsets.find_eval_manifest("photos.jsonl", manifest) == data / "photos.jsonl"
    assert evalsets.find_eval_manifest("photos.jsonl", None) == Path("cache/mbm-eval/photos.jsonl")
