"""Validate changed staged partitions with Great Expectations and publish those that pass."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce
from operator import or_

from airflow.sdk import Asset, dag, task

from civicflow.contract import DATASETS, Zone, asset_uri

STAGED = [Asset(name=f"{Zone.STAGED}.{d}", uri=asset_uri(Zone.STAGED, d)) for d in DATASETS]
PUBLISHED = [Asset(name=f"{Zone.PUBLISHED}.{d}", uri=asset_uri(Zone.PUBLISHED, d)) for d in DATASETS]


@dag(
    dag_id="civicflow_publish",
    schedule=reduce(or_, STAGED),  # any staged dataset changed
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["civicflow", "published"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md="""
### Quality gate and publication
Runs when any `staged.<domain>` dataset changes. Every staged partition whose current version has not been
validated goes through its Great Expectations suite (expectations/). Partitions that pass are
published to `data/published/<domain>/` as Parquet and CSV with a Frictionless `datapackage.json`
(OGL-UK-3.0). A failing partition is held back: its previous release stays as it was and the
validation report under `data/validations/` says why.
""",
)
def civicflow_publish():
    @task(outlets=PUBLISHED)
    def validate_and_publish() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from civicflow.errors import TerminalError
        from jobs import publish_job

        try:
            return publish_job()
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc

    validate_and_publish()


publish_dag = civicflow_publish()
