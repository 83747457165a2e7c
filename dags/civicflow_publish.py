"""Judge changed staged partitions with Great Expectations, publish what passes, cut the release."""

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
Runs when any `staged.<domain>` dataset changes.

1. **plan** lists the staged partition versions (council x day) the gate has not judged yet.
2. **judge** runs once per partition (a mapped task named after it: `traffic synthetic 2026-03-07
   v3`), all at once on as many workers as there are (it only reads the warehouse): its Great
   Expectations suite decides what is published and what is held back - the whole day for a
   partition rule, one device's day for a device rule (docs/publication.md) - and the decision is
   kept beside its report under `data/validations/`. A partition that makes the gate raise is held
   back with `gate_error`; the others are judged as usual. Clear one box to judge that day again.
3. **release** runs whatever the judging tasks' states: it publishes what each kept decision lets
   through (Parquet and CSV under `data/published/<domain>/`; a partition whose judging task failed
   is planned again next run), rebuilds the data packages and quality summaries and switches
   `published/latest` to a release holding every pending publication. It skips when nothing
   changed, so no `published.<domain>` Asset event is emitted for nothing.

`civicflow release list` shows what is held back; `civicflow release approve` publishes it.
""",
)
def civicflow_publish():
    @task
    def plan() -> list[list[dict]]:
        from civicflow.jobs import plan_gate_job

        return plan_gate_job()

    # Judging only reads the warehouse: the tasks of a run go at once. The release task writes it.
    @task(map_index_template="{{ partitions }}")
    def judge(refs: list[dict]) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from civicflow.errors import TerminalError
        from civicflow.jobs import judge_job

        get_current_context()["partitions"] = ", ".join(
            f"{r['domain']} {r['council']} {r['event_date']} v{r['version']}" for r in refs
        )
        try:
            return judge_job(refs)
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(outlets=PUBLISHED, trigger_rule="all_done")
    def release(plans: list[list[dict]]) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from civicflow.errors import TerminalError
        from civicflow.jobs import release_job

        try:
            outcome = release_job(refs=[r for refs in plans for r in refs])
        except TerminalError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not outcome["cut"] and not outcome["released"]:
            raise AirflowSkipException("nothing new to release: latest is unchanged")
        return outcome

    plans = plan()
    judge.expand(refs=plans) >> release(plans)


publish_dag = civicflow_publish()
