"""`civicflow status`: the whole pipeline on one screen, for the data engineer on call.

Four questions, each answered from what the pipeline already keeps, so `status` needs no service
of its own and never takes the warehouse's write lock:

- **broker**: one MQTT CONNECT with the listener's credentials (`civicflow.ingest.probe`);
- **listeners**: each listener's `/health`, or the `status.json` beside its segments, with the
  closed-segment backlog staging has not recorded yet (`civicflow.health`);
- **DAG runs**: the last run of each Civicflow DAG, read from Airflow's metadata database
  (`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN` when set, else the SQLite database in the Airflow home
  `civicflow batch`, `replay`, `demo` and `airflow` share under the data root);
- **datasets**: the quality gate's state per dataset and council, with the days and devices' days it
  holds back, from the quality summary every publish run's release step rewrites
  (`published/<domain>/quality.json`) and the current release
  (`published/latest.json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from civicflow.contract import DATASETS
from civicflow.health import listener_health
from civicflow.settings import Settings

DAG_PREFIX = "civicflow_"
RUNS_SQL = """
    SELECT dag_id, run_id, run_type, state, start_date, end_date
    FROM dag_run WHERE dag_id LIKE 'civicflow\\_%' ESCAPE '\\'
    ORDER BY coalesce(start_date, queued_at) DESC"""
FAILED_TASKS_SQL = """
    SELECT task_id FROM task_instance
    WHERE dag_id = :dag_id AND run_id = :run_id AND state = 'failed'
    ORDER BY task_id"""
"""The tasks that failed themselves: those left `upstream_failed` behind them did not run."""


@dataclass
class PipelineStatus:
    broker: dict | None
    listeners: list[dict]
    airflow: list[dict]
    datasets: list[dict]
    release: dict | None
    problems: list[str] = field(default_factory=list)
    """What is broken (exit 1): broker, listeners, failed DAG runs."""
    review: list[str] = field(default_factory=list)
    """What the quality gate holds back: data for a person to look at, not a broken pipeline."""

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "review": self.review,
            "broker": self.broker,
            "listeners": self.listeners,
            "airflow": self.airflow,
            "release": self.release,
            "datasets": self.datasets,
        }


def _when(value: object) -> datetime | None:
    """Airflow's timestamps: datetimes from PostgreSQL, ISO strings from SQLite."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def airflow_databases(settings: Settings) -> list[str]:
    """SQLAlchemy URLs of the Airflow metadata databases to read DAG runs from."""
    configured = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if configured:
        return [configured]
    from civicflow.app.batch import default_airflow_home

    database = default_airflow_home(settings) / "airflow.db"
    return [f"sqlite:///{database}"] if database.is_file() else []


def dag_runs(url: str) -> list[dict]:
    """The last run of each Civicflow DAG in one metadata database, and when one last succeeded."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            rows = con.execute(sa.text(RUNS_SQL)).fetchall()
            out: dict[str, dict] = {}
            for dag_id, run_id, run_type, state, start, end in rows:
                if dag_id not in out:
                    started, ended = _when(start), _when(end)
                    out[dag_id] = {
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "run_type": run_type,
                        "state": state,
                        "started": started,
                        "seconds": (ended - started).total_seconds() if started and ended else None,
                        "last_success": None,
                        "failed_tasks": [],
                        "database": sa.engine.make_url(url).render_as_string(hide_password=True),
                    }
                    if state == "failed":
                        failed = con.execute(sa.text(FAILED_TASKS_SQL), {"dag_id": dag_id, "run_id": run_id})
                        out[dag_id]["failed_tasks"] = [t for (t,) in failed]
                if state == "success" and out[dag_id]["last_success"] is None:
                    out[dag_id]["last_success"] = _when(end)
            return list(out.values())
    finally:
        engine.dispose()


def _held(hold: dict) -> str:
    """`2026-11-23 (volume)` for a whole day, `2026-11-23 p1 (no_future)` for one device's day."""
    device = f" {hold['device_id']}" if hold.get("device_id") else ""
    return f"{hold['date']}{device} ({', '.join(hold['failed'])})"


def dataset_states(settings: Settings) -> tuple[list[dict], dict | None]:
    """Per dataset and council: what the gate published, warned about and held back.

    `gate` is `held back` when a whole day is, `devices held` when only devices' days are (the
    rest of those days is published), else `warnings` or `passed`.
    """
    from civicflow.warehouse.layout import Layout

    layout = Layout(settings.data_root)
    release = None
    if layout.latest_pointer.is_file():
        release = json.loads(layout.latest_pointer.read_text(encoding="utf-8"))
    states = []
    for domain in DATASETS:
        path = layout.published_dataset(domain) / "quality.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        for council, q in summary.get("councils", {}).items():
            held = q.get("held_back", [])
            whole = any(h.get("device_id") is None for h in held)
            states.append(
                {
                    "dataset": domain.value,
                    "council": council,
                    "gate": "held back"
                    if whole
                    else "devices held"
                    if held
                    else ("warnings" if q["partitions_with_warnings"] else "passed"),
                    "partitions_published": q["partitions_published"],
                    "partitions_with_warnings": q["partitions_with_warnings"],
                    "rows_published": q["rows_published"],
                    "completeness_pct": q["completeness_pct"],
                    "flagged_pct": q["flagged_pct"],
                    "held_back": [_held(h) for h in held],
                }
            )
    return states, release


def pipeline_status(settings: Settings, *, probe: bool = True) -> PipelineStatus:
    """Everything `civicflow status` shows; `problems` lists what needs a person, with what to do."""
    problems = []
    broker = None
    if settings.mqtt.host is not None and probe:
        from civicflow.ingest.listener import BrokerAddress
        from civicflow.ingest.probe import probe_broker

        broker = probe_broker(BrokerAddress.from_settings(settings)).to_dict()
        if not broker["accepted"]:
            problems.append(f"broker {broker['broker']}: {broker['problem']}")
    listeners = listener_health(settings)
    if not listeners:
        problems.append(
            f"no listener has run under {(settings.data_root / 'raw').resolve()}: start one with "
            "civicflow listen (or set CIVICFLOW_DATA_ROOT to where it lands)"
        )
    for r in listeners:
        if not r["healthy"]:
            problems.append(f"listener {r['client_id']}: {r.get('problem') or 'unhealthy'}")
    runs: list[dict] = []
    for url in airflow_databases(settings):
        try:
            runs += dag_runs(url)
        except Exception as exc:  # a database we cannot read is reported, never fatal to status
            problems.append(f"cannot read Airflow's metadata database {url}: {exc}")
    for run in runs:
        if run["state"] == "failed":
            tasks = ", ".join(run["failed_tasks"]) or "a task"
            problems.append(
                f"DAG {run['dag_id']}: last run {run['run_id']} failed in {tasks}; "
                f"see its task log (airflow tasks states-for-dag-run {run['dag_id']} {run['run_id']})"
            )
    datasets, release = dataset_states(settings)
    review = [
        f"{d['dataset']} {d['council']}: held back {'; '.join(d['held_back'])}: "
        "civicflow release list shows why, civicflow release approve [--device ID] publishes it anyway"
        for d in datasets
        if d["held_back"]
    ]
    return PipelineStatus(broker, listeners, runs, datasets, release, problems, review)


def device_feedback(settings: Settings, device: str, now: datetime | None = None) -> dict:
    """`civicflow status --device <council>/<device_id>`: what the quarantine holds of one device,
    as its gateway's feedback summary says it (docs/mqtt-contract.md, Feedback); one summary per
    domain the device was quarantined under, none when it has no rejection.

    Raises ValueError for a device that is not `<council>/<device_id>`, FileNotFoundError when there
    is no warehouse yet. Opens the warehouse read-only.
    """
    from datetime import timedelta

    from civicflow.contract import is_name
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.feedback import device_summary
    from civicflow.warehouse.layout import Layout

    council, _, device_id = device.partition("/")
    if not (is_name(council) and is_name(device_id)):
        raise ValueError(
            f"--device {device!r}: give <council>/<device_id>, e.g. birmingham/bhmbccmkt01 (lower case "
            "letters, digits, _ and -)"
        )
    con = connect(Layout(settings.data_root).warehouse, read_only=True)
    try:
        summaries = device_summary(
            con,
            council,
            device_id,
            now or datetime.now(tz=UTC),
            timedelta(hours=settings.feedback.window_hours),
        )
    finally:
        con.close()
    return {"council": council, "device_id": device_id, "summaries": summaries}
