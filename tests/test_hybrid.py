"""Item text (names, sidecar captions, XMP/IPTC keywords) in FTS5; keyword and hybrid (RRF) search."""

import io
import json
import os
import struct

import pytest
from conftest import pattern_image
from typer.testing import CliRunner

from mbm.errors import UsageError
from mbm.indexer.sidecar import item_text, names_text, split_words, xmp_fields
from mbm.retrieval.hybrid import RRF_K, rrf
from mbm.store.keywords import match_expression, query_words

XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
  xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" photoshop:Headline="Harbour at dawn">
<dc:subject><rdf:Bag><rdf:li>{kw1}</rdf:li><rdf:li>{kw2}</rdf:li></rdf:Bag></dc:subject>
<lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Norway|Bergen</rdf:li></rdf:Bag></lr:hierarchicalSubject>
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{desc}</rdf:li></rdf:Alt></dc:description>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


def _xmp(kw1="sailboat", kw2="fjord", desc="Boats in the old harbour"):
    return XMP.format(kw1=kw1, kw2=kw2, desc=desc)


def _jpeg_with_iptc(img, keywords):
    """A JPEG whose APP13 (Photoshop 3.0, resource 0x0404) holds IPTC keywords (2:25)."""
    raw = [k.encode() for k in keywords]
    iptc = b"".join(b"\x1c\x02\x19" + struct.pack(">H", len(k)) + k for k in raw)
    if len(iptc) % 2:
        iptc += b"\x00"
    irb = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    payload = b"Photoshop 3.0\x00" + irb
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "photos"
    (root / "2019 Holidays").mkdir(parents=True)
    (root / "misc").mkdir()
    pattern_image(1).save(root / "2019 Holidays" / "beach_2019.png")
    pattern_image(2).save(root / "2019 Holidays" / "IMG_0002.png")
    pattern_image(3).save(root / "misc" / "mountainTrip.png")
    pattern_image(4).save(root / "misc" / "IMG_0004.jpg")
    (root / "misc" / "IMG_0004.jpg.txt").write_text("A red umbrella on the sand\n")
    pattern_image(5).save(root / "misc" / "IMG_0005.png")
    (root / "misc" / "IMG_0005.xmp").write_text(_xmp())
    pattern_image(6).save(root / "misc" / "IMG_0006.jpg", xmp=_xmp("lighthouse", "storm", "Waves").encode())
    (root / "misc" / "IMG_0007.jpg").write_bytes(_jpeg_with_iptc(pattern_image(7), ["cathedral", "Köln"]))
    for i in range(8, 14):
        pattern_image(i).save(root / "misc" / f"IMG_{i:04d}.png")
    return root


def _names(hits):
    return [os.path.basename(h.path) for h in hits]


def test_rrf_formula_and_ties():
    fused = dict(rrf([[1, 2, 3], [3, 4]]))
    assert fused[1] == pytest.approx(1 / (RRF_K + 1))
    assert fused[3] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    order = [i for i, _ in rrf([[1, 2, 3], [3, 4]])]
    assert order[0] == 3  # in both lists
    assert order == [3, 1, 2, 4]  # 2 and 4 tie at 1/(k+2): the better rank in the first (vector) list wins
    assert [i for i, _ in rrf([[7], [8]])] == [7, 8]


def test_item_text_from_names_sidecars_xmp_and_iptc(library):
    misc = library / "misc"
    assert split_words("IMG_2019-07_beachTrip") == "IMG 2019 07 beach Trip"
    names = names_text(str(library / "2019 Holidays" / "beach_2019.png"))
    assert names.startswith("beach 2019 ") and names.endswith(" photos 2019 Holidays")  # the name, then 3 folders
    assert "red umbrella" in item_text(str(misc / "IMG_0004.jpg")).caption
    side = item_text(str(misc / "IMG_0005.png"))
    assert side.keywords == "sailboat, fjord, Places, Norway, Bergen"
    assert "Harbour at dawn" in side.caption and "Boats in the old harbour" in side.caption
    embedded = item_text(str(misc / "IMG_0006.jpg"))
    assert "lighthouse" in embedded.keywords and "Waves" in embedded.caption
    assert item_text(str(misc / "IMG_0007.jpg")).keywords == "cathedral, Köln"
    assert xmp_fields(b"<not xml") == ([], [])


def test_keyword_search_ranks_by_bm25_and_finds_every_source(library, engine_factory):
    eng = engine_factory()
    eng.index([library])
    hits = eng.search("beach 2019", k=5, mode="keyword")
    assert _names(hits)[0] == "beach_2019.png"  # both words, and in the file name
    assert set(_names(hits)[1:]) >= {"IMG_0002.png"}  # "2019" from the folder name
    assert hits[0].score > hits[-1].score > 0
    assert _names(eng.search("umbrella", mode="keyword")) == ["IMG_0004.jpg"]
    assert _names(eng.search("fjords", mode="keyword")) == ["IMG_0005.png"]  # stemmed: fjords ~ fjord
    assert _names(eng.search("lighthouse", mode="keyword")) == ["IMG_0006.jpg"]
    assert _names(eng.search("koln", mode="keyword")) == ["IMG_0007.jpg"]  # diacritics folded
    assert _names(eng.search("mountain", mode="keyword")) == ["mountainTrip.png"]
    assert eng.search("zebra", mode="keyword") == []
    # FTS5 syntax in a query is only words: no error, no operator
    assert eng.search('NEAR(beach 2019) OR "x* AND', mode="keyword")[0].path.endswith("beach_2019.png")
    assert match_expression(query_words('a "b" c*')) == '"b" OR "c"'  # "a": a function word


def test_hybrid_is_reciprocal_rank_fusion_of_both_lists(library, engine_factory):
    from mbm.retrieval.hybrid import CANDIDATES

    eng = engine_factory()
    eng.index([library])
    query = "beach 2019"
    by_vector = [h.id for h in eng.search(query, k=CANDIDATES)]
    by_words = [h.id for h in eng.search(query, k=CANDIDATES, mode="keyword")]
    want = [i for i, _ in rrf([by_vector, by_words])][:5]
    hits = eng.search(query, k=5, mode="hybrid")
    assert [h.id for h in hits] == want
    cosine = {h.id: h.score for h in eng.search(query, k=CANDIDATES)}
    assert all(h.score == pytest.approx(cosine[h.id], abs=1e-5) for h in hits)  # scores stay cosines


def test_a_changed_sidecar_updates_the_text_without_re_embedding(library, engine_factory):
    eng = engine_factory()
    eng.index([library])
    caption = library / "misc" / "IMG_0004.jpg.txt"
    caption.write_text("A blue kayak")
    os.utime(caption, ns=(1, 10**18))
    report = eng.index([library])
    assert report.indexed == 0 and report.unchanged == report.total_items
    assert _names(eng.search("kayak", mode="keyword")) == ["IMG_0004.jpg"]
    assert eng.search("umbrella", mode="keyword") == []
    (library / "misc" / "IMG_0004.jpg").rename(library / "misc" / "harbour.jpg")
    eng.index([library])
    assert _names(eng.search("harbour", mode="keyword"))[0] == "harbour.jpg"  # its name now; the caption stayed behind
    assert eng.search("kayak", mode="keyword") == []


def test_mode_mistakes_are_usage_errors(library, engine_factory):
    eng = engine_factory()
    eng.index([library])
    with pytest.raises(UsageError, match="not known"):
        eng.search("beach", mode="fuzzy")
    with pytest.raises(UsageError, match="no words"):
        eng.search(library / "misc" / "IMG_0004.jpg", mode="keyword")
    with pytest.raises(UsageError, match="keyword search has none"):
        eng.search("beach", mode="keyword", min_score=0.2)


def test_cli_search_mode_tag_and_json(library, engine_factory, tmp_path, monkeypatch):
    from mbm.cli import app

    engine_factory().index([library])
    monkeypatch.setenv("MBM_HOME", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["search", "umbrella", "--mode", "keyword", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["hits"][0]["path"].endswith("IMG_0004.jpg") and "tags" in doc["hits"][0]
    bad = CliRunner().invoke(app, ["search", "umbrella", "--mode", "fuzzy"])
    assert bad.exit_code != 0
    none = CliRunner().invoke(app, ["search", "umbrella", "--tag", "no-such-tag"])
    assert none.exit_code == 0 and none.stdout.strip() == ""


def test_http_search_takes_mode_and_tag(library, engine_factory, tmp_path, tiny_encoder):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mbm import Engine
    from mbm.server import ServerConfig, create_app

    engine_factory().index([library])
    engines = {"default": Engine.open(tmp_path / "store", "default", encoder=tiny_encoder)}
    app = create_app(ServerConfig(store=tmp_path / "store"), engines)
    with TestClient(app) as client:
        app.state.collections.wait_ready(60)
        r = client.post("/search", json={"text": "umbrella", "mode": "keyword", "k": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits[0]["path"].endswith("IMG_0004.jpg") and isinstance(hits[0]["tags"], list)
        assert client.post("/search", json={"text": "umbrella", "mode": "fuzzy"}).status_code == 400  # validation
        r = client.post("/search", json={"text": "x", "tag": "no-such-tag"})
        assert r.status_code == 200 and r.json()["hits"] == []


def test_a_catalog_from_before_tags_and_item_text_migrates(library, engine_factory):
    from mbm.store.catalog import Catalog

    eng = engine_factory()
    eng.index([library])
    path = eng.folder / "catalog.sqlite"
    eng.close()
    old = Catalog.open(path)  # make it what mbm wrote before migration 004
    with old.transaction() as conn:
        for trigger in ("items_deleted_extras", "items_changed_extras"):
            conn.execute(f"DROP TRIGGER {trigger}")
        for table in ("item_tags", "tagged", "item_text", "item_text_state"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DELETE FROM _migrations WHERE name = '004_tags_and_item_text'")
        conn.execute("DELETE FROM meta WHERE key LIKE 'tags_%'")
    old.close()
    readonly = Catalog.open(path, readonly=True)  # searching an old catalog: vectors work, words say what to do
    from mbm.store.keywords import has_text_tables
    from mbm.store.tags import tag_counts

    assert not has_text_tables(readonly) and tag_counts(readonly) == []
    readonly.close()
    assert eng.search("beach", k=3)[0].tags is None  # not tagged yet
    with pytest.raises(UsageError, match="no item text yet"):
        eng.search("beach", mode="keyword")
    eng.index([library])  # the next run migrates, tags and reads the text of every item
    assert _names(eng.search("umbrella", mode="keyword")) == ["IMG_0004.jpg"]
    assert eng.search("beach", k=3)[0].tags is not None
