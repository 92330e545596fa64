"""Prometheus metrics of one app (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mbm_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "mbm_http_request_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode = Histogram(
            "mbm_encode_seconds",
            "Query encoding time (one micro-batch or one query)",
            ["collection"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search = Histogram(
            "mbm_search_seconds",
            "Vector search time (one micro-batch or one query)",
            ["collection"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rerank = Histogram(
            "mbm_rerank_seconds",
            "Fusion re-ranking time per query",
            ["collection"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "mbm_batch_size",
            "Text queries encoded and searched together",
            ["collection"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.items = Gauge("mbm_collection_items", "Items in each collection", ["collection"], registry=r)

    def observe_search(self, collection: str, timings: Mapping[str, float], *, encode: bool = True) -> None:
        """One ``Engine.search``'s phases (``Engine.timings``); ``encode=False`` where its query's encoding was
        observed with its micro-batch."""
        if encode:
            self.encode.labels(collection).observe(timings.get("encode", 0.0))
        self.search.labels(collection).observe(timings.get("search", 0.0))
        if "rerank" in timings:
            self.rerank.labels(collection).observe(timings["rerank"] + timings.get("rerank_query", 0.0))
