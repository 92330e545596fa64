"""Fetching a client's ``image_url`` without letting clients reach what only the server can.

A server that fetches URLs for its clients can be pointed at its own network (cloud metadata
at 169.254.169.254, an admin page on localhost). Unless the operator allows private
addresses, every connection -- the first and each redirect -- resolves the host itself,
refuses any address that is not globally routable, and connects to the address it checked,
so a DNS answer that changes between the check and the connect cannot slip through.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from mbm.server.errors import ApiError

TIMEOUT_S = 10
MAX_REDIRECTS = 5


class _Refused(OSError):
    """An address the server must not connect to (raised inside urllib, turned into a 400)."""


def _checked_address(host: str, port: int, allow_private: bool) -> tuple[Any, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"host {host!r} does not resolve ({e.strerror})") from None
    for family, kind, proto, _, addr in infos:
        if not isinstance(addr[0], str):
            continue  # not an IP socket address
        ip = ipaddress.ip_address(addr[0].split("%")[0])
        if allow_private or ip.is_global:
            return family, kind, proto, addr
    raise _Refused(f"host {host!r} resolves to a private or local address ({infos[0][4][0]})")


def _connect(host: str, port: int, timeout: float, allow_private: bool) -> socket.socket:
    family, kind, proto, addr = _checked_address(host, port, allow_private)
    sock = socket.socket(family, kind, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except OSError:
        sock.close()
        raise
    return sock


def _opener(allow_private: bool) -> urllib.request.OpenerDirector:
    class Http(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _connect(self.host, self.port, TIMEOUT_S, allow_private)

    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = _connect(self.host, self.port, TIMEOUT_S, allow_private)
            self.sock = ssl.create_default_context().wrap_socket(raw, server_hostname=self.host)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Https, req)

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if urlsplit(newurl).scheme not in ("http", "https"):
                raise _Refused(f"redirect to {newurl[:80]!r}, which is not an http(s) URL")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    handlers = (HttpHandler(), HttpsHandler(), Redirects(), urllib.request.HTTPDefaultErrorHandler())
    for handler in (*handlers, urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def download(url: str, limit: int, *, allow_private: bool = False) -> bytes:
    """The bytes at ``url`` (at most ``limit``), or an ApiError naming the URL and what went wrong."""
    shown = repr(url[:80])
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ApiError(400, f"image_url {shown} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "mbm-server"})
    try:
        with _opener(allow_private).open(request, timeout=TIMEOUT_S) as r:
            data: bytes = r.read(limit + 1)
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:  # urllib refuses a redirect loop or a target that is not http(s)
            raise ApiError(
                400, f"image_url {shown} redirects where mbm does not follow (a loop, or a URL that is not http(s))"
            ) from None
        raise ApiError(400, f"image_url {shown} answered HTTP {e.code}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, _Refused):
            raise ApiError(
                400,
                f"image_url {shown} was refused: {reason} — use a public URL, send the image in `image`, "
                "or start the server with --allow-private-image-urls",
            ) from None
        raise ApiError(400, f"image_url {shown} could not be fetched ({reason})") from None
    except _Refused as e:
        raise ApiError(400, f"image_url {shown} was refused: {e}") from None
    except (OSError, http.client.HTTPException) as e:
        raise ApiError(400, f"image_url {shown} could not be fetched ({e})") from None
    if len(data) > limit:
        raise ApiError(413, f"image_url {shown} is over the limit of {limit} bytes")
    return data
