"""The whole pipeline on many machines' engines, on this one: a clustered-capable broker, two
listeners, an object store, staging and the gate on two Celery workers, Iceberg tables with a
PostgreSQL catalogue, a release on the object store.

One deployment per session (tests/distributed.py): a throwaway PostgreSQL cluster and redis-server,
an S3-compatible store (moto's server, tests/objectstores.py), and Airflow configured from
deploy/airflow/ (celery.env, the cluster policy and pools.json) with an API server, a scheduler, a
DAG processor and two Celery workers, as docs/airflow.md ("Many workers") lays them out:
`worker-stage` takes the `civicflow-stage` queue (the staging shards, two at a time),
`worker-warehouse` takes `civicflow-warehouse` (every task that opens the DuckDB warehouse, the
judges two at a time) and `default`. Two staging shards, the Iceberg catalogue in PostgreSQL, every
zone in the store (`CIVICFLOW_STORAGE__URL`).

The integration test publishes one real input through NATS Server with JetStream (deploy/nats/) to
two listeners, one per council, which upload their segments to the store; unpauses the DAGs, waits
for the scheduler to run `civicflow_stage` and, on its Asset events, `civicflow_publish`, and checks
that each task ran on the worker its queue names, that the release is what `civicflow batch`
(dag.test in one process, one shard, the catalogue in SQLite, a local data root) releases from the
same segments, file by file, and that the release on the store is that release, named by its
`latest.json`. Skipped, saying what is missing, without initdb/postgres or redis-server.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import runpy
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from distributed import (
    DEPLOY_AIRFLOW,
    Worker,
    missing_binaries,
    run_celery_airflow,
    run_postgres,
    run_redis,
    wait_for,
)
from factories import car_park
from listeners import ListenerProcess
from natsbroker import USERS, Gateway, single_node
from objectstores import CREDENTIALS, aws_credentials, shared_moto

from civicflow.app.batch import run_batch
from civicflow.ingest.samples import birmingham_parking_messages
from civicflow.publish.release import latest_release
from civicflow.settings import Settings
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.storage import open_store

STAGE_WORKER = Worker("worker-stage", ("civicflow-stage",), concurrency=2)
FIXTURES = (aws_credentials,)  # tests/objectstores.py: the store's credentials in the environment
WAREHOUSE_WORKER = Worker("worker-warehouse", ("civicflow-warehouse", "default"), concurrency=2)
SHARDS = 2  # staging shards of the Celery deployment; `civicflow batch` stages with the default, 1
RUN_TIMEOUT_S = 600  # generous: a loaded machine is slow, and the wait ends at the event anyway
EMBEDDED_METADATA = "airflow_embedded"  # civicflow batch's metadata database: a copy of the migrated one
RUN_TIMES = ("published_at", "validated_at")
"""What differs between two runs on the same input: when they judged and published."""
ISO_TIME = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?\+00:00")


def page_without_times(page: bytes, release: str) -> bytes:
    """A Data Docs page with the times of its run and its release's id set aside."""
    return ISO_TIME.sub(b"<time>", page).replace(release.encode(), b"<release>")


@pytest.fixture(scope="session")
def celery_airflow(tmp_path_factory):
    if missing := missing_binaries():
        pytest.skip("; ".join(missing))
    workdir = tmp_path_factory.mktemp("celery-airflow")
    store = shared_moto()  # the S3-compatible store every worker and listener uses
    storage = store.storage(store.create_bucket("civicflow-celery"))
    with run_postgres(workdir / "postgres") as postgres, run_redis(workdir / "redis") as redis:
        catalog = postgres.create_database("civicflow_catalog")
        with run_celery_airflow(
            workdir / "airflow",
            postgres=postgres,
            redis=redis,
            workers=[STAGE_WORKER, WAREHOUSE_WORKER],
            data_root=workdir / "data",
            civicflow_env={
                "CIVICFLOW_STAGE__SHARDS": str(SHARDS),
                "CIVICFLOW_CATALOG__URI": postgres.url(catalog),
                **storage_env(storage),
            },
            copy_metadata_to=EMBEDDED_METADATA,
        ) as airflow:
            airflow.storage = storage
            yield airflow
            stopping = time.monotonic()
        airflow.timings["teardown"] = time.monotonic() - stopping
        # Where the time goes (seen with pytest -s): start-up, runs, each task, CPU per component.
        print(f"\nCelery deployment, seconds: {json.dumps(airflow.timings, indent=1)}")


def storage_env(storage) -> dict[str, str]:
    """The settings and credentials of the object store, for listeners and Airflow workers."""
    return {
        "CIVICFLOW_STORAGE__URL": storage.url,
        "CIVICFLOW_STORAGE__ENDPOINT_URL": storage.endpoint_url,
        **CREDENTIALS,
    }


def land_through_nats(tmp_path: Path, storage, messages: list[tuple[str, bytes]]) -> None:
    """Publish `messages` through NATS Server with JetStream (deploy/nats/) to two listeners, one
    per council (the broker has no shared subscriptions), each on its own spool directory, that
    upload their segments to the store and acknowledge only what is there."""
    server = single_node(tmp_path / "nats", ack_wait='"60s"').start()
    councils = {"birmingham": "civicflow-listener-1", "leeds": "civicflow-listener-2"}
    listeners = [
        ListenerProcess(
            tmp_path / f"spool-{n}",
            server.mqtt_port,
            tmp_path / f"{user}.log",
            client_id=user,
            CIVICFLOW_MQTT__USERNAME=user,
            CIVICFLOW_MQTT__PASSWORD=USERS[user],
            CIVICFLOW_MQTT__COUNCILS=council,
            CIVICFLOW_MQTT__LORAWAN_TOPICS="false",
            **storage_env(storage),
        )
        for n, (council, user) in enumerate(councils.items(), 1)
    ]
    expected = {c: sum(t.split("/")[1] == c for t, _ in messages) for c in councils}
    try:
        for listener in listeners:
            listener.start().wait_subscribed()
        gateways = [
            Gateway(
                server.mqtt_port, f"gw-{council}-1", [m for m in messages if m[0].split("/")[1] == council]
            )
            for council in councils
        ]
        for gateway in gateways:
            gateway.finish()
        for listener, council in zip(listeners, councils, strict=True):
            listener.wait_for(
                lambda listener=listener, council=council: (
                    listener.health()[1].get("acked", 0) >= expected[council]
                ),
                120,
                f"{council}'s readings acknowledged, so uploaded",
            )
        for listener in listeners:
            assert listener.terminate() == 0
    finally:
        for listener in listeners:
            listener.ensure_stopped()
        server.stop()


def one_input() -> list:
    """A real car-park day, a traffic counter whose gateway over-reads (its day is held back) and a
    sound one, and a reading at Go's zero time (quarantined at staging)."""
    parking = [m for m in birmingham_parking_messages() if '"2016-10-04' in m[1].decode()]
    counts = [
        (
            f"city/leeds/traffic/{device}",
            {"observed_at": f"2016-10-04T{h:02d}:{m:02d}:00Z", "intensity": n},
        )
        for device, h, m, n in [
            ("a64", 8, 0, 2**63 - 1),
            ("a64", 8, 5, 2**63 - 1),
            *(("a64", 9, m, 20) for m in range(0, 60, 5)),
            *(("a65", 9, m, 30) for m in range(0, 60, 5)),
        ]
    ]
    return [*parking, *counts, car_park("p8", "0001-01-01T00:00:00Z", 5, council="leeds")]


def release_files(layout: Layout) -> tuple[str, dict[str, bytes]]:
    """The latest release's id and every file of it, by its path in the release."""
    release = latest_release(layout)
    assert release is not None, f"no release under {layout.latest.parent}"
    files = {
        p.relative_to(release).as_posix(): p.read_bytes() for p in sorted(release.rglob("*")) if p.is_file()
    }
    return release.name, files


def comparable(document, release: str):
    """A JSON document with its release's id and its run times replaced by placeholders."""
    if isinstance(document, dict):
        return {k: "<time>" if k in RUN_TIMES else comparable(v, release) for k, v in document.items()}
    if isinstance(document, list):
        return [comparable(v, release) for v in document]
    return document.replace(release, "<release>") if isinstance(document, str) else document


@pytest.mark.integration
def test_stage_and_publish_on_two_celery_workers_release_what_civicflow_batch_releases(
    celery_airflow, aws_credentials, tmp_path, monkeypatch
):
    airflow = celery_airflow
    celery_root, embedded_root = airflow.data_root, tmp_path / "embedded"
    store = open_store(airflow.storage, celery_root)
    messages = [(t, p if isinstance(p, bytes) else json.dumps(p).encode()) for t, p in one_input()]
    land_through_nats(tmp_path, airflow.storage, messages)
    # The embedded default stages the same segments, byte for byte, from its own raw zone.
    keys = [k for k in store.list("raw/") if k.endswith(".seg")]
    assert {k.split("/")[1] for k in keys} == {"civicflow-listener-1", "civicflow-listener-2"}
    for key in keys:
        (embedded_root / key).parent.mkdir(parents=True, exist_ok=True)
        (embedded_root / key).write_bytes(store.get_bytes(key))
    assert not (celery_root / "raw").exists()  # the workers read the raw zone in the store

    assert airflow.import_pools() == {"civicflow_staging": 4, "civicflow_warehouse": 2}
    started = time.monotonic()
    for dag_id in ("civicflow_publish", "civicflow_stage"):  # unpausing stage runs its last hour now
        airflow.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def finished() -> list[str] | None:
        """The first successful stage run and the publish run its Asset events triggered."""
        runs = airflow.query("SELECT dag_id, run_id, run_type, state FROM dag_run ORDER BY id")
        if failed := [r for r in runs if r[3] == "failed"]:
            raise AssertionError(f"DAG runs failed: {failed}\n{airflow.log_tails()}")
        done: dict[tuple[str, str], str] = {}
        for dag_id, run_id, run_type, state in runs:
            if state == "success":  # a later hour's stage run may follow: it stages nothing
                done.setdefault((dag_id, run_type), run_id)
        wanted = [("civicflow_stage", "scheduled"), ("civicflow_publish", "asset_triggered")]
        return [done[w] for w in wanted] if all(w in done for w in wanted) else None

    run_ids = wait_for(
        "civicflow_stage, then civicflow_publish on its Asset events",
        finished,
        RUN_TIMEOUT_S,
        watch=airflow.services,
    )
    airflow.timings["stage and publish runs"] = time.monotonic() - started
    tasks = airflow.query(
        "SELECT dag_id, task_id, map_index, state, hostname, queue, pool || ':' || pool_slots,"
        " extract(epoch FROM end_date - start_date)::float, try_number FROM task_instance"
        " WHERE run_id = ANY(%s) ORDER BY start_date",
        (run_ids,),
    )
    # A task that failed and succeeded on its retry (a minute later) shows here with its try.
    for dag_id, task_id, index, state, host, _queue, _pool, seconds, tried in tasks:
        airflow.timings[f"{dag_id}.{task_id}[{index}] try {tried} on {host} ({state})"] = seconds
    # The workers are given no broker (CIVICFLOW_MQTT__HOST), so the feedback task skips itself.
    assert [t[3] for t in tasks if t[1] != "feedback"] == ["success"] * (len(tasks) - 1), tasks
    assert [t[3] for t in tasks if t[1] == "feedback"] == ["skipped"], tasks
    # Each task ran on the worker of its queue: the shards side by side on worker-stage, the tasks
    # that open the warehouse on worker-warehouse: the judges sharing it (a slot each of the
    # warehouse pool), every task that writes it alone (all its slots).
    assert sorted(
        (dag_id, task_id, index, host, queue, pool)
        for dag_id, task_id, index, _, host, queue, pool, *_ in tasks
    ) == [
        ("civicflow_publish", "judge", 0, "worker-warehouse", "civicflow-warehouse", "civicflow_warehouse:1"),
        ("civicflow_publish", "judge", 1, "worker-warehouse", "civicflow-warehouse", "civicflow_warehouse:1"),
        ("civicflow_publish", "plan", -1, "worker-warehouse", "civicflow-warehouse", "civicflow_warehouse:2"),
        (
            "civicflow_publish",
            "release",
            -1,
            "worker-warehouse",
            "civicflow-warehouse",
            "civicflow_warehouse:2",
        ),
        ("civicflow_stage", "decode", 0, "worker-stage", "civicflow-stage", "civicflow_staging:1"),
        ("civicflow_stage", "decode", 1, "worker-stage", "civicflow-stage", "civicflow_staging:1"),
        (
            "civicflow_stage",
            "feedback",
            -1,
            "worker-warehouse",
            "civicflow-warehouse",
            "civicflow_warehouse:2",
        ),
        ("civicflow_stage", "merge", -1, "worker-warehouse", "civicflow-warehouse", "civicflow_warehouse:2"),
    ]

    # The embedded default: the same DAGs through dag.test in one process, one staging shard, the
    # catalogue in SQLite under the data root. Its metadata database is already migrated.
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", airflow.postgres.url(EMBEDDED_METADATA))
    started = time.monotonic()
    embedded = run_batch(Settings(data_root=embedded_root), airflow_home=tmp_path / "airflow-home")
    airflow.timings["civicflow batch"] = time.monotonic() - started
    assert embedded.ok, embedded

    (their_release, theirs), (our_release, ours) = (
        release_files(Layout(embedded_root)),
        release_files(Layout(celery_root)),
    )
    assert sorted(ours) == sorted(theirs)
    assert {
        "parking/council=birmingham/date=2016-10-04/parking-birmingham-2016-10-04.parquet",
        "traffic/council=leeds/date=2016-10-04/traffic-leeds-2016-10-04.csv",
    } <= set(ours)
    # Data files, schemas and data packages byte for byte; the JSON that names the release or the
    # time of the run, once those are set aside.
    differ = sorted(path for path in ours if ours[path] != theirs[path])
    assert all(path.endswith((".json", ".html")) for path in differ), differ
    for path in differ:
        if path.endswith(".html"):  # a Data Docs page says when its partition was judged
            assert page_without_times(ours[path], our_release) == page_without_times(
                theirs[path], their_release
            ), path
            continue
        assert comparable(json.loads(ours[path]), our_release) == comparable(
            json.loads(theirs[path]), their_release
        ), path
    # ... and the release on the object store is that release, file for file, named by latest.json.
    latest = json.loads(store.get_bytes("published/latest.json"))
    assert our_release in json.dumps(latest)
    prefix = f"published/releases/{our_release}/"
    on_store = {k.removeprefix(prefix): store.get_bytes(k) for k in store.list(prefix) if not k.endswith("/")}
    assert on_store == ours


# ---------------------------------------------------------------------------------------------
# The examples themselves
# ---------------------------------------------------------------------------------------------

ENV_FILES = [DEPLOY_AIRFLOW / "celery.env", DEPLOY_AIRFLOW / "kubernetes" / "kubernetes.env"]


def airflow_options() -> set[tuple[str, str]]:
    """(section, option) of every setting of Airflow 3.3 and of the providers its examples use,
    read from the installed packages' descriptions without importing Airflow."""
    package = Path(importlib.util.find_spec("airflow").submodule_search_locations[0])
    core = yaml.safe_load((package / "config_templates" / "config.yml").read_text())
    found = {(section, option) for section, body in core.items() for option in body["options"]}
    celery = runpy.run_path(str(package / "providers" / "celery" / "get_provider_info.py"))[
        "get_provider_info"
    ]()
    found |= {(section, option) for section, body in celery["config"].items() for option in body["options"]}
    # The cncf.kubernetes provider is not installed; Airflow keeps its settings' defaults here.
    fallback = configparser.ConfigParser(interpolation=None)
    fallback.read(package / "config_templates" / "provider_config_fallback_defaults.cfg")
    found |= {(section, option) for section in fallback.sections() for option in fallback[section]}
    return found


def env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.unit
@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_every_airflow_setting_in_the_examples_is_one_airflow_knows(path):
    # Airflow ignores a variable that names no setting: a misspelt one would be silently lost.
    known = airflow_options()
    settings = [key for key in env_file(path) if key.startswith("AIRFLOW__")]
    unknown = [
        key for key in settings if tuple(key.removeprefix("AIRFLOW__").lower().split("__", 1)) not in known
    ]
    assert settings and unknown == []
    civicflow = {key for key in env_file(path) if key.startswith("CIVICFLOW_")}
    assert {"CIVICFLOW_DATA_ROOT", "CIVICFLOW_STAGE__SHARDS"} <= civicflow


@pytest.mark.unit
def test_the_policy_sends_shards_to_the_stage_queue_and_warehouse_writers_to_one_queue():
    policy = runpy.run_path(str(DEPLOY_AIRFLOW / "airflow_local_settings.py"))
    pools = json.loads((DEPLOY_AIRFLOW / "pools.json").read_text())

    def routed(dag_id: str, task_id: str, queue: str = "default", pool: str = "default_pool"):
        task = SimpleNamespace(dag_id=dag_id, task_id=task_id, queue=queue, pool=pool, pool_slots=1)
        policy["task_policy"](task)
        return task.queue, task.pool, task.pool_slots

    slots = pools["civicflow_warehouse"]["slots"]
    assert slots == policy["WAREHOUSE_SLOTS"] == WAREHOUSE_WORKER.concurrency > 1
    assert routed("civicflow_stage", "decode") == ("civicflow-stage", "civicflow_staging", 1)
    # the judges only read the warehouse: they share it, a slot each
    assert routed("civicflow_publish", "judge") == ("civicflow-warehouse", "civicflow_warehouse", 1)
    for dag_id, task_id in [  # these write it: all the slots, so each runs alone
        ("civicflow_stage", "merge"),
        ("civicflow_publish", "plan"),
        ("civicflow_publish", "release"),
        ("civicflow_backfill", "replay_segments"),
        ("civicflow_maintenance", "enforce_retention"),
        ("civicflow_future", "anything"),  # a task it does not know runs where the warehouse is, alone
    ]:
        assert routed(dag_id, task_id) == ("civicflow-warehouse", "civicflow_warehouse", slots), (
            dag_id,
            task_id,
        )
    assert routed("civicflow_stage", "decode", "fast", "mine") == ("fast", "mine", 1)  # the DAG's choice
    assert routed("someone_elses", "decode") == ("default", "default_pool", 1)
    assert set(policy["POOLS"].values()) <= set(pools)
    assert all(pool["slots"] >= 1 and pool["description"] for pool in pools.values())


@pytest.mark.unit
def test_the_pod_template_is_one_the_kubernetes_executor_accepts():
    pod = yaml.safe_load((DEPLOY_AIRFLOW / "kubernetes" / "pod_template.yaml").read_text())
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert pod["metadata"]["name"]  # replaced for each pod, but it must be there
    base = pod["spec"]["containers"][0]  # the task runs in the first container, named base
    assert base["name"] == "base" and base["image"]
    env = {e["name"] for e in base["env"]}
    assert {"AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "CIVICFLOW_DATA_ROOT", "CIVICFLOW_CATALOG__URI"} <= env
    mounts = {m["mountPath"] for m in base["volumeMounts"]}
    settings = env_file(DEPLOY_AIRFLOW / "kubernetes" / "kubernetes.env")
    assert settings["CIVICFLOW_DATA_ROOT"] in mounts
    assert pod["spec"]["restartPolicy"] == "Never"
