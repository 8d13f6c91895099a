"""``--metrics PORT``: Prometheus metrics of a directory or a node agent, over HTTP.

Nothing is counted twice: the collectors read, at each scrape, the counters the processes keep
anyway (``NodeStats``, the page directory's counters) and the messages and bytes by type that
``MessageCounts`` adds up at each send and receive (only when metrics are on). The HTTP server is
prometheus_client's (the ``metrics`` extra), in a thread of its own.

Names (all under ``dsm_``): ``node_faults_total{node,kind}``, ``node_pages_in_total``,
``node_pages_out_total``, ``node_invalidations_total``, ``node_lost_faults_total``,
``node_fault_latency_seconds`` (a histogram), ``directory_*_total`` (grants, fetches,
invalidations, writebacks, lost pages, ...), ``directory_nodes``, and
``messages_total{process,direction,type}`` / ``message_bytes_total{...}``.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable, Iterable

from dsm.extras import require
from dsm.reliability import SESSION_COUNTERS

#: what needs prometheus_client, in the error when it is missing
FEATURE = "--metrics"

#: counters of NodeStats that get a metric of their own (the faults_* ones go by kind)
NODE_COUNTERS = ("pages_in", "pages_out", "invalidations", "lost_faults", "requests",
                 "upgrades", "writebacks", "discards", "invariant_violations",
                 *(f"session_{name}" for name in SESSION_COUNTERS))


class MessageCounts:
    """Messages and bytes by direction and type; safe to read from the scrape thread."""

    def __init__(self) -> None:
        self.messages: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, direction: str, msg: Any, frames: Iterable[Any]) -> None:
        key = (direction, type(msg).__name__ if msg is not None else "malformed")
        nbytes = sum(len(f) for f in frames)
        with self._lock:
            self.messages[key] += 1
            self.bytes[key] += nbytes

    def snapshot(self) -> tuple[dict, dict]:
        with self._lock:
            return dict(self.messages), dict(self.bytes)


def _message_families(process: str, counts: MessageCounts):
    from prometheus_client.core import CounterMetricFamily

    msgs, nbytes = counts.snapshot()
    m = CounterMetricFamily("dsm_messages", "protocol messages", labels=["process", "direction", "type"])
    b = CounterMetricFamily("dsm_message_bytes", "bytes of protocol messages (all frames)",
                            labels=["process", "direction", "type"])
    for (direction, kind), n in sorted(msgs.items()):
        m.add_metric([process, direction, kind], n)
        b.add_metric([process, direction, kind], nbytes[(direction, kind)])
    return [m, b]


class NodeCollector:
    def __init__(self, node: str, snapshot: Callable[[], dict], counts: MessageCounts):
        self.node, self._snapshot, self.counts = node, snapshot, counts

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        snap = self._snapshot()
        c = snap["counters"]
        faults = CounterMetricFamily("dsm_node_faults", "page faults served, by kind",
                                     labels=["node", "kind"])
        for key, n in sorted(c.items()):
            if key.startswith("faults_"):
                faults.add_metric([self.node, key[len("faults_"):]], n)
        yield faults
        for key in NODE_COUNTERS:
            fam = CounterMetricFamily(f"dsm_node_{key}", f"node counter {key}", labels=["node"])
            fam.add_metric([self.node], c.get(key, 0))
            yield fam
        bounds, counts = snap["latency_buckets_us"], snap["latency_counts"]
        buckets, seen = [], 0
        for bound, n in zip(bounds, counts):
            seen += n
            buckets.append((repr(bound / 1e6), seen))
        total = sum(counts)
        buckets.append(("+Inf", total))
        hist = HistogramMetricFamily("dsm_node_fault_latency_seconds",
                                     "time from a fault to its process's wake-up",
                                     labels=["node"])
        # the sum is not kept (a histogram of buckets): estimated from the bucket bounds
        estimate = sum(b / 1e6 * n for b, n in zip(bounds, counts))
        hist.add_metric([self.node], buckets, sum_value=estimate)
        yield hist
        yield from _message_families(self.node, self.counts)


class DirectoryCollector:
    def __init__(self, counters: Callable[[], dict], nodes: Callable[[], int],
                 counts: MessageCounts, waits: Callable[[], dict] | None = None,
                 node_lock_waits: Callable[[], dict] | None = None):
        self._counters, self._nodes, self.counts = counters, nodes, counts
        #: kind ("lock", "barrier") -> its WaitHistogram (dsm.directory.sync)
        self._waits = waits or dict
        #: node -> the WaitHistogram of its lock acquisitions
        self._node_lock_waits = node_lock_waits or dict

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
        )
        from dsm.directory.sync import WAIT_BUCKETS_S

        def buckets(hist: Any) -> list[tuple[str, int]]:
            out, seen = [], 0
            for bound, n in zip(WAIT_BUCKETS_S, hist.counts):
                seen += n
                out.append((repr(bound), seen))
            return out + [("+Inf", sum(hist.counts))]

        for kind, hist in sorted(self._waits().items()):
            fam = HistogramMetricFamily(f"dsm_directory_{kind}_wait_seconds",
                                        f"how long {kind} requests waited at the directory")
            fam.add_metric([], buckets(hist), sum_value=hist.sum_s)
            yield fam
        fam = HistogramMetricFamily("dsm_directory_node_lock_wait_seconds",
                                    "how long each node's lock acquisitions waited at the "
                                    "directory", labels=["node"])
        for node, hist in sorted(self._node_lock_waits().items()):
            fam.add_metric([node], buckets(hist), sum_value=hist.sum_s)
        yield fam

        for key, n in sorted(self._counters().items()):
            fam = CounterMetricFamily(f"dsm_directory_{key}", f"directory counter {key}")
            fam.add_metric([], n)
            yield fam
        g = GaugeMetricFamily("dsm_directory_nodes", "nodes with a session")
        g.add_metric([], self._nodes())
        yield g
        yield from _message_families("directory", self.counts)


def serve(port: int, collector: Any, addr: str = "0.0.0.0") -> int:
    """Serve ``collector``'s metrics on ``port`` (0: any free port); the port bound.
    ``MissingExtra`` (a ConfigError) without prometheus_client."""
    require("prometheus_client", FEATURE)
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return server.server_port
