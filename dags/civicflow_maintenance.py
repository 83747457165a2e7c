"""Enforce the retention periods of what may hold personal data, once a day."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(
    dag_id="civicflow_maintenance",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["civicflow", "raw", "quarantine", "retention"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md="""
### Retention
Enforces `CIVICFLOW_RETENTION__*` (docs/security.md, "Personal data"):

- deletes the closed raw segments opened more than `raw_segment_days` (90) ago that
  `raw.segments` records as staged; a segment not yet staged is never deleted;
- strips the payload of quarantined messages received more than `quarantine_payload_days` (30)
  ago, and masks the values their detail quotes, in `quarantine.readings` and the quarantine files;
- deletes quarantine rows received more than `quarantine_record_days` (365) ago.

Staged and published readings are the open data and are kept. When the warehouse changed, its
file is rewritten so that no freed block keeps what was removed. Safe to re-run: a second run
finds nothing more to do. A run that removed nothing skips.
""",
)
def civicflow_maintenance():
    @task
    def enforce_retention() -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from civicflow.errors import TerminalError
        from civicflow.jobs import retention_job

        try:
            result = retention_job()
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc
        removed = sum(v for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool))
        if not removed:
            raise AirflowSkipException("nothing has passed its retention period")
        return result

    enforce_retention()


maintenance_dag = civicflow_maintenance()
