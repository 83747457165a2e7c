"""Re-stage the raw segments opened in a time range (a replay), on a manual trigger."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

from civicflow.contract import DATASETS, Zone, asset_uri

STAGED = [Asset(name=f"{Zone.STAGED}.{d}", uri=asset_uri(Zone.STAGED, d)) for d in DATASETS]
BOUND = "A UTC date (2026-03-01) or date-time (2026-03-01T08:00:00Z); a date as `to` means its end."


@dag(
    dag_id="civicflow_backfill",
    schedule=None,  # manual trigger only, with `from` and `to`
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["civicflow", "staged", "backfill"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "from": Param(type="string", minLength=10, title="From", description=BOUND),
        "to": Param(type="string", minLength=10, title="To", description=BOUND),
    },
    doc_md="""
### Replay raw segments
Re-stages every closed raw segment whose name says it was opened between `from` and `to` (UTC).
Each partition (council x event date) those segments touch is rebuilt from every staged raw segment
that feeds it, with the same de-duplication rule as `civicflow_stage`, so the result is what staging
everything at once would give. Only partitions whose rows changed get a new version; the
`staged.<domain>` Assets then trigger `civicflow_publish`, which re-validates exactly those.
Same as `civicflow replay --from ... --to ...` (docs/airflow.md).
""",
)
def civicflow_backfill():
    @task(outlets=STAGED)
    def replay_segments(params: dict | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from civicflow.errors import TerminalError
        from civicflow.jobs import replay_job

        try:
            result = replay_job(params["from"], params["to"])
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not result["changed_partitions"]:
            raise AirflowSkipException("the replay changed no staged partition")
        return result

    replay_segments()


backfill_dag = civicflow_backfill()
