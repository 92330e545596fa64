"""Search filters (folders, dates, camera) applied inside the vector search, sorting, offset paging and
the automatic relevance cutoff, on a small collection of JPEGs with EXIF dates and cameras."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import pattern_image
from PIL import Image

from mbm.errors import UsageError
from mbm.store.filters import ItemFilter, parse_when

# (subfolder, file, EXIF date or None, camera or None)
PHOTOS = [
    ("a", "p00.jpg", "2019:03:01 10:00:00", "Google Pixel 4"),
    ("a", "p01.jpg", "2019:07:15 09:30:00", "Canon EOS 80D"),
    ("a", "p02.jpg", "2020:01:01 00:00:00", "Canon EOS 80D"),
    ("a", "p03.jpg", "2021:06:10 18:45:00", "Google Pixel 6"),
    ("b", "p04.jpg", "2021:06:30 23:59:59", "NIKON D750"),
    ("b", "p05.jpg", "2022:12:24 20:00:00", "Google Pixel 6"),
    ("b", "p06.jpg", "2023:05:05 05:05:05", None),
    ("b", "p07.jpg", "2024:06:01 00:00:00", "Canon EOS R5"),
    ("c", "p08.jpg", "2024:06:30 12:00:00", "canon eos r5"),
    ("c", "p09.jpg", "2024:07:01 00:00:00", "NIKON D750"),
    ("c", "p10.png", None, None),  # no EXIF: dated by its file time (set to 2015-08-20)
    ("c", "p11.png", None, None),  # no EXIF: file time 2024-06-15
]


def _save(path: Path, seed: int, date: str | None, camera: str | None) -> None:
    img = pattern_image(seed, (120, 96))
    if path.suffix == ".png":
        img.save(path)
        return
    exif = Image.Exif()
    if date:
        exif[0x0132] = date
    if camera:
        exif[0x0110] = camera
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_encoder):
    from mbm import Engine

    root = tmp_path_factory.mktemp("filters")
    for seed, (sub, name, date, camera) in enumerate(PHOTOS):
        (root / "photos" / sub).mkdir(parents=True, exist_ok=True)
        _save(root / "photos" / sub / name, seed, date, camera)
    for name, when in (("p10.png", datetime(2015, 8, 20, 12)), ("p11.png", datetime(2024, 6, 15, 12))):
        os.utime(root / "photos" / "c" / name, (when.timestamp(), when.timestamp()))
    eng = Engine.open(root / "store", "photos", model="mbm-tiny", encoder=tiny_encoder)
    eng.index([root / "photos"])
    yield root, eng
    eng.close()


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


def query_of(root: Path, name: str) -> Path:
    return next((root / "photos").rglob(name))


def test_dates_parse_to_the_start_of_the_period():
    assert parse_when("2024") == "2024-01-01T00:00:00"
    assert parse_when("2024-06") == "2024-06-01T00:00:00"
    assert parse_when("2024-6-5") == "2024-06-05T00:00:00"
    assert parse_when("2024-06-15T14:30") == "2024-06-15T14:30:00"
    assert parse_when("2024-06-15 14:30:09") == "2024-06-15T14:30:09"
    for bad in ("yesterday", "2024-13", "2024-02-30", "24-06", "2024/06"):
        with pytest.raises(UsageError, match="is not a date — give YYYY"):
            parse_when(bad, "--after")
    with pytest.raises(UsageError, match="is not earlier than --before"):
        ItemFilter.of(after="2024-07", before="2024-06")


def test_date_range_is_inclusive_after_and_exclusive_before(library):
    root, eng = library
    june = eng.search(query_of(root, "p00.jpg"), k=50, after="2024-06", before="2024-07")
    assert sorted(names(june)) == ["p07.jpg", "p08.jpg", "p11.png"]  # p11: file time, no EXIF
    old = eng.search(query_of(root, "p00.jpg"), k=50, before="2019-07-15T09:30")
    assert sorted(names(old)) == ["p00.jpg", "p10.png"]
    assert sorted(names(eng.search(query_of(root, "p00.jpg"), k=50, after="2024-07"))) == ["p09.jpg"]


def test_k_is_filled_from_matches_however_low_they_score(library):
    root, eng = library
    everything = eng.search(query_of(root, "p00.jpg"), k=50)
    last_three = names(everything)[-3:]  # the three items least like the query
    allowed = ItemFilter.of(under=[str(query_of(root, n)) for n in last_three])
    hits = eng.search(query_of(root, "p00.jpg"), k=3, under=list(allowed.under))
    assert sorted(names(hits)) == sorted(last_three)
    assert len(eng.search(query_of(root, "p00.jpg"), k=2, after="2021")) == 2


def test_camera_matches_part_of_the_name_in_any_case(library):
    root, eng = library
    canon = eng.search(query_of(root, "p00.jpg"), k=50, camera="canon eos")
    assert sorted(names(canon)) == ["p01.jpg", "p02.jpg", "p07.jpg", "p08.jpg"]
    assert sorted(names(eng.search(query_of(root, "p00.jpg"), k=50, camera="PIXEL 6"))) == ["p03.jpg", "p05.jpg"]
    assert eng.search(query_of(root, "p00.jpg"), k=50, camera="Leica") == []
    with pytest.raises(UsageError, match="--camera is empty"):
        eng.search("x", camera="  ")


def test_folders_are_alternatives_and_filters_combine(library):
    root, eng = library
    q = query_of(root, "p05.jpg")
    ab = eng.search(q, k=50, under=[str(root / "photos" / "a"), str(root / "photos" / "c")])
    assert {Path(h.path).parent.name for h in ab} == {"a", "c"} and len(ab) == 8
    one_file = eng.search(q, k=50, under=[str(root / "photos" / "b" / "p06.jpg")])
    assert names(one_file) == ["p06.jpg"]
    combined = eng.search(
        q,
        k=50,
        under=[str(root / "photos" / "b"), str(root / "photos" / "c")],
        after="2021",
        before="2024-07",
        camera="nikon",
    )
    assert names(combined) == ["p04.jpg"]
    # a folder named like the start of another is not inside it
    assert eng.search(q, k=50, under=[str(root / "photo")]) == []


def test_sort_by_date_and_path_with_stable_pages(library):
    root, eng = library
    q = query_of(root, "p03.jpg")
    by_date = eng.search(q, k=50, sort="date", min_score=-1.0)
    dates = [h.taken_at or h.modified for h in by_date]
    assert names(by_date)[0] == "p10.png" and len(by_date) == len(PHOTOS)  # 2015 file time first
    assert names(by_date)[1:4] == ["p00.jpg", "p01.jpg", "p02.jpg"] and all(dates)
    by_path = eng.search(q, k=50, sort="path", min_score=-1.0)
    assert [h.path for h in by_path] == sorted(h.path for h in by_path)
    for sort in ("score", "date", "path"):
        whole = eng.search(q, k=12, sort=sort, min_score=-1.0)
        pages = [eng.search(q, k=5, offset=o, sort=sort, min_score=-1.0) for o in (0, 5, 10)]
        assert [h.id for page in pages for h in page] == [h.id for h in whole], sort
    assert eng.search(q, k=5, offset=12) == []
    with pytest.raises(UsageError, match="--sort 'size' is not one of score, date, path"):
        eng.search(q, sort="size")
    with pytest.raises(UsageError, match="--offset must be 0 or more"):
        eng.search(q, offset=-1)


def test_min_score_auto_keeps_the_match_and_drops_the_background(tmp_path, tiny_encoder):
    """Six clusters of 100 items; a query at one cluster's centre keeps (nearly) that cluster only."""
    from mbm import Engine

    with Engine.open(tmp_path / "store", model="mbm-tiny", encoder=tiny_encoder) as eng:
        enc = eng.encoder()
        catalog = eng.catalog(create=True)
        catalog.set_meta(kind="image", model=enc.spec, fingerprint=enc.fingerprint, dim=enc.dim, dtype="float16")
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(6, enc.dim)).astype(np.float32)
        labels = np.repeat(np.arange(6), 100)
        x = centers[labels] + 0.6 * rng.normal(size=(600, enc.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        rows = [{"path": f"/p/{i:04d}.jpg", "size": 1, "mtime_ns": 1, "hash": f"{i:032x}"} for i in range(600)]
        catalog.add_items(rows, [v.astype(np.float16).tobytes() for v in x])
        eng.prepare_search()
        for c in range(6):
            query = centers[c] / np.linalg.norm(centers[c])
            kept = eng.search(query, k=600, min_score="auto")
            members = {f"{i:04d}.jpg" for i in np.flatnonzero(labels == c)}
            right = sum(Path(h.path).name in members for h in kept)
            assert right >= 95 and len(kept) - right <= 5, (c, right, len(kept))
        noise = rng.standard_normal(enc.dim).astype(np.float32)
        assert len(eng.search(noise / np.linalg.norm(noise), k=600, min_score="auto")) <= 6
        with pytest.raises(UsageError, match="is not a number or 'auto'"):
            eng.search(query, min_score="high")


def test_cli_filters_and_clear_errors(library, capsys):
    from mbm.cli import main

    root, _ = library
    store = str(root / "store")
    with pytest.raises(SystemExit) as done:
        main(
            [
                "search",
                str(query_of(root, "p01.jpg")),
                "-c",
                "photos",
                "--store",
                store,
                "--paths",
                "--after",
                "2019",
                "--before",
                "2020",
                "--sort",
                "date",
                "--min-score",
                "-1",
            ]
        )
    assert done.value.code == 0
    assert [Path(p).name for p in capsys.readouterr().out.split()] == ["p00.jpg", "p01.jpg"]
    for args, words in (
        (["--after", "June"], "--after 'June' is not a date"),
        (["--min-score", "lots"], "--min-score 'lots' is not a number or 'auto'"),
        (["--sort", "date", "--rerank"], "--rerank orders by relevance"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["search", "x", "-c", "photos", "--store", store, *args])
        assert done.value.code != 0
        assert words in capsys.readouterr().err


def test_http_search_takes_the_same_filters(library, tiny_encoder):
    pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
    from fastapi.testclient import TestClient

    from mbm import Engine
    from mbm.server import ServerConfig, create_app

    root, _ = library
    engines = {"photos": Engine.open(root / "store", "photos", encoder=tiny_encoder)}
    app = create_app(ServerConfig(store=root / "store"), engines)
    with TestClient(app) as client:
        app.state.collections.wait_ready(60)

        def search(**body):
            r = client.post("/search", json={"text": "a photo", "k": 50, "collection": "photos", **body})
            assert r.status_code == 200, r.text
            return [Path(h["path"]).name for h in r.json()["hits"]]

        assert sorted(search(after="2024-06", before="2024-07")) == ["p07.jpg", "p08.jpg", "p11.png"]
        assert sorted(search(camera="nikon")) == ["p04.jpg", "p09.jpg"]
        assert sorted(search(under=[str(root / "photos" / "a")])) == ["p00.jpg", "p01.jpg", "p02.jpg", "p03.jpg"]
        by_date = search(sort="date", min_score=-1)
        assert by_date[:3] == ["p10.png", "p00.jpg", "p01.jpg"]
        assert search(sort="date", min_score=-1, offset=3, k=3) == by_date[3:6]
        r = client.post("/search", json={"text": "x", "after": "June", "collection": "photos"})
        assert r.status_code == 400 and "is not a date" in r.json()["error"]
        r = client.post("/search", json={"text": "x", "sort": "size", "collection": "photos"})
        assert r.status_code == 400


def test_http_image_upload_takes_the_filters_and_refuses_bad_ones(library, tiny_encoder):
    pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
    from fastapi.testclient import TestClient

    from mbm import Engine
    from mbm.server import ServerConfig, create_app

    root, _ = library
    engines = {"photos": Engine.open(root / "store", "photos", encoder=tiny_encoder)}
    app = create_app(ServerConfig(store=root / "store"), engines)
    picture = query_of(root, "p05.jpg").read_bytes()
    with TestClient(app) as client:
        app.state.collections.wait_ready(60)
        form = {"k": "50", "camera": "pixel", "after": "2022", "collection": "photos"}
        r = client.post("/search/image", files={"file": ("q.jpg", picture)}, data=form)
        assert r.status_code == 200, r.text
        assert [Path(h["path"]).name for h in r.json()["hits"]] == ["p05.jpg"]
        r = client.post("/search/image", files={"file": ("q.jpg", picture)}, data={"sort": "size"})
        assert r.status_code == 400 and "sort" in r.json()["error"]
