"""`civicflow serve`: the open-data portal and consumer API over the latest published release."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """Serve the portal (catalogue, dataset pages, downloads, DCAT-AP catalogue) and the API.

    Read-only, over the latest published release; the API is described at /docs and /openapi.json.

    Example: CIVICFLOW_DATA_ROOT=data/demo civicflow serve --port 8000
    """
    import uvicorn

    from civicflow.settings import Settings
    from portal.app import create_app
    from warehouse.layout import Layout

    settings = Settings()
    uvicorn.run(create_app(Layout(settings.data_root)), host=host, port=port, log_level="info")
