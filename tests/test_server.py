"""The HTTP API through FastAPI's TestClient: every endpoint, auth, limits, thumbnails by id only,
stable paging, clip-retrieval's ClipClient request, new items appearing without a restart."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
pytest.importorskip("prometheus_client", reason="the server extra is not installed (pip install 'mbm[server]')")
from conftest import make_images, pattern_image  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mbm.server import Limits, ServerConfig, create_app  # noqa: E402

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_encoder):
    from mbm import Engine

    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    make_images(photos, 12)
    (root / "outside").mkdir()
    pattern_image(99).save(root / "outside" / "secret.png")
    os.symlink(root / "outside" / "secret.png", photos / "link.png")
    texts = root / "captions.txt"
    texts.write_text("a red car\na blue boat\na green tree\na yellow house\n")
    with Engine.open(root / "store", "photos", model="mbm-tiny", encoder=tiny_encoder) as eng:
        eng.index([photos])
    with Engine.open(root / "store", "captions", model="mbm-tiny", encoder=tiny_encoder) as eng:
        eng.index([texts])
    return root


def make_client(store, tiny_encoder, **config):
    from mbm import Engine

    engines = {n: Engine.open(store / "store", n, encoder=tiny_encoder) for n in ("photos", "captions")}
    app = create_app(ServerConfig(store=store / "store", **config), engines)
    client = TestClient(app)
    client.__enter__()
    app.state.collections.wait_ready(60)
    return client


@pytest.fixture(scope="module")
def client(store, tiny_encoder):
    c = make_client(store, tiny_encoder, limits=Limits(max_body_bytes=200_000, max_image_pixels=500_000, max_k=50))
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def secured(store, tiny_encoder):
    c = make_client(store, tiny_encoder, api_key=KEY, host="0.0.0.0")
    yield c
    c.__exit__(None, None, None)


def b64_image(seed: int, size=(96, 80)) -> str:
    buf = io.BytesIO()
    pattern_image(seed, size).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def item_id(client, name: str) -> int:
    hits = client.post("/search", json={"text": "x", "k": 50, "collection": "photos"}).json()["hits"]
    return next(h["id"] for h in hits if h["path"].endswith(name))


# -- endpoints -----------------------------------------------------------------------------------
def test_health_ready_collections_and_schema(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    names = {c["name"]: c for c in client.get("/collections").json()}
    assert names["photos"]["kind"] == "image" and names["photos"]["items"] == 13
    assert names["captions"]["kind"] == "text"
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/search",
        "/search/image",
        "/items/{item_id}",
        "/items/{item_id}/thumbnail",
        "/collections",
        "/healthz",
        "/readyz",
        "/metrics",
        "/knn-service",
        "/indices-list",
    ):
        assert p in paths, p
    assert client.get("/docs").status_code == 200


def test_search_text_image_embedding_like_and_terms(client):
    r = client.post("/search", json={"text": "red", "k": 5, "collection": "photos"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["hits"]) == 5 and [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert {"id", "path", "score", "width", "height", "taken_at"} <= set(body["hits"][0])
    assert isinstance(body["generation"], int)
    first = body["hits"][0]["id"]
    # an image identical to an indexed one finds it first
    r = client.post("/search", json={"image": b64_image(3), "k": 3, "collection": "photos"})
    assert r.json()["hits"][0]["path"].endswith("img0003.png")
    # more like this: the item's stored vector
    r = client.post("/search", json={"like": first, "k": 2, "collection": "photos", "return_embeddings": True})
    hits = r.json()["hits"]
    assert hits[0]["id"] == first and hits[0]["score"] > 0.999 and len(hits[0]["embedding"]) == 64
    vector = hits[0]["embedding"]
    assert (
        client.post("/search", json={"embedding": vector, "k": 1, "collection": "photos"}).json()["hits"][0]["id"]
        == first
    )
    r = client.post(
        "/search",
        json={"terms": [{"weight": 2, "like": first}, {"weight": -1, "text": "blue"}], "collection": "photos"},
    )
    assert r.status_code == 200
    assert client.post("/search", json={"query": "2:red - blue", "collection": "photos"}).status_code == 200
    # image -> text against a text collection
    r = client.post("/search", json={"image": b64_image(1), "k": 2, "collection": "captions"})
    assert r.status_code == 200 and r.json()["hits"][0]["text"]
    # multipart upload
    raw = base64.b64decode(b64_image(5))
    r = client.post(
        "/search/image", files={"file": ("q.png", raw, "image/png")}, data={"k": "2", "collection": "photos"}
    )
    assert r.status_code == 200 and r.json()["hits"][0]["path"].endswith("img0005.png")


def test_min_score_under_and_rerank(client, store):
    all_hits = client.post("/search", json={"text": "red", "k": 13, "collection": "photos"}).json()["hits"]
    cut = all_hits[3]["score"]
    some = client.post("/search", json={"text": "red", "k": 13, "min_score": cut, "collection": "photos"}).json()[
        "hits"
    ]
    assert all(h["score"] >= cut for h in some) and len(some) >= 4
    r = client.post("/search", json={"text": "red", "under": str(store / "nowhere"), "collection": "photos"})
    assert r.status_code == 200 and r.json()["hits"] == []
    r = client.post("/search", json={"text": "red", "rerank": True, "collection": "photos"})
    assert r.status_code == 400 and "fusion" in r.json()["error"]  # mbm-tiny has no fusion head


def test_paging_is_stable_and_reports_the_generation(client):
    whole = client.post("/search", json={"text": "boat", "k": 12, "collection": "photos"}).json()
    pages = [
        client.post("/search", json={"text": "boat", "k": 4, "offset": o, "collection": "photos"}).json()
        for o in (0, 4, 8)
    ]
    assert [h["id"] for p in pages for h in p["hits"]] == [h["id"] for h in whole["hits"]]
    assert [h["rank"] for h in pages[1]["hits"]] == [5, 6, 7, 8]
    assert {p["generation"] for p in pages} == {whole["generation"]}


def test_items_and_thumbnails(client, tmp_path):
    iid = item_id(client, "img0002.png")
    item = client.get(f"/items/{iid}?collection=photos").json()
    assert item["path"].endswith("img0002.png") and item["width"] == 96
    r = client.get(f"/items/{iid}/thumbnail?size=64&collection=photos")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"].startswith("private") and r.headers["etag"]
    from PIL import Image

    assert max(Image.open(io.BytesIO(r.content)).size) <= 64
    again = client.get(
        f"/items/{iid}/thumbnail?size=64&collection=photos", headers={"If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304
    assert client.get("/items/999999?collection=photos").status_code == 404
    assert client.get("/items/999999/thumbnail?collection=photos").status_code == 404
    assert client.get(f"/items/{iid}/thumbnail?size=5000&collection=photos").status_code == 400


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "%2e%2e%2fetc%2fpasswd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "..%2F..%2Fsecret.png",
        "1%2F..%2F2",
        "-1",
        "1.5",
    ],
)
def test_thumbnails_take_only_ids(client, bad):
    r = client.get(f"/items/{bad}/thumbnail?collection=photos")
    assert r.status_code in (400, 404), (bad, r.status_code)
    assert r.headers["content-type"].startswith("application/json")


def test_symlink_out_of_the_indexed_folder_is_refused(client):
    iid = item_id(client, "link.png")
    r = client.get(f"/items/{iid}/thumbnail?collection=photos")
    assert r.status_code == 403 and "outside" in r.json()["error"]


def test_missing_file_is_404(client, store):
    iid = item_id(client, "img0011.png")
    target = store / "photos" / "img0011.png"
    data = target.read_bytes()
    target.unlink()
    try:
        r = client.get(f"/items/{iid}/thumbnail?size=128&collection=photos")
        assert r.status_code == 404 and "gone" in r.json()["error"]
    finally:
        target.write_bytes(data)


# -- limits and errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,status,word",
    [
        ({"text": "x", "k": 0}, 400, "k=0"),
        ({"text": "x", "k": 51}, 400, "k=51"),
        ({"text": "x", "offset": -1}, 400, "offset=-1"),
        ({"text": "x", "offset": 10**6}, 400, "offset=1000000"),
        ({"text": "x" * 1001}, 400, "1001 characters"),
        ({"text": "x", "collection": "nope"}, 404, "'nope'"),
        ({}, 400, "exactly one"),
        ({"text": "x", "like": 1}, 400, "exactly one"),
        ({"image": "not base64!!"}, 400, "base64"),
        ({"image": base64.b64encode(b"GIF89a garbage").decode()}, 415, "not an image"),
        ({"embedding": [0.1, 0.2]}, 400, "2 dimensions"),
        ({"like": 987654}, 404, "987654"),
        ({"query": "red + ./pic.jpg"}, 400, "image path"),
        ({"text": "x", "k": "many"}, 400, "k"),
        ({"text": "x", "rerank": 10**6}, 400, "rerank"),
    ],
)
def test_bad_requests_name_the_bad_value(client, body, status, word):
    r = client.post("/search", json={"collection": "photos", **body} if "collection" not in body else body)
    assert r.status_code == status, r.text
    assert word in r.json()["error"]
    assert "Traceback" not in r.text


def test_body_and_pixel_limits(client):
    r = client.post("/search", content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "300002 bytes" in r.json()["error"]
    r = client.post("/search", json={"image": b64_image(1, (1000, 800)), "collection": "photos"})
    assert r.status_code == 413 and "800000 pixels" in r.json()["error"]
    assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400

    def chunks():  # a body of unknown size: refused before it is read
        yield b'{"query": "red"'
        yield b"}"

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]


# -- auth ----------------------------------------------------------------------------------------
def test_api_key_is_required_except_for_healthz(secured):
    assert secured.get("/healthz").status_code == 200
    for method, path in (
        ("get", "/collections"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/items/1"),
        ("get", "/items/1/thumbnail"),
        ("get", "/indices-list"),
        ("get", "/openapi.json"),
    ):
        assert getattr(secured, method)(path).status_code == 401, path
    assert secured.post("/search", json={"text": "x"}).status_code == 401
    assert secured.post("/knn-service", json={"text": "x"}).status_code == 401
    wrong = secured.get("/collections", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert secured.get("/collections", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert (
        secured.post("/search", json={"text": "x", "collection": "photos"}, headers={"X-API-Key": KEY}).status_code
        == 200
    )


def test_non_loopback_without_a_key_refuses_to_start(store, tiny_encoder):
    from mbm.errors import UsageError

    with pytest.raises(UsageError, match="--api-key"):
        create_app(ServerConfig(store=store / "store", host="0.0.0.0"), {})
    ServerConfig(store=store / "store", host="::1").check()  # loopback: fine without a key


# -- clip-retrieval ------------------------------------------------------------------------------
def clip_client_body(**query):
    """Exactly what clip_retrieval.clip_client.ClipClient(url, indice_name="photos").query(...) posts
    (its defaults), sent as requests.post(url, data=json.dumps(...)): no Content-Type header."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": "photos",
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 40,
        "num_result_ids": 40,
        "verbose": False,
    }
    body.update(query)
    return json.dumps(body).encode()


def test_knn_service_answers_clip_client(client):
    assert client.get("/indices-list").json() == ["photos", "captions"]
    r = client.post("/knn-service", content=clip_client_body(text="a red square"))
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and 1 <= len(results) <= 40
    assert set(results[0]) == {"id", "similarity", "url", "caption", "image_path"}
    assert results[0]["url"].endswith(f"/items/{results[0]['id']}/thumbnail?size=1024&collection=photos")
    image = client.post("/knn-service", content=clip_client_body(image=b64_image(4))).json()
    assert image[0]["caption"] == "img0004.png" and image[0]["similarity"] > 0.99
    emb = client.post(
        "/search", json={"like": image[0]["id"], "k": 1, "collection": "photos", "return_embeddings": True}
    )
    by_vector = client.post(
        "/knn-service", content=clip_client_body(embedding_input=emb.json()["hits"][0]["embedding"])
    )
    assert by_vector.json()[0]["id"] == image[0]["id"]
    few = client.post("/knn-service", content=clip_client_body(text="boat", num_images=3, num_result_ids=3)).json()
    assert len(few) == 3
    texts = client.post(
        "/knn-service", content=clip_client_body(text="car", indice_name="captions", modality="text")
    ).json()
    assert texts[0]["caption"] and texts[0]["url"] is None


def test_knn_service_refuses_image_urls_by_default(client):
    r = client.post("/knn-service", content=clip_client_body(image_url="http://example.com/a.jpg"))
    assert r.status_code == 400 and "--allow-image-urls" in r.json()["error"]
    assert client.post("/knn-service", content=clip_client_body()).status_code == 400
    assert client.post("/knn-service", content=clip_client_body(text="x", indice_name="nope")).status_code == 404


# -- metrics, live updates, page -----------------------------------------------------------------
def test_metrics(client):
    client.post("/search", json={"text": "red", "collection": "photos"})
    text = client.get("/metrics").text
    for name in (
        "mbm_http_requests_total",
        "mbm_http_request_seconds_bucket",
        "mbm_encode_seconds_bucket",
        "mbm_search_seconds_bucket",
        "mbm_batch_size_bucket",
        'mbm_collection_items{collection="photos"}',
    ):
        assert name in text, name
    assert 'endpoint="/search",status="200"' in text


def test_new_items_appear_without_a_restart(client, store, tiny_encoder):
    from mbm import Engine

    before = client.post("/search", json={"image": b64_image(50), "k": 1, "collection": "photos"}).json()
    extra = store / "photos" / "more"
    make_images(extra, 2, start=50)
    with Engine.open(store / "store", "photos", encoder=tiny_encoder) as writer:  # as `mbm index` beside the server
        writer.index([store / "photos"])
    after = client.post("/search", json={"image": b64_image(50), "k": 1, "collection": "photos"}).json()
    assert after["generation"] > before["generation"]
    assert after["hits"][0]["path"].endswith("img0050.png") and after["hits"][0]["score"] > 0.99


def test_concurrent_text_queries_are_batched(client):
    import asyncio

    import httpx

    async def many():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            rs = await asyncio.gather(
                *[ac.post("/search", json={"text": f"query {i}", "k": 3, "collection": "photos"}) for i in range(24)]
            )
        return rs

    responses = asyncio.run(many())
    assert all(r.status_code == 200 and len(r.json()["hits"]) == 3 for r in responses)


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "search-form" in r.text
    assert client.get("/static/app.js").status_code == 200


def test_rerank_through_the_api_with_a_fusion_head(tmp_path):
    """A model with a fusion head: /search re-orders the top N, every hit carries its match probability."""
    import torch

    from mbm import Engine
    from mbm.models import load_model
    from mbm.models.build import create_from_config, load_model_cfg, save_checkpoint
    from mbm.models.fusion import FusionConfig, FusionModel

    torch.manual_seed(0)
    model = create_from_config("mbm-tiny")[0]
    fusion = FusionModel(FusionConfig(width=32, layers=1, heads=2, text_dim=64, image_dim=64, max_text_tokens=8))
    folder = save_checkpoint(model, tmp_path / "tiny-fusion", load_model_cfg("mbm-tiny"), heads=(fusion, None))
    encoder = load_model(str(folder), device="cpu", precision="fp32")
    make_images(tmp_path / "pics", 8)
    with Engine.open(tmp_path / "store", "pics", model=encoder.spec, encoder=encoder) as eng:
        eng.index([tmp_path / "pics"])
    engines = {"pics": Engine.open(tmp_path / "store", "pics", encoder=encoder)}
    app = create_app(ServerConfig(store=tmp_path / "store"), engines)
    with TestClient(app) as c:
        app.state.collections.wait_ready(60)
        plain = c.post("/search", json={"text": "a red car", "k": 8}).json()["hits"]
        ranked = c.post("/search", json={"text": "a red car", "k": 5, "rerank": 8}).json()["hits"]
    assert {h["id"] for h in ranked} <= {h["id"] for h in plain} and len(ranked) == 5
    assert all(0 <= h["match"] <= 1 for h in ranked) and [h["rank"] for h in ranked] == [1, 2, 3, 4, 5]
    cosine = {h["id"]: h["score"] for h in plain}
    assert all(abs(h["score"] - cosine[h["id"]]) < 1e-6 for h in ranked)  # score stays the dual encoder's cosine
    engines["pics"].close()


def test_serve_without_the_extra_names_the_pip_command(monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from mbm.cli import app as cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert "pip install 'mbm[server]'" in text and "uvicorn" in text and "Traceback" not in result.output
