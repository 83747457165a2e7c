"""Stage closed raw segments into Parquet partitions and the DuckDB warehouse."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

from civicflow.contract import DATASETS, Zone, asset_uri

STAGED = [Asset(name=f"{Zone.STAGED}.{d}", uri=asset_uri(Zone.STAGED, d)) for d in DATASETS]


@dag(
    dag_id="civicflow_stage",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["civicflow", "staged"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md="""
### Stage raw segments
Reads every closed raw segment not yet in `raw.segments`, decodes it against the wire contract
(docs/mqtt-contract.md), replaces the affected `staged.<domain>` partitions (council x event date)
in one transaction and writes their Parquet files under `data/staged/`. Rejected readings go to
`quarantine.readings` with a reason. Safe to re-run: a segment is staged once. A run that changes
no partition skips, so it wakes no `civicflow_publish` run.
""",
)
def civicflow_stage():
    @task(outlets=STAGED)
    def stage_segments() -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from civicflow.errors import TerminalError
        from jobs import stage_job

        try:
            result = stage_job()
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not result["changed_partitions"]:
            # A skipped task emits no Asset event, so no civicflow_publish run follows for nothing.
            raise AirflowSkipException(f"no staged partition changed ({result['segments']} segments staged)")
        return result

    stage_segments()


stage_dag = civicflow_stage()
