"""Loopback load test of `mbm serve`: text queries at 1, 8 and 32 concurrent clients, plus /knn-service.

    python benchmarks/serve_load.py --items 100000 --seconds 8

The collection is built directly through the Catalog API (benchmarks/cold_search.py's
``build_collection``): ``--items`` random clustered unit vectors stored as float16 under
the bundled model ``mbm-offline`` (speed does not depend on their meaning), then
``prepare_search`` leaves the vector index and the torch-free text tower, as `mbm index`
does. The server runs in a subprocess (uvicorn, one worker) on a free loopback port;
asyncio clients (a minimal keep-alive HTTP/1.1 client) send queries back to back for a fixed time per level.
Targets on a 2-core CPU: p50 < 30 ms at 1 client; throughput at 32 clients >= 4x that at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from _util import report, run_cli
from cold_search import build_collection

WORDS = "red car dog beach sunset mountain city night cat bowl soup tree river boat bird flower street snow".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbm", "serve", "--store", str(store), "--port", str(port)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MBM_OFFLINE": "1"},
    )
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 120 s")


class Connection:
    """A minimal keep-alive HTTP/1.1 client: the load generator shares the server's 2 cores, and httpx's
    per-request cost there would be measured as the server's."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def level(url: str, clients: int, seconds: float, path: str, body: Any) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    rng = np.random.default_rng(clients)

    async def client(conn: Connection, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            data = json.dumps(body(" ".join(rng.choice(WORDS, 3)))).encode()
            t0 = time.perf_counter()
            status, _ = await conn.post(path, data)
            latencies.append(time.perf_counter() - t0)
            errors += status != 200

    conns = [Connection(host, int(port)) for _ in range(clients)]
    await asyncio.gather(*[client(c, time.perf_counter() + 0.5) for c in conns])  # connect and warm up
    latencies.clear()
    errors = 0
    started = time.perf_counter()
    await asyncio.gather(*[client(c, started + seconds) for c in conns])
    wall = time.perf_counter() - started
    for c in conns:
        c.close()
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(float(np.median(ms)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "qps": round(len(latencies) / wall, 1),
    }


from typing import Any  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument(
        "--index",
        type=Path,
        default=None,
        help="serve this folder indexed with the bundled model instead (tokens stored: searches re-rank by default)",
    )
    ap.add_argument("--name", default="serve_load", help="results file name (benchmarks/results/NAME.json)")
    args = ap.parse_args()
    if args.index is not None:
        store = args.root / f"mbm-bench-serve-index-{args.index.resolve().name}"
        if not (store / "collections" / "default" / "catalog.sqlite").exists():
            done = run_cli(["index", str(args.index), "--store", str(store), "--quiet"])
            if done.returncode != 0:
                sys.exit(f"mbm index failed: {done.stderr}")
    else:
        store = args.root / f"mbm-bench-serve-{args.items}"
        if not (store / "collections" / "default" / "catalog.sqlite").exists():
            build_collection(store, "mbm-offline", args.items)
    port = free_port()
    proc = start_server(store, port)
    url = f"http://127.0.0.1:{port}"
    try:
        levels = [
            asyncio.run(level(url, c, args.seconds, "/search", lambda t: {"text": t, "k": 10})) for c in (1, 8, 32)
        ]
        knn = asyncio.run(
            level(
                url,
                8,
                args.seconds / 2,
                "/knn-service",
                lambda t: {"text": t, "modality": "image", "num_images": 10, "indice_name": "default"},
            )
        )
    finally:
        proc.terminate()
        proc.wait(10)
    speedup = levels[2]["qps"] / max(levels[0]["qps"], 1e-9)
    result = {
        "items": args.items if args.index is None else f"{args.index} indexed (re-ranked by default)",
        "seconds_per_level": args.seconds,
        "model": "mbm-offline",
        "search": levels,
        "knn_service_8_clients": knn,
        "throughput_32_over_1": round(speedup, 2),
        "server": "uvicorn, 1 worker" + "".join(f", {m}" for m in ("uvloop", "httptools") if find_spec(m)),
        "client": "asyncio keep-alive HTTP/1.1, one connection per client, same machine",
        "targets": {"p50_ms_at_1_client": 30, "throughput_32_over_1": 4},
    }
    rows = [
        (
            f"/search {lv['clients']:>2} clients",
            f"p50 {lv['p50_ms']} ms, p99 {lv['p99_ms']} ms, {lv['qps']} req/s, {lv['errors']} errors",
        )
        for lv in levels
    ]
    rows += [
        (
            "/knn-service 8 clients",
            f"p50 {knn['p50_ms']} ms, p99 {knn['p99_ms']} ms, {knn['qps']} req/s, {knn['errors']} errors",
        ),
        ("throughput 32 / 1", f"{speedup:.2f}x"),
    ]
    report(args.name, result, rows)


if __name__ == "__main__":
    main()
