"""``image_url`` queries on /knn-service: fetched only when allowed, from public addresses only unless
private ones are allowed too, with redirects, errors and sizes handled. A loopback HTTP server
started by the test plays the image host."""

from __future__ import annotations

import http.server
import io
import socket
import threading

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
pytest.importorskip("prometheus_client", reason="the server extra is not installed (pip install 'mbm[server]')")
from conftest import pattern_image  # noqa: E402
from test_server import clip_client_body, make_client, store  # noqa: E402, F401 - store is a fixture

from mbm.server import Limits  # noqa: E402


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    pattern_image(seed, (96, 80)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_host():
    pages = {"/img4.png": _png(4), "/big.png": b"\x89PNG" + b"0" * 300_000}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/img4.png")
                self.end_headers()
            elif self.path == "/to-file":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.end_headers()
            elif self.path in pages:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(pages[self.path])))
                self.end_headers()
                self.wfile.write(pages[self.path])
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _knn(client, url):
    return client.post("/knn-service", content=clip_client_body(image_url=url))


@pytest.fixture(scope="module")
def public_only(store, tiny_encoder):  # noqa: F811 - the imported fixture
    c = make_client(store, tiny_encoder, allow_image_urls=True)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def trusting(store, tiny_encoder):  # noqa: F811
    limits = Limits(max_body_bytes=200_000)
    c = make_client(store, tiny_encoder, allow_image_urls=True, allow_private_image_urls=True, limits=limits)
    yield c
    c.__exit__(None, None, None)


def test_private_addresses_are_refused_unless_allowed(public_only, image_host):
    r = _knn(public_only, image_host + "/img4.png")
    assert r.status_code == 400
    assert "private or local address" in r.json()["error"] and "--allow-private-image-urls" in r.json()["error"]


def test_a_name_that_resolves_to_a_private_address_is_refused(public_only, image_host, monkeypatch):
    port = int(image_host.rsplit(":", 1)[1])
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):  # a public-looking name whose DNS answer points inside
        return real("127.0.0.1", *args, **kwargs) if host == "images.example.com" else real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    r = _knn(public_only, f"http://images.example.com:{port}/img4.png")
    assert r.status_code == 400 and "private or local address" in r.json()["error"]


def test_fetched_image_answers_like_the_uploaded_one(trusting, image_host):
    r = _knn(trusting, image_host + "/img4.png")
    assert r.status_code == 200, r.text
    assert r.json()[0]["caption"] == "img0004.png" and r.json()[0]["similarity"] > 0.99
    moved = _knn(trusting, image_host + "/moved")
    assert moved.status_code == 200 and moved.json()[0]["caption"] == "img0004.png"


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/missing.png", 400, "HTTP 404"),
        ("/big.png", 413, "over the limit"),
        ("/to-file", 400, "redirects where mbm does not follow"),
    ],
)
def test_fetch_errors_are_clear(trusting, image_host, path, status, words):
    r = _knn(trusting, image_host + path)
    assert r.status_code == status and words in r.json()["error"], r.text


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "http://"])
def test_only_http_urls_are_fetched(trusting, url):
    r = _knn(trusting, url)
    assert r.status_code == 400 and "not an http(s) URL" in r.json()["error"]


def test_an_unreachable_host_is_a_clear_400(trusting):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _knn(trusting, f"http://127.0.0.1:{port}/a.png")
    assert r.status_code == 400 and "could not be fetched" in r.json()["error"]
