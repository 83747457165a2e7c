"""Validate changed staged partitions with Great Expectations and publish those that pass."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

STAGED_PARKING = Asset(name="staged.parking", uri="civicflow://staged/parking")
PUBLISHED_PARKING = Asset(name="published.parking", uri="civicflow://published/parking")


@dag(
    dag_id="civicflow_publish",
    schedule=[STAGED_PARKING],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["civicflow", "published"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md="""
### Quality gate and publication
Runs when `staged.parking` changes. Every staged partition whose current version has not been
validated goes through its Great Expectations suite (expectations/). Partitions that pass are
published to `data/published/<domain>/` as Parquet and CSV with a Frictionless `datapackage.json`
(OGL-UK-3.0). A failing partition is held back: its previous release stays as it was and the
validation report under `data/validations/` says why.
""",
)
def civicflow_publish():
    @task(outlets=[PUBLISHED_PARKING])
    def validate_and_publish() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from civicflow.errors import TerminalError
        from civicflow.jobs import publish_job

        try:
            return publish_job()
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc

    validate_and_publish()


publish_dag = civicflow_publish()
