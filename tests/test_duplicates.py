"""Near-duplicate groups: exact range search, connected components, keeper choice, `mbm duplicates`."""

import io
import json
import os

import numpy as np
import pytest
from conftest import pattern_image
from PIL import Image
from typer.testing import CliRunner

from mbm.errors import UsageError
from mbm.retrieval.duplicates import check_threshold, components, find_duplicates, similar_pairs

# the tiny test model has random weights: different pictures still score ~0.97-0.99, copies > 0.9999
STRICT = 0.999


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _library(folder):
    folder.mkdir(parents=True)
    a, b = pattern_image(1, (192, 160)), pattern_image(2, (192, 160))
    a.save(folder / "a.png")
    a.resize((96, 80), Image.NEAREST).save(folder / "a_small.png")
    (folder / "a_q90.jpg").write_bytes(_jpeg(a, 90))
    b.save(folder / "b.png")
    (folder / "b_copy.png").write_bytes((folder / "b.png").read_bytes())
    for seed in (3, 4, 5):
        pattern_image(seed, (192, 160)).save(folder / f"single{seed}.png")
    # the originals are the oldest files
    for name, age in (("a.png", 3000), ("b.png", 2000), ("a_q90.jpg", 1000), ("b_copy.png", 500)):
        t = 1_700_000_000 - age
        os.utime(folder / name, (t, t))
    return folder


def test_groups_largest_first_keeper_largest_then_oldest(tmp_path, engine_factory):
    photos = _library(tmp_path / "photos")
    eng = engine_factory()
    eng.index([photos])
    groups = find_duplicates(eng.catalog(), STRICT)
    names = [[os.path.basename(i.path) for i in g.items] for g in groups]
    assert names[0][0] == "a.png" and sorted(names[0]) == ["a.png", "a_q90.jpg", "a_small.png"]
    assert names[0][1] == "a_q90.jpg"  # same resolution as the keeper, younger; the small copy comes last
    assert names[1] == ["b.png", "b_copy.png"]
    assert len(groups) == 2  # the three single pictures are in no group
    keeper = groups[0].keeper
    assert (keeper.width, keeper.height, keeper.similarity) == (192, 160, 1.0)
    assert all(i.similarity >= STRICT for g in groups for i in g.items)
    assert groups[1].reclaimable_bytes == (photos / "b_copy.png").stat().st_size
    doc = groups[0].as_dict()
    assert doc["count"] == 3 and doc["keeper"].endswith("a.png") and doc["items"][2]["width"] == 96


def test_range_search_finds_exactly_the_pairs_brute_force_finds():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 64))
    vecs = np.repeat(centres, 4, axis=0) + rng.normal(scale=0.15, size=(120, 64))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    sims = vecs @ vecs.T
    for threshold in (0.9, 0.97):
        i, j, s = similar_pairs(vecs, threshold, chunk=17)  # several chunks
        want = {(a, b) for a, b in zip(*np.nonzero(np.triu(sims >= threshold - 1e-5, 1)))}
        assert set(zip(i.tolist(), j.tolist())) == want and len(want) > 0
        assert np.allclose(s, sims[i, j], atol=1e-5) and (i < j).all()


def test_components_join_chains():
    labels = components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels[0] == labels[1] == labels[2] and labels[4] == labels[5] and labels[3] not in (labels[0], labels[4])
    assert len(set(labels.tolist())) == 3


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan")])
def test_threshold_must_be_a_cosine(bad):
    with pytest.raises(UsageError, match="not a cosine"):
        check_threshold(bad)


def test_cli_duplicates_json_and_table(tmp_path, engine_factory, monkeypatch):
    from mbm.cli import app

    photos = _library(tmp_path / "photos")
    engine_factory().index([photos])
    monkeypatch.setenv("MBM_HOME", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["duplicates", "--threshold", str(STRICT), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [g["count"] for g in doc["groups"]] == [3, 2]
    table = CliRunner().invoke(app, ["duplicates", "-t", str(STRICT)])
    assert table.exit_code == 0 and "group 1: 3 items" in table.stdout and "keep" in table.stdout
    bad = CliRunner().invoke(app, ["duplicates", "-t", "2"])
    assert bad.exit_code != 0
