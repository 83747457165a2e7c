"""The listener's Prometheus metrics and health endpoint.

`/metrics` is the Prometheus text format; `/health` is a JSON document with the listener's state,
answered with 200 when it is healthy (connected, subscribed, landing) and 503 otherwise, so a
load balancer, systemd or Kubernetes probe and `civicflow status` all read the same thing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

log = logging.getLogger(__name__)

SESSION_LOST_CAUSES = ("taken_over", "not_present")


class ListenerMetrics:
    """Counters and gauges of one listener, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "civicflow_listener_messages_received", "MQTT messages received from the broker.", registry=r
        )
        self.landed = Counter(
            "civicflow_listener_messages_landed", "Messages written and fsynced to a raw segment.", registry=r
        )
        self.acked = Counter(
            "civicflow_listener_messages_acknowledged",
            "Messages acknowledged after landing.",
            registry=r,
        )
        self.bytes = Counter("civicflow_listener_payload_bytes", "Payload bytes received.", registry=r)
        self.rejections = Counter(
            "civicflow_listener_rejections",
            "Messages landed that the decoder will quarantine, by reason, as seen at the edge.",
            ["reason"],
            registry=r,
        )
        self.landing_failures = Counter(
            "civicflow_listener_landing_failures", "Times the raw zone refused a write.", registry=r
        )
        self.sessions_lost = Counter(
            "civicflow_listener_sessions_lost",
            "Sessions lost, by cause: taken_over (another client connected with this client id) or "
            "not_present (a reconnect found no session: its queue is gone).",
            ["cause"],
            registry=r,
        )
        for cause in SESSION_LOST_CAUSES:  # both series exist from the start, at 0, for alerts
            self.sessions_lost.labels(cause=cause)
        self.connects = Counter("civicflow_listener_connects", "Successful connections.", registry=r)
        self.open_segment_age = Gauge(
            "civicflow_listener_open_segment_age_seconds", "Age of the segment being written.", registry=r
        )
        self.closed_backlog = Gauge(
            "civicflow_listener_closed_segments_backlog",
            "Closed raw segments of this listener not yet staged.",
            registry=r,
        )
        self.healthy = Gauge("civicflow_listener_healthy", "1 when subscribed and landing.", registry=r)
        self.connected = Gauge("civicflow_listener_connected", "1 while connected to the broker.", registry=r)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] == "/metrics":
            body, status, ctype = generate_latest(self.server.metrics.registry), 200, CONTENT_TYPE_LATEST
        elif self.path.split("?")[0] == "/health":
            doc = self.server.health()
            body = json.dumps(doc).encode()
            status, ctype = (200 if doc.get("healthy") else 503), "application/json"
        else:
            body, status, ctype = b"see /metrics and /health\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        log.debug("metrics endpoint: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: ListenerMetrics
    health: Callable[[], dict]


def serve(metrics: ListenerMetrics, health: Callable[[], dict], host: str, port: int) -> _Server | None:
    """Serve /metrics and /health in a daemon thread; None (and an error logged) if the port is taken."""
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        log.error(
            "cannot serve metrics on %s:%d (%s); the listener runs without them. "
            "Set CIVICFLOW_METRICS__PORT to a free port, or 0 to turn the endpoint off",
            host,
            port,
            exc,
        )
        return None
    server.metrics = metrics
    server.health = health
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /health", host, server.server_address[1])
    return server
