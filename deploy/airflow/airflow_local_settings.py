"""Airflow cluster policy for Civicflow on many workers: the Celery queue and the pool of each task.

Install as `$AIRFLOW_HOME/config/airflow_local_settings.py` where the DAG processor runs (the policy
is applied when DAG files are parsed, and what it sets is stored with the serialized DAG, which the
scheduler reads), and keep the same file on every other Airflow host. The DAG files say nothing
about queues or pools: `civicflow batch` and `civicflow airflow` on one machine need none of this.

Queues (docs/airflow.md, "Many workers"). A Celery worker takes only the tasks of the queues it was
started with (`airflow celery worker --queues ...`):

- `civicflow-stage`: the staging shards (`civicflow_stage`'s mapped `decode` tasks). They read raw
  segments and commit to the Iceberg catalogue, never to the DuckDB warehouse, so any number of
  workers on any number of hosts can take this queue.
- `civicflow-warehouse`: every other Civicflow task (staging's merge, the quality gate and the
  releases, replays, retention). Each opens the DuckDB warehouse, one file on one host: start this
  queue's worker there, and only there, with `--concurrency` equal to the slots of the pool
  `civicflow_warehouse` (WAREHOUSE_SLOTS).

A Civicflow task this file does not name goes to `civicflow-warehouse`: a task added or renamed in
a DAG file runs where the warehouse is, which is always safe, until it is named here.

Pools bound how many tasks of a kind run at once, over every worker and every DAG run:

- `civicflow_staging`: the staging shards, one slot each. Its slots are the shards that may
  commit to the catalogue at once; a commit lost to another shard is retried
  (`CIVICFLOW_CATALOG__COMMIT_RETRIES`), so keep that setting at least the pool's slots.

- `civicflow_warehouse`: a readers-writer lock on the DuckDB warehouse, which many processes may
  open read-only at once but only one for writing, and then no other at all. The judging tasks of
  `civicflow_publish` only read it and take one slot each, so WAREHOUSE_SLOTS of them judge at once;
  every other warehouse task takes all the slots (`pool_slots`), so it runs alone.

A pool must exist before a task names it (the scheduler never runs a task whose pool does not
exist): `airflow pools import pools.json` once, after `airflow db migrate`.

A task whose DAG file chose a queue or a pool keeps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

DEFAULT_QUEUE = "default"
"""`[operators] default_queue` (celery.env): the queue of a task that chose none."""
DEFAULT_POOL = "default_pool"
WAREHOUSE_QUEUE = "civicflow-warehouse"
WAREHOUSE_POOL = "civicflow_warehouse"
WAREHOUSE_SLOTS = 2
"""The slots of `civicflow_warehouse` in pools.json, and the warehouse worker's --concurrency."""
WAREHOUSE_READERS = {("civicflow_publish", "judge")}
"""Warehouse tasks that only read it (one slot each); the others take every slot."""

QUEUES = {("civicflow_stage", "decode"): "civicflow-stage"}
"""The queue of a task (DAG id, task id) that does not write the warehouse."""

POOLS = {("civicflow_stage", "decode"): "civicflow_staging"}
"""The pool of a task (DAG id, task id); pools.json creates them."""


def task_policy(task: BaseOperator) -> None:
    """Give a Civicflow task its queue and pool, unless its DAG file chose them."""
    if not task.dag_id.startswith("civicflow_"):
        return
    key = (task.dag_id, task.task_id)
    if task.queue == DEFAULT_QUEUE:
        task.queue = QUEUES.get(key, WAREHOUSE_QUEUE)
    if task.pool != DEFAULT_POOL:
        return
    if key in POOLS:
        task.pool = POOLS[key]
    elif task.queue == WAREHOUSE_QUEUE:
        task.pool = WAREHOUSE_POOL
        task.pool_slots = 1 if key in WAREHOUSE_READERS else WAREHOUSE_SLOTS
