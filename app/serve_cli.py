"""`civicflow serve`: the open-data portal and consumer API over the latest published release."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from civicflow.portal.ratelimit import RateLimit
    from civicflow.settings import PortalSettings


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """Serve the portal (catalogue, dataset pages, downloads, DCAT-AP catalogue) and the API.

    Read-only, over the latest published release; the API is described at /docs and /openapi.json.
    Each client address may make CIVICFLOW_PORTAL__RATE_LIMIT_BURST requests at once and
    CIVICFLOW_PORTAL__RATE_LIMIT_PER_MINUTE a minute (0: no limit); behind a proxy, set uvicorn's
    FORWARDED_ALLOW_IPS to its address so that each client is counted, not the proxy.

    Example: CIVICFLOW_DATA_ROOT=data/demo civicflow serve --port 8000
    """
    import uvicorn

    from civicflow.portal.app import create_app
    from civicflow.settings import Settings
    from civicflow.warehouse.layout import Layout

    settings = Settings()
    app = create_app(Layout(settings.data_root), rate_limit=rate_limit(settings.portal))
    uvicorn.run(app, host=host, port=port, log_level="info")


def rate_limit(settings: PortalSettings) -> RateLimit | None:
    """The portal's limit per client address, from CIVICFLOW_PORTAL__RATE_LIMIT_* (None: no limit)."""
    from civicflow.portal.ratelimit import RateLimit

    if settings.rate_limit_per_minute == 0:
        return None
    return RateLimit(settings.rate_limit_per_minute, settings.rate_limit_burst)
