"""Offline data builders: split logic, caption cleaning, manifest reading, missing packages.

Everything here runs on tiny generated rows/images; tests that need the Debian packages
(fonts-noto-color-emoji, fonts-symbola, ...) skip when those files are absent.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mbm.train.sources import (
    BuildJob,
    SourceMissing,
    assign_splits,
    build_all,
    fashion_mnist,
    load_manifest,
    openclipart,
    split_hash,
    split_hashes,
    symbola,
    tuxpaint,
)
from mbm.train.sources import emoji as emoji_src
from mbm.train.sources.common import normalize_caption, split_words
from mbm.train.sources.openclipart import clean_keywords, clean_title, read_metadata


def _rows(n: int, *, source: str = "openclipart", prefix: str = "g") -> list[dict]:
    return [
        {
            "image": f"images/{source}/{prefix}{i}.png",
            "captions": [f"{prefix} thing {i}"],
            "label": None,
            "source": source,
            "group": f"{source}:{prefix}{i}",
            "sha256": f"{prefix}{i:04d}",
            "origin": f"{source}:{prefix}{i}",
        }
        for i in range(n)
    ]


# ---------------------------------------------------------------- split


def test_groups_and_identical_captions_stay_in_one_split():
    rows = _rows(200)
    # a group of three (identical drawings) and two rows linked only by a caption
    for i in (10, 11, 12):
        rows[i]["group"] = "openclipart:same"
    rows[20]["captions"] = ["A red car."]
    rows[21]["captions"] = ["a red  car", "other words"]
    rows[30]["links"] = rows[31]["links"] = ["noto-glyph:same"]  # one source glyph under two names
    rows[40]["sha256"] = rows[41]["sha256"] = "same-png"  # equal PNG bytes alone link nothing
    for seed in range(8):
        out = assign_splits(rows, val=40, test=40, seed=seed)
        split_of = {r["image"]: r["split"] for r in out}
        grouped = {split_of[rows[i]["image"]] for i in (10, 11, 12) if rows[i]["image"] in split_of}
        assert len(grouped) == 1
        for pair in ((20, 21), (30, 31)):
            assert len({split_of[rows[i]["image"]] for i in pair if rows[i]["image"] in split_of}) == 1
        # a linked pair in val/test keeps one of its rows, in train both
        kept = [rows[i]["image"] in split_of for i in (10, 11, 12)]
        assert sum(kept) == (3 if grouped == {"train"} else 1)


def test_val_test_have_one_item_per_group_and_source_and_sizes():
    rows = []
    for g in range(60):  # each concept: base + 2 variants in one source, one twin in another
        for v in range(3):
            rows.append(
                {
                    "image": f"e/{g}-{v}.png" if v else f"e/{g}.png",
                    "captions": [f"concept {g} v{v}"],
                    "source": "emoji",
                    "group": f"emoji:{g}",
                }
            )
        rows.append(
            {"image": f"s/{g}.png", "captions": [f"concept {g} drawn"], "source": "symbola", "group": f"emoji:{g}"}
        )
    report: Counter = Counter()
    out = assign_splits(rows, val=10, test=10, seed=3, report=report)
    for split in ("val", "test"):
        part = [r for r in out if r["split"] == split]
        assert len(part) == 10
        per = Counter((r["group"], r["source"]) for r in part)
        assert max(per.values()) == 1
        # the Noto/Symbola pair of a concept is kept together for cross-style tests
        assert all(Counter(r["group"] for r in part)[r["group"]] == 2 for r in part)
        assert all(r["image"].count("-") == 0 for r in part)  # the base emoji is the one kept
    assert sum(report.values()) == 20  # 2 dropped variants for each of 10 concepts
    train_groups = {r["group"] for r in out if r["split"] == "train"}
    eval_groups = {r["group"] for r in out if r["split"] in ("val", "test")}
    assert not train_groups & eval_groups


def test_split_is_deterministic_and_order_independent():
    rows = _rows(300)
    a = assign_splits(rows, val=30, test=30, seed=7)
    b = assign_splits(list(reversed(rows)), val=30, test=30, seed=7)
    c = assign_splits(rows, val=30, test=30, seed=8)
    key = lambda out: sorted((r["image"], r["split"]) for r in out)  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)
    assert split_hashes(a) == split_hashes(b)


def test_presplit_and_heldout_rows_keep_their_split():
    rows = _rows(50)
    rows += [
        {
            "image": f"f/{i}.png",
            "captions": ["a photo of a coat"],
            "source": "fashion-mnist",
            "group": f"f:{i}",
            "split": "test" if i % 3 == 0 else "train",
        }
        for i in range(30)
    ]
    rows += [
        {"image": f"t/{i}.png", "captions": [f"A stamp {i}."], "source": "tuxpaint", "group": f"t:{i}"}
        for i in range(5)
    ]
    out = assign_splits(rows, val=5, test=5, seed=0)
    fm = [r for r in out if r["source"] == "fashion-mnist"]
    assert len(fm) == 30  # identical class captions do not merge or drop pre-split rows
    assert all(r["split"] == ("test" if int(Path(r["image"]).stem) % 3 == 0 else "train") for r in fm)
    assert {r["split"] for r in out if r["source"] == "tuxpaint"} == {"heldout"}
    assert "heldout" not in {r["split"] for r in out if r["source"] == "openclipart"}


def test_split_hash_stable_and_sensitive(tmp_path):
    rows = _rows(5)
    h = split_hash(rows)
    assert h == split_hash(list(reversed(rows)))
    assert len(h) == 64
    changed = [dict(r) for r in rows]
    changed[0]["captions"] = ["something else"]
    assert split_hash(changed) != h
    # PNG bytes do not count: another machine's renderer must give the same hash
    assert split_hash([dict(r, sha256="other") for r in rows]) == h
    # a row with no origin (a user's own picture) is identified by its file, relative to base
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "a.png")
    r = {"image": "a.png", "captions": ["x"]}
    assert split_hash([r], tmp_path) == split_hash([r], tmp_path)


# ---------------------------------------------------------------- captions


@pytest.mark.parametrize(
    "raw, want",
    [
        ("RedCar", "red car"),
        ("red_car", "red car"),
        ("Clipart by Nicu Buculei - jigsaw_red_10", "jigsaw red"),
        ("Flower by John Doe", "flower"),
        ("Tigre02", "tigre"),
        ("Dog 01 Drawn With Straight Lines", "dog drawn with straight lines"),
        ("National flag of Republic of China (Taiwan) in SVG format", "national flag of republic of china (taiwan)"),
        ("Sun http://openclipart.org/x me@example.com", "sun"),
        ("stand by me", "stand by me"),
        ("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", "part of the flat icon collection"),
        ("0123", ""),
    ],
)
def test_clean_title(raw, want):
    assert clean_title(raw) == want


def test_clean_title_caps_length():
    assert len(clean_title("word " * 100)) <= 200


def test_keywords_and_metadata():
    svg = b"""<svg><metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>RedCar</dc:title>
      <dc:subject><rdf:Bag><rdf:li>transport</rdf:li><rdf:li></rdf:li><rdf:li>hash(0x8a07724)</rdf:li>
      <rdf:li>car</rdf:li><rdf:li>Jane Roe</rdf:li></rdf:Bag></dc:subject>
      <dc:creator><cc:Agent><dc:title>Jane Roe</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata></svg>"""
    title, keywords = read_metadata(svg)
    assert title == "RedCar"
    caps = openclipart.captions_for(clean_title(title), clean_keywords(keywords, "red car"))
    assert caps == ["red car", "red car, transport, car"]
    assert split_words("SVGFile_v2") == "SVG File v 2"
    assert normalize_caption("A red  Umbrella.") == "a red umbrella"


def test_emoji_names_and_groups():
    data = {"en": ":automobile:", "alias": [":car:", ":red_car:"], "status": 2}
    assert emoji_src.captions("\U0001f697", data) == ["automobile", "car", "red car", "an emoji of an automobile"]
    wave, wave_tone = "\U0001f44b", "\U0001f44b\U0001f3fd"
    assert emoji_src.group_id(wave) == emoji_src.group_id(wave_tone) == "emoji:1f44b"
    assert emoji_src.group_id("\u2600\ufe0f") == "emoji:2600"  # the Symbola glyph has no FE0F
    flag = emoji_src.names("\U0001f1f2\U0001f1ec", {"en": ":Madagascar:", "alias": [":flag_for_Madagascar:"]})
    assert flag[0] == "flag of Madagascar"


# ---------------------------------------------------------------- load_manifest


def _img(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / name)


def test_load_manifest_jsonl(tmp_path):
    _img(tmp_path / "pics", "a.png")
    _img(tmp_path / "pics", "b.png")
    lines = [
        {"image": "pics/a.png", "caption": "a red square"},
        {"image": str(tmp_path / "pics" / "b.png"), "captions": ["one", "two"], "label": "shape", "extra": 1},
    ]
    path = tmp_path / "my.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    rows = load_manifest(path)
    assert [r["captions"] for r in rows] == [["a red square"], ["one", "two"]]
    assert rows[0]["image"] == str((tmp_path / "pics" / "a.png").resolve())
    assert rows[0]["source"] == "user" and rows[0]["label"] is None and rows[1]["label"] == "shape"
    assert rows[1]["extra"] == 1


def test_load_manifest_csv(tmp_path):
    _img(tmp_path, "a.png")
    path = tmp_path / "pairs.csv"
    path.write_text('image,caption,label\na.png,"a red square, small",shape\n', encoding="utf-8")
    rows = load_manifest(path)
    assert rows == [
        {
            "image": str(tmp_path.resolve() / "a.png"),
            "captions": ["a red square, small"],
            "label": "shape",
            "source": "user",
            "group": None,
            "split": None,
        }
    ]


@pytest.mark.parametrize(
    "name, text, where, what",
    [
        ("bad.jsonl", '{"image": "a.png", "caption": "ok"}\n{"image": "a.png"}\n', "line 2", "caption"),
        ("bad.jsonl", '{"image": "a.png", "caption": "ok"}\n{not json\n', "line 2", "JSON"),
        ("bad.jsonl", '{"caption": "no image"}\n', "line 1", "image"),
        ("bad.jsonl", '{"image": "missing.png", "caption": "x"}\n', "line 1", "not found"),
        ("bad.csv", "image,caption\na.png,ok\na.png,\n", "line 3", "caption"),
        ("bad.csv", "picture,text\na.png,ok\n", "line 1", "image,caption"),
    ],
)
def test_load_manifest_bad_rows(tmp_path, name, text, where, what):
    _img(tmp_path, "a.png")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_manifest(path)
    msg = str(err.value)
    assert str(path) in msg and where in msg and what in msg and "—" in msg


# ---------------------------------------------------------------- missing packages


@pytest.mark.parametrize(
    "module, apt",
    [
        (openclipart, "openclipart-svg"),
        (emoji_src, "fonts-noto-color-emoji"),
        (symbola, "fonts-symbola"),
        (tuxpaint, "tuxpaint-stamps-default"),
        (fashion_mnist, "dataset-fashion-mnist"),
    ],
)
def test_builder_raises_source_missing(tmp_path, module, apt):
    with pytest.raises(SourceMissing, match=f"apt-get install .*{apt}"):
        module.build(BuildJob(tmp_path / "out", size=32), root=tmp_path / "empty")


def _fake_fashion_mnist(folder: Path, n: int) -> None:
    """Tiny idx.gz files in Fashion-MNIST's layout (n images per split)."""
    import gzip

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for split, (img_name, lab_name) in fashion_mnist.FILES.items():
        pixels = np.random.default_rng(len(split)).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
        (folder / img_name).write_bytes(gzip.compress(header + pixels.tobytes()))
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / lab_name).write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes()))


def test_build_all_skips_missing_source(tmp_path):
    none = tmp_path / "none"
    quiet = lambda m: None  # noqa: E731
    with pytest.raises(SourceMissing, match="openclipart-svg"):
        build_all(tmp_path / "out", ["openclipart"], log=quiet, roots={"openclipart": none})
    with pytest.raises(SourceMissing, match="none of the requested"):
        build_all(
            tmp_path / "out",
            ["openclipart", "fashion-mnist"],
            log=quiet,
            roots={"openclipart": none, "fashion-mnist": none},
        )
    # one missing source among several: one log line, the others are built
    _fake_fashion_mnist(tmp_path / "fm", 20)
    logs: list[str] = []
    manifest = build_all(
        tmp_path / "out",
        ["openclipart", "fashion-mnist"],
        size=16,
        limit=12,
        log=logs.append,
        roots={"openclipart": none, "fashion-mnist": tmp_path / "fm"},
    )
    assert sum("skipping openclipart" in m and "apt-get install" in m for m in logs) == 1
    rows = load_manifest(manifest)
    assert Counter(r["split"] for r in rows) == {"train": 8, "test": 4}
    assert rows[0]["captions"][0].startswith("a photo of")
    stats = json.loads(Path(str(manifest) + ".stats.json").read_text())
    assert stats["counts"] == {"test": {"fashion-mnist": 4}, "train": {"fashion-mnist": 8}}
    assert "openclipart" in stats["missing_sources"] and stats["options"]["limit"] == 12
    with pytest.raises(ValueError, match="unknown source"):
        build_all(tmp_path / "out", ["nope"], log=lambda m: None)


# ---------------------------------------------------------------- with the real packages

needs_noto = pytest.mark.skipif(not emoji_src.FONT.is_file(), reason="fonts-noto-color-emoji not installed")
needs_symbola = pytest.mark.skipif(not symbola.FONT.is_file(), reason="fonts-symbola not installed")


@needs_noto
@needs_symbola
def test_emoji_and_symbola_share_groups(tmp_path):
    pytest.importorskip("emoji")
    logs: list[str] = []
    manifest = build_all(tmp_path, ["emoji", "symbola"], size=32, limit=25, val=6, test=6, log=logs.append)
    rows = load_manifest(manifest)
    stats = json.loads(manifest.with_name(manifest.name + ".stats.json").read_text())
    assert stats["rows"] == len(rows) and set(stats["sha256"]) == {r["split"] for r in rows}
    by_source = {s: {r["group"]: r for r in rows if r["source"] == s} for s in ("emoji", "symbola")}
    shared = set(by_source["emoji"]) & set(by_source["symbola"])
    assert shared
    for g in shared:
        assert by_source["emoji"][g]["split"] == by_source["symbola"][g]["split"]
    assert all(Image.open(r["image"]).size == (32, 32) for r in rows)
