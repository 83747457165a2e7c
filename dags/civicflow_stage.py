"""Stage closed raw segments into Parquet partitions and the DuckDB warehouse."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

from civicflow.contract import DATASETS, Zone, asset_uri
from civicflow.settings import Settings

STAGED = [Asset(name=f"{Zone.STAGED}.{d}", uri=asset_uri(Zone.STAGED, d)) for d in DATASETS]


SHARDS = list(range(Settings().stage.shards))
"""Staging shards (CIVICFLOW_STAGE__SHARDS), read when the DAG is parsed: one mapped task each."""


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
1. **decode** runs once per staging shard (`CIVICFLOW_STAGE__SHARDS`, a mapped task each, in
   parallel on as many workers as there are): it reads the closed raw segments of its shard not
   yet staged, decodes them against the wire contract (docs/mqtt-contract.md) and appends their
   readings to the Iceberg table `staged.increments`, with the segments' ledger rows in the same
   commit, so a segment is staged once however often a task runs. Rejected readings are kept in
   the quarantine with a reason.
2. **merge** takes the new increments into the warehouse: de-duplicates, replaces the affected
   `staged.<domain>` partitions (council x event date) in one transaction each and writes their
   Parquet files under `data/staged/`. A run that changes no partition skips, so it wakes no
   `civicflow_publish` run.

3. **feedback** publishes each device's rejection summary, retained, on its gateway's feedback
   topic `<prefix>/<council>/<domain>/<device_id>/feedback` (docs/mqtt-contract.md, Feedback), for
   the devices quarantined since their previous summary; it runs after merge whether merge changed
   a partition or not. Skipped when `CIVICFLOW_MQTT__HOST` is unset or feedback is disabled.

Clear a decode box to decode its shard again (nothing is staged twice); clear merge to merge again;
clear feedback alone to publish what a failed feedback run did not (nothing is published twice).
""",
)
def civicflow_stage():
    @task(map_index_template="shard {{ shard }}")
    def decode(shard: int) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from civicflow.errors import TerminalError
        from civicflow.jobs import decode_job

        get_current_context()["shard"] = f"{shard + 1} of {len(SHARDS)}"
        try:
            return decode_job(shard, shards=len(SHARDS))
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(outlets=STAGED)
    def merge() -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from civicflow.errors import TerminalError
        from civicflow.jobs import merge_job

        try:
            result = merge_job()
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not result["changed_partitions"]:
            # A skipped task emits no Asset event, so no civicflow_publish run follows for nothing.
            raise AirflowSkipException(f"no staged partition changed ({result['segments']} segments staged)")
        return result

    @task(trigger_rule="none_failed")
    def feedback() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from civicflow.jobs import feedback_job

        result = feedback_job()
        if result["skipped"]:
            raise AirflowSkipException(result["skipped"])
        return result

    decode.expand(shard=SHARDS) >> merge() >> feedback()


stage_dag = civicflow_stage()
