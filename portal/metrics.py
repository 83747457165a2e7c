"""`GET /metrics` on the portal: the batch side's Prometheus metrics (civicflow.warehouse.metrics).

The portal's own pages read only the published releases; this one route also reads the warehouse
beside them, read-only, when Prometheus scrapes it. Where the portal runs without the warehouse,
`civicflow_batch_warehouse_up` is 0 and the batch values are absent: scrape `civicflow metrics`
through node_exporter on the batch host instead (docs/operations.md, "Metrics").
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from civicflow.warehouse.layout import Layout
from civicflow.warehouse.metrics import BatchCollector


def add_metrics(app: FastAPI, layout: Layout) -> None:
    """Route `GET /metrics` (and HEAD) to a collector over `layout`'s warehouse."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BatchCollector(layout))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # A sync route: FastAPI runs it in its thread pool, so reading DuckDB blocks no other request.
        return Response(
            generate_latest(registry), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"}
        )
