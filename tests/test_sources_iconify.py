"""The iconify source (npm @iconify/json) on a tiny fake package, and splits that do not
depend on rendered bytes."""

from __future__ import annotations

import json
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("resvg_py")
pytest.importorskip("emoji")

from mbm.train.sources import (  # noqa: E402
    BuildJob,
    SourceMissing,
    assign_splits,
    build_all,
    iconify,  # noqa: E402
    load_manifest,
    split_hashes,
)
from mbm.train.sources.iconify import names, package, policy, render, svg  # noqa: E402

RED = '<path fill="#d22" d="M4 18h28v8H4z"/><circle cx="10" cy="28" r="4" fill="#222"/>'
HAND = '<path fill="#fc3" d="M8 6h20v24H8z"/>'
MONO = '<path fill="currentColor" d="M2 10h16v6H2z"/><circle cx="6" cy="18" r="2" fill="currentColor"/>'

FAKE_SETS = {
    # MIT colour emoji with chars (codepoint -> name); fire-engine has none: joined by CLDR name
    "fakemoji": {
        "prefix": "fakemoji",
        "width": 36,
        "height": 36,
        "info": {
            "name": "Fake Emoji",
            "author": {"name": "A. Maker", "url": "https://example.org/fakemoji"},
            "license": {"title": "MIT", "spdx": "MIT"},
            "palette": True,
        },
        "icons": {
            "automobile": {"body": RED},
            "waving-hand": {"body": HAND},
            "waving-hand-medium-skin-tone": {"body": HAND.replace("#fc3", "#a63")},
            "fire-engine": {"body": RED.replace("#d22", "#e11")},
            "ghost-of-nothing": {"body": HAND},
            "old": {"body": HAND, "hidden": True},
            "blank-face": {"body": '<path fill="#fff" d="M0 0h36v36H0z"/>'},
        },
        "chars": {
            "1f697": "automobile",
            "1f44b": "waving-hand",
            "1f44b-1f3fd": "waving-hand-medium-skin-tone",
            "1f636": "blank-face",
        },
        "aliases": {"red-car": {"parent": "automobile"}},
    },
    # share-alike: never used
    "sharemoji": {
        "prefix": "sharemoji",
        "width": 36,
        "height": 36,
        "info": {
            "name": "Share Emoji",
            "author": {"name": "B"},
            "license": {"title": "CC BY-SA 4.0", "spdx": "CC-BY-SA-4.0"},
        },
        "icons": {"automobile": {"body": RED}},
        "chars": {"1f697": "automobile"},
    },
    # mono pictograms (currentColor), CC-BY: attribution
    "monopict": {
        "prefix": "monopict",
        "width": 24,
        "height": 24,
        "info": {
            "name": "Mono Pictograms",
            "author": {"name": "C. Drawer", "url": "https://example.org/mono"},
            "license": {
                "title": "CC BY 4.0",
                "spdx": "CC-BY-4.0",
                "url": "https://creativecommons.org/licenses/by/4.0/",
            },
        },
        "icons": {
            "fire-truck": {"body": MONO},
            "fire-truck-outline": {"body": MONO.replace("10h16", "9h15")},
            "car": {"body": MONO},
            "arrow-left": {"body": MONO},
            "camera-off": {"body": MONO},
            "teapot": {"body": MONO, "width": 32},
            "format-bold": {"body": MONO},
        },
        "categories": {"Transport": ["fire-truck", "car"]},
    },
}


def make_package(folder: Path) -> Path:
    (folder / "package" / "json").mkdir(parents=True)
    for prefix, data in FAKE_SETS.items():
        (folder / "package" / "json" / f"{prefix}.json").write_text(json.dumps(data))
    (folder / "package" / "package.json").write_text(json.dumps({"name": "@iconify/json", "version": "0.0.1"}))
    return folder / "package"


def make_emojilib(folder: Path) -> Path:
    (folder / "dist").mkdir(parents=True)
    (folder / "dist" / "emoji-en-US.json").write_text(
        json.dumps({"🚗": ["automobile", "red", "car", "vehicle", ":)"], "👋": ["waving_hand", "hello", "wave"]}),
        encoding="utf-8",
    )
    return folder


SETS = {"emoji_sets": ("fakemoji", "sharemoji"), "pictogram_sets": ("monopict",)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iconify")
    pkg, lib = make_package(tmp / "npm"), make_emojilib(tmp / "emojilib")
    out = tmp / "out"
    report: Counter = Counter()
    logs: list[str] = []
    rows = iconify.build(BuildJob(out, size=48, report=report, log=logs.append), root=pkg, emojilib=lib, **SETS)
    return {"rows": rows, "out": out, "pkg": pkg, "lib": lib, "report": report, "logs": logs, "tmp": tmp}


def test_rows_licences_and_emoji_groups(built):
    rows = built["rows"]
    by = {r["origin"]: r for r in rows}
    assert not [r for r in rows if r["style"] == "sharemoji"], "CC-BY-SA set must be refused"
    assert built["report"]["iconify: set sharemoji refused: licence CC-BY-SA-4.0"] == 1
    car = by["iconify:fakemoji:automobile"]
    assert car["group"] == "emoji:1f697" and car["licence"] == "MIT" and car["source"] == "iconify"
    assert car["style"] == "fakemoji" and car["captions"][0] == "automobile"
    assert "an emoji of an automobile" in car["captions"]
    assert "automobile, red, vehicle" in car["captions"]  # emojilib keywords: one caption, no ":)"
    assert by["iconify:fakemoji:fire-engine"]["group"] == "emoji:1f692"  # joined by CLDR name
    assert by["iconify:fakemoji:waving-hand"]["group"] == "emoji:1f44b"
    assert "iconify:fakemoji:waving-hand-medium-skin-tone" not in by  # base kept, variant skipped
    assert "iconify:fakemoji:old" not in by and "iconify:fakemoji:ghost-of-nothing" not in by
    assert built["report"]["iconify: renders blank"] == 1  # blank-face
    assert built["report"]["iconify: fakemoji: name matches no emoji concept"] == 1
    for r in rows:
        img = Image.open(built["out"] / r["image"])
        assert img.size == (48, 48) and img.mode == "RGB"


def test_pictograms_concepts_colours_and_attribution(built):
    rows = [r for r in built["rows"] if r["style"] == "monopict"]
    assert sorted(r["group"] for r in rows) == ["pictogram:car", "pictogram:fire truck", "pictogram:teapot"]
    truck = next(r for r in rows if r["group"] == "pictogram:fire truck")
    assert truck["origin"] == "iconify:monopict:fire-truck"  # "-outline" collapsed onto the base
    assert truck["captions"] == ["fire truck", "fire truck, transport", "an icon of a fire truck"]
    assert truck["licence"] == "CC-BY-4.0" and truck["colour"] in svg.DARK_COLOURS
    px = Image.open(built["out"] / truck["image"]).convert("L")
    assert px.getextrema()[0] < 80  # currentColor became a dark colour, not transparent/black-on-none
    text = (built["out"] / "ATTRIBUTION.md").read_text()
    assert "| Mono Pictograms | `monopict` | [C. Drawer](https://example.org/mono) |" in text
    assert "| 3 |" in text and "sharemoji" not in text
    assert "`fakemoji` (MIT" in text  # listed, but not in the CC-BY table


def test_licence_table():
    assert policy.set_licence("x", {"license": {"spdx": "CC-BY-SA-4.0"}})[0] is None
    assert policy.set_licence("x", {"license": {"spdx": "GPL-3.0"}})[0] is None
    assert policy.set_licence("x", {"license": {"spdx": "CC-BY-NC-4.0"}})[0] is None
    assert policy.set_licence("x", {"license": {"spdx": "Something-Else"}})[0] is None
    assert policy.set_licence("x", {"license": {"spdx": "BSD-3-Clause"}})[0] == "BSD-3-Clause"
    assert policy.set_licence("fxemoji", {"license": {"spdx": "Apache-2.0"}})[0] == "CC-BY-4.0"
    assert policy.set_licence("emojione-v1", {"license": {"spdx": "MIT"}})[0] is None


@pytest.mark.parametrize(
    "name,want",
    [
        ("fire-truck", "fire truck"),
        ("fire-truck-outline", "fire truck"),
        ("teapot-2", "teapot"),
        ("airplane-24-regular", "airplane"),
        ("camera-off", None),
        ("arrow-left", None),
        ("format-bold", None),
        ("alpha-b", None),
        ("battery-50", "battery"),
        ("mdi-3d-box", None),
        ("logo-github", None),
        ("very-long-name-of-some-thing", None),
    ],
)
def test_pictogram_concept(name, want):
    assert names.pictogram_concept(name, ["24-regular"]) == want


def test_emoji_index_lookup():
    index = names.EmojiIndex()
    assert index.lookup("whatever", "1f697") == ("\U0001f697", "codepoint")
    assert index.lookup("1f697", None)[0] == "\U0001f697"  # a name in codepoint form
    assert index.lookup("automobile", None) == ("\U0001f697", "cldr-name")
    assert index.lookup("alarmclock", None)[0] == "\u23f0"  # fxemoji style: no dashes
    assert index.lookup("x", "1f44b-1f3fd")[1] == "skin-tone"
    assert index.lookup("waving-hand-dark", None)[1] == "skin-tone"  # fluent style
    assert index.lookup("flag-norway", None)[0] == "\U0001f1f3\U0001f1f4"


def test_render_cache_is_reused(built, tmp_path):
    out = built["out"]
    pngs = sorted((out / "images" / "iconify").rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in pngs}
    logs: list[str] = []
    rows = iconify.build(BuildJob(out, size=48, log=logs.append), root=built["pkg"], emojilib=built["lib"], **SETS)
    assert any(f"{len(pngs)} PNGs cached, 0 to render" in m for m in logs)
    assert {p: p.stat().st_mtime_ns for p in pngs} == before
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in built["rows"]]
    # the same icons from the .tgz (as npm pack writes it) give the same rows
    tgz = tmp_path / "iconify-json-0.0.1.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(built["pkg"], arcname="package")
    assert package.IconifyPackage(tgz).prefixes() == sorted(FAKE_SETS)
    rows2 = iconify.build(BuildJob(out, size=48, log=logs.append), root=tgz, emojilib=built["lib"], workers=1, **SETS)
    assert [r["image"] for r in rows2] == [r["image"] for r in rows]


def test_missing_package_says_how_to_get_it(tmp_path):
    with pytest.raises(SourceMissing, match=r"npm pack @iconify/json@2\.2\.535"):
        iconify.build(BuildJob(tmp_path), root=None)
    with pytest.raises(SourceMissing, match="npm pack"):
        iconify.build(BuildJob(tmp_path), root=tmp_path / "nowhere")


def test_render_pool_survives_a_bad_svg():
    pool = render.RenderPool(1, timeout=30)
    try:
        got = list(pool.run([(0, "<svg", 16, "/nonexistent/never.png")]))
    finally:
        pool.close()
    assert got[0][0] == 0 and got[0][1] == "error"


def _sleepy(svg: str, size: int, dest: str):
    """A stand-in renderer: sleeps ``svg`` seconds (a hang when large)."""
    time.sleep(float(svg))
    return "ok", "sha"


def test_render_pool_kills_a_hanging_renderer():
    pool = render.RenderPool(2, timeout=1.0, job_fn=_sleepy)
    t0 = time.monotonic()
    try:
        got = {i: status for i, status, _ in pool.run([(0, "60", 8, ""), (1, "0", 8, ""), (2, "0", 8, "")])}
    finally:
        pool.close()
    assert got == {0: "timeout", 1: "ok", 2: "ok"}
    assert time.monotonic() - t0 < 20


def test_split_hashes_ignore_png_bytes(built, tmp_path):
    rows = [dict(r, image=str(built["out"] / r["image"])) for r in built["rows"]]
    a = assign_splits(rows, val=2, test=2, seed=0)
    h = split_hashes(a)
    # another machine's renderer: other pixels, other PNG sha256s, same sources and captions
    other = []
    for r in rows:
        p = tmp_path / Path(r["image"]).name
        Image.new("RGB", (48, 48), (7, 7, 7)).save(p)
        other.append(dict(r, image=str(p), sha256="0" * 64))
    b = assign_splits(other, val=2, test=2, seed=0)
    assert split_hashes(b) == h
    assert [(r["origin"], r["split"]) for r in b] == [(r["origin"], r["split"]) for r in a]
    # a caption change does change the hash
    c = [dict(r, captions=r["captions"] + ["extra"]) if r["split"] == "train" else r for r in a]
    assert split_hashes(c)["train"] != h["train"]


def test_build_all_with_iconify(built, tmp_path):
    out = tmp_path / "all"
    manifest = build_all(
        out,
        ["iconify"],
        size=32,
        val=2,
        test=2,
        log=lambda m: None,
        roots={"iconify": built["pkg"], "emojilib": built["lib"]},
        options={"iconify": {**SETS, "workers": 1}},
    )
    rows = load_manifest(manifest)
    stats = json.loads(manifest.with_name(manifest.name + ".stats.json").read_text())
    assert stats["styles"] == dict(Counter(r["style"] for r in rows))
    assert set(stats["renderers"]) >= {"Pillow", "resvg-py", "rsvg-convert"}
    assert stats["details"]["iconify"]["sets"]["sharemoji"]["policy"] == "refuse"
    assert stats["sha256_covers"][-1] == "captions"
    assert (out / "ATTRIBUTION.md").is_file()
    # the emoji car and the pictogram car share the caption "car": one split
    cars = [r for r in rows if "car" in r["captions"]]
    assert len(cars) == 2 and len({r["split"] for r in cars}) == 1
    # without the package the source is skipped with the npm hint
    logs: list[str] = []
    with pytest.raises(SourceMissing, match="npm pack"):
        build_all(tmp_path / "none", ["iconify"], log=logs.append)
