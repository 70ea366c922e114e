"""Prometheus metrics of one server instance.

Every :class:`Metrics` owns its own ``CollectorRegistry``: two apps in one process (tests) never
share counters, and nothing is registered in prometheus_client's global default registry.
``/metrics`` (with ``--metrics_enable``) renders :meth:`Metrics.render`.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Image generation takes from tens of milliseconds (tiny models) to minutes (large models, many steps).
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def resident_bytes() -> int | None:
    """Resident memory of this process (Linux ``/proc/self/statm``); None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Metrics:
    """Request counts, latency, queue depth, in-flight requests and cancellations, per graph.

    ``graph`` is the graph name (never an alias, to bound label cardinality); it is empty for
    requests that were refused before a graph was chosen. ``route`` is the matched route template.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ovms_graph_requests", "HTTP requests answered, by graph, route and status code.",
            ("graph", "route", "status"), registry=self.registry)
        self.latency = Histogram(
            "ovms_graph_request_duration_seconds", "Time from receiving a request to its last byte.",
            ("graph", "route"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge(
            "ovms_graph_queue_depth", "Requests waiting for a free slot of the graph.",
            ("graph",), registry=self.registry)
        self.in_flight = Gauge(
            "ovms_graph_in_flight_requests", "Requests the graph is running now.",
            ("graph",), registry=self.registry)
        self.cancellations = Counter(
            "ovms_graph_cancellations", "Requests whose client went away before the answer was complete.",
            ("graph",), registry=self.registry)
        self.ready = Gauge(
            "ovms_graph_ready", "1 when every graph is loaded and the server accepts requests.",
            registry=self.registry)
        self.resident = Gauge(
            "ovms_graph_resident_memory_bytes", "Resident memory of the server process now.",
            registry=self.registry)
        self.resident.set_function(lambda: float(resident_bytes() or 0))
        self.graph_estimate = Gauge(
            "ovms_graph_graph_memory_estimate_bytes",
            "Resident memory the graph's calculators expect to hold once serving (every pipeline set).",
            ("graph",), registry=self.registry)

    def add_graph(self, graph: str, *, estimate: int | None = None) -> None:
        """Publish zero-valued series for ``graph`` so dashboards see it before its first request, and
        its memory estimate when its calculators gave one."""
        if estimate is not None:
            self.graph_estimate.labels(graph).set(estimate)
        self.queue_depth.labels(graph).set(0)
        self.in_flight.labels(graph).set(0)
        self.cancellations.labels(graph)

    def observe_request(self, graph: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        self.requests.labels(graph, route, str(status)).inc()
        self.latency.labels(graph, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
