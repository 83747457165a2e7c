"""Throwaway PostgreSQL, Redis and a CeleryExecutor Airflow deployment, for tests of many workers.

Everything listens on 127.0.0.1 on a free port, keeps its files under a temporary directory, and
runs in a session of its own, so that stopping it stops every process it started:

- `run_postgres`: a new cluster (`initdb`, then `postgres` in the foreground), trust
  authentication, durability off (a test cluster needs none). `initdb` refuses to run as root, so
  under root the cluster runs as the `postgres` account, in a directory of its own under the
  system's temporary directory (pytest's are private to root).
- `run_redis`: `redis-server` with no persistence (`--save "" --appendonly no`).
- `run_celery_airflow`: Airflow with the CeleryExecutor as deploy/airflow/ describes it
  (celery.env with hosts, ports, paths and secrets replaced and every other line kept, and the
  cluster policy airflow_local_settings.py), on that PostgreSQL (metadata database and Celery
  results) and Redis (broker): `airflow db migrate`, then an API server, a scheduler, a DAG
  processor and one `airflow celery worker` per `Worker`, each on its own queues and with its own
  host name in the task instances it runs (they all run on this machine, where the real host name
  would be the same for all).

`missing_binaries()` says which programs are absent, for a test to skip with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from brokers import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY_AIRFLOW = REPO / "deploy" / "airflow"
DAGS_DIR = REPO / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
LOCAL = "127.0.0.1"
PLACEHOLDER = "CHANGE_ME"
WORKER_NAME = "CIVICFLOW_TEST_WORKER"
"""The environment variable that tells a test worker's hostname callable its name."""
HOSTNAME_MODULE = "civicflow_test_worker"
HOSTNAME_CALLABLE = f"""\
# Written by tests/distributed.py: `[core] hostname_callable` of a test's Celery workers.
import os


def hostname() -> str:
    return os.environ[{WORKER_NAME!r}]
"""

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The directory holding `initdb` and `postgres`: $CIVICFLOW_TEST_PG_BIN, else Debian's newest
    /usr/lib/postgresql/<version>/bin, else wherever `initdb` is on PATH."""
    if configured := os.environ.get("CIVICFLOW_TEST_PG_BIN"):
        candidates = [Path(configured)]
    else:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(versions, key=_version, reverse=True)
        if initdb := shutil.which("initdb"):
            candidates.append(Path(initdb).resolve().parent)
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()), None)


def _version(bindir: Path) -> int:
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def redis_server() -> str | None:
    return os.environ.get("CIVICFLOW_TEST_REDIS_SERVER") or shutil.which("redis-server")


def missing_binaries() -> list[str]:
    """What a distributed test cannot run without, each saying how to provide it."""
    missing = []
    if postgres_bin() is None:
        missing.append(
            "no PostgreSQL server binaries (initdb, postgres): install Debian's postgresql package "
            "or set CIVICFLOW_TEST_PG_BIN to the directory holding them"
        )
    if redis_server() is None:
        missing.append(
            "no redis-server: install Debian's redis-server package or set CIVICFLOW_TEST_REDIS_SERVER"
        )
    if not Path(AIRFLOW).is_file():
        missing.append(f"no airflow command beside {sys.executable}: run `make install`")
    if os.geteuid() == 0 and _account("postgres") is None:
        missing.append(
            "initdb refuses to run as root and there is no 'postgres' account to run it as: "
            "create one (adduser --system postgres) or run the tests as another user"
        )
    return missing


def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout_s: float,
    *,
    watch: Sequence[Service] = (),
    interval_s: float = 0.5,
) -> T:
    """Poll `check` until it returns something other than None, and return that.

    Fails at once, with its log, if a `watch`ed service exits; after `timeout_s`, with the end of
    every watched service's log.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        for service in watch:
            if not service.alive:
                raise AssertionError(
                    f"{service.name} exited with code {service.returncode} while waiting for {what}; "
                    f"end of its log ({service.log_path}):\n{service.tail()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name} ({s.log_path}):\n{s.tail(3000)}" for s in watch)
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")
        time.sleep(interval_s)


class Service:
    """One process started in a session of its own, its output in a log file.

    `stop()` signals the process, waits, then kills whatever is left of its session and of its
    descendants (a descendant may have started a session of its own), and checks none survived.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.user = user
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
                user=self.user,
                group=_account(self.user).pw_gid if self.user else None,
                extra_groups=[] if self.user else None,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def cpu_seconds(self) -> float:
        """CPU time (user and system) of the process and its descendants so far, reaped ones included."""
        if self.proc is None:
            return 0.0
        total = 0.0
        for proc in [psutil.Process(self.proc.pid), *_descendants(self.proc.pid)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self, timeout_s: float = 30.0) -> list[str]:
        """Stop the process and everything it started; return what had to be killed (SIGKILL)."""
        return stop_services([self], timeout_s)


def stop_services(services: Sequence[Service], timeout_s: float = 30.0) -> list[str]:
    """Stop services at once: the stop signal to each, repeated every few seconds to those still
    running (a signal that lands inside a logging call can be swallowed), then SIGKILL to whatever
    is left of their sessions and descendants. Returns what had to be killed; raises if anything
    survived SIGKILL."""
    started = [s for s in services if s.proc is not None]
    family = {s.name: _descendants(s.proc.pid) for s in started}
    deadline = time.monotonic() + timeout_s
    while (running := [s for s in started if s.proc.poll() is None]) and time.monotonic() < deadline:
        for service in running:
            with contextlib.suppress(ProcessLookupError):
                service.proc.send_signal(service.stop_signal)
        for service in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(timeout=max(min(5.0, deadline - time.monotonic()), 0.1))
    killed = []
    for service in started:
        proc, sid = service.proc, service.proc.pid
        if proc.poll() is None:
            killed.append(
                f"{service.name} (pid {sid}) ignored {service.stop_signal.name} for {timeout_s:.0f}s"
            )
        leftovers = {p.pid: p for p in [*family[service.name], *_in_session(sid)] if _running(p)}
        killed += [f"{service.name}: {_describe(p)}" for p in leftovers.values()]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGKILL)
        for p in leftovers.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
        psutil.wait_procs(list(leftovers.values()), timeout=10)
        survivors = [p for p in [*leftovers.values(), *_in_session(sid)] if _running(p)]
        if survivors:
            raise RuntimeError(
                f"{service.name}: processes survived SIGKILL: {', '.join(map(_describe, survivors))}"
            )
    return killed


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _in_session(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(proc.pid) == sid:
                found.append(proc)
    return found


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return f"pid {proc.pid}"


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    """A running test cluster: superuser `postgres`, trust authentication on 127.0.0.1."""

    port: int
    host: str = LOCAL
    user: str = "postgres"

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname=database, connect_timeout=5
        )

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database, empty or a copy of `template` (which nobody may be connected to)."""
        con = self.connect()
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            con.close()
        return name

    def query(self, database: str, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        con = self.connect(database)
        try:
            with con, con.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            con.close()


@contextlib.contextmanager
def run_postgres(workdir: Path, *, timeout_s: float = 60) -> Iterator[Postgres]:
    """A new PostgreSQL cluster for the `with` block; its log is `workdir/postgres.log`."""
    import psycopg2

    bindir = postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None
    account = _account(user) if user else None
    if bindir is None or (user and account is None):
        raise RuntimeError("; ".join(missing_binaries()))
    workdir.mkdir(parents=True, exist_ok=True)
    # The cluster's owner must reach its directory: under root, one of its own outside pytest's.
    base = Path(tempfile.mkdtemp(prefix="civicflow-pg-")) if user else workdir / "pg"
    base.mkdir(exist_ok=True)
    if account:
        os.chown(base, account.pw_uid, account.pw_gid)
    data, port = base / "data", free_port()
    service = Service(
        "postgres",
        [
            bindir / "postgres",
            *("-D", data, "-p", port, "-k", base),
            *("-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=32MB"),
            # Waits for a lock longer than a second are logged: they explain a slow test.
            *("-c", "log_lock_waits=on"),
            # A test cluster is thrown away: no durability.
            *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
        ],
        workdir / "postgres.log",
        user=user,
        stop_signal=signal.SIGINT,  # fast shutdown: roll back open transactions, then exit
        cwd=base,
    )
    try:
        initdb = subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8"]
            + ["--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True,
            text=True,
            cwd=base,
            user=user,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            check=False,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        service.start()
        postgres = Postgres(port)

        def accepting() -> bool | None:
            try:
                postgres.connect().close()
            except psycopg2.OperationalError:
                return None
            return True

        wait_for(f"PostgreSQL on port {port}", accepting, timeout_s, watch=[service], interval_s=0.1)
        yield postgres
    finally:
        service.stop()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Redis:
    port: int
    host: str = LOCAL

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


@contextlib.contextmanager
def run_redis(workdir: Path, *, timeout_s: float = 30) -> Iterator[Redis]:
    """A redis-server for the `with` block, without persistence; its log is `workdir/redis.log`."""
    import redis

    program = redis_server()
    if program is None:
        raise RuntimeError("; ".join(missing_binaries()))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    service = Service(
        "redis-server",
        [program, "--port", port, "--bind", LOCAL, "--save", "", "--appendonly", "no"]
        + ["--dir", workdir, "--daemonize", "no"],
        workdir / "redis.log",
    )
    try:
        service.start()

        def answering() -> bool | None:
            try:
                with redis.Redis(host=LOCAL, port=port, socket_timeout=2) as client:
                    return True if client.ping() else None
            except redis.ConnectionError:
                return None

        wait_for(f"redis-server on port {port}", answering, timeout_s, watch=[service], interval_s=0.1)
        yield Redis(port)
    finally:
        service.stop()


# ---------------------------------------------------------------------------------------------
# Airflow with the CeleryExecutor
# ---------------------------------------------------------------------------------------------


def deploy_airflow_env(
    overrides: Mapping[str, str], source: Path = DEPLOY_AIRFLOW / "celery.env"
) -> dict[str, str]:
    """deploy/airflow/celery.env as a dict, with `overrides` in place of the example's values.

    Raises:
        ValueError: A line is not KEY=VALUE; an override names a key the example does not set (the
            test would run a configuration other than the example's); or a secret placeholder is
            left without a value.
    """
    found: dict[str, str] = {}
    for number, line in enumerate(source.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.replace("_", "A").isalnum():
            raise ValueError(f"{source}:{number}: not KEY=VALUE: {line!r}")
        found[key] = value
    if unknown := sorted(set(overrides) - set(found)):
        raise ValueError(f"{source} sets no {', '.join(unknown)}: add them there or stop overriding them")
    rendered = found | dict(overrides)
    if unset := sorted(k for k, v in rendered.items() if PLACEHOLDER in v):
        raise ValueError(f"{source}: give the test a value for the secrets in {', '.join(unset)}")
    return rendered


@dataclass(frozen=True)
class Worker:
    """One `airflow celery worker`: its name (the host name in the task instances it runs), the
    queues it takes tasks from and how many it runs at once."""

    name: str
    queues: tuple[str, ...]
    concurrency: int = 1


class CeleryAirflow:
    """An Airflow deployment with the CeleryExecutor, started by `run_celery_airflow`."""

    def __init__(
        self,
        workdir: Path,
        *,
        postgres: Postgres,
        redis: Redis,
        workers: Sequence[Worker],
        data_root: Path,
        database: str,
        civicflow_env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.home = workdir / "airflow-home"
        self.logs = workdir / "logs"
        self.postgres = postgres
        self.database = database
        self.redis = redis
        self.workers = tuple(workers)
        self.data_root = data_root
        self.port = free_port()
        self.base_url = f"http://{LOCAL}:{self.port}"
        self.timings: dict[str, float] = {}
        self.services: list[Service] = []
        self._token: str | None = None
        self._started = 0.0
        self._app: Any = None  # a Celery app on the broker, to ping the workers
        metadata = postgres.url(database)
        overrides = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
            "AIRFLOW__CELERY__BROKER_URL": redis.url(),
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",
            "AIRFLOW__API__HOST": LOCAL,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            # The DAG files do not change during a test: parse them once.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            "CIVICFLOW_DATA_ROOT": str(data_root),
        } | dict(civicflow_env or {})
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CIVICFLOW_"))}
        self.env = (
            inherited
            | deploy_airflow_env(overrides)
            | {
                "PATH": os.pathsep.join([str(Path(AIRFLOW).parent), os.environ.get("PATH", "")]),
            }
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def install(self) -> None:
        """The Airflow home: the cluster policy and the workers' hostname callable in config/."""
        config = self.home / "config"
        config.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEPLOY_AIRFLOW / "airflow_local_settings.py", config / "airflow_local_settings.py")
        (config / f"{HOSTNAME_MODULE}.py").write_text(HOSTNAME_CALLABLE)

    def migrate(self) -> None:
        started = time.monotonic()
        log = self.logs / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            done = subprocess.run(
                [AIRFLOW, "db", "migrate"], env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate exited {done.returncode}:\n{log.read_text()[-6000:]}")
        self.timings["db migrate"] = time.monotonic() - started

    def start(self) -> None:
        """Start every component; `wait_until_ready` waits for them."""
        self._started = time.monotonic()
        commands = {
            "api-server": ["api-server"],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
        }
        for name, command in commands.items():
            self.services.append(Service(name, [AIRFLOW, *command], self.logs / f"{name}.log", env=self.env))
        for worker in self.workers:
            command = [AIRFLOW, "celery", "worker", "--celery-hostname", worker.name]
            command += ["--queues", ",".join(worker.queues), "--concurrency", str(worker.concurrency)]
            # Every worker's log server would listen on the same port of every interface; the API
            # server reads the task logs from the shared Airflow home instead.
            command += ["--skip-serve-logs", "--without-gossip", "--without-mingle"]
            env = self.env | {
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{HOSTNAME_MODULE}.hostname",
                WORKER_NAME: worker.name,
            }
            self.services.append(Service(worker.name, command, self.logs / f"{worker.name}.log", env=env))
        for service in self.services:
            service.start()

    def wait_until_ready(self, dag_ids: Sequence[str], timeout_s: float = 300) -> None:
        """Wait for the API server, the DAGs in the metadata database, and every worker's answer."""
        deadline = time.monotonic() + timeout_s

        def left() -> float:
            return max(deadline - time.monotonic(), 1)

        wait_for("the API server", self._healthy, left(), watch=self.services)
        self.timings["api server up"] = time.monotonic() - self._started

        def parsed() -> set[str] | None:
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise AssertionError(f"the DAG processor could not import DAG files: {errors}")
            found = {d["dag_id"] for d in self.api("GET", "/dags", params={"limit": 100})["dags"]}
            return found if set(dag_ids) <= found else None

        wait_for(f"the DAG processor to register {', '.join(dag_ids)}", parsed, left(), watch=self.services)
        self.timings["DAGs registered"] = time.monotonic() - self._started
        names = {f"celery@{w.name}" for w in self.workers}

        def answering() -> set[str] | None:
            replies = self._celery().control.ping(timeout=1.0)
            seen = {name for reply in replies for name in reply}
            return seen if names <= seen else None

        wait_for("every Celery worker to answer a ping", answering, left(), watch=self.services)
        self.timings["workers answer"] = time.monotonic() - self._started
        # The API server builds the Task Execution API on its first request (seconds of CPU), and
        # the first tasks' calls would time out and be retried meanwhile: build it now.
        httpx.get(f"{self.base_url}/execution/health", timeout=left()).raise_for_status()
        self.timings["Task Execution API answers"] = time.monotonic() - self._started

    def stop(self) -> list[str]:
        """Stop every component at once (a worker finishes its running task first); return what had
        to be killed."""
        started = time.monotonic()
        for service in self.services:
            with contextlib.suppress(psutil.Error):
                self.timings[f"cpu {service.name}"] = service.cpu_seconds()
        if self._app is not None:
            self._app.close()
        killed = stop_services(self.services)
        self.timings["stop"] = time.monotonic() - started
        return killed

    # -- talking to it --------------------------------------------------------------------------

    def _healthy(self) -> bool | None:
        try:
            return True if httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).is_success else None
        except httpx.HTTPError:
            return None

    def _celery(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("civicflow-test", broker=self.redis.url())
        return self._app

    def token(self) -> str:
        if self._token is None:
            passwords = self.home / "simple_auth_manager_passwords.json.generated"
            password = json.loads(passwords.read_text())["admin"]
            response = httpx.post(
                f"{self.base_url}/auth/token", json={"username": "admin", "password": password}, timeout=30
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the REST API (/api/v2) as the admin; the JSON answer, or an AssertionError saying why not."""
        response = httpx.request(
            method,
            f"{self.base_url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
            **kwargs,
        )
        if not response.is_success:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Read the metadata database."""
        return self.postgres.query(self.database, sql, params)

    def import_pools(self, path: Path = DEPLOY_AIRFLOW / "pools.json") -> dict[str, int]:
        """Create the pools of a file in `airflow pools import`'s format (what the example uses)."""
        pools = json.loads(path.read_text())
        for name, pool in pools.items():
            body = {"name": name, "slots": pool["slots"], "description": pool["description"]}
            self.api("POST", "/pools", json=body | {"include_deferred": pool.get("include_deferred", False)})
        return {name: pool["slots"] for name, pool in pools.items()}

    def log_tails(self, chars: int = 3000) -> str:
        """The end of every component's log, for a failure message."""
        return "\n".join(f"--- {s.name} ({s.log_path}):\n{s.tail(chars)}" for s in self.services)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@contextlib.contextmanager
def run_celery_airflow(
    workdir: Path,
    *,
    postgres: Postgres,
    redis: Redis,
    workers: Sequence[Worker],
    data_root: Path,
    dag_ids: Sequence[str] = ("civicflow_stage", "civicflow_publish"),
    civicflow_env: Mapping[str, str] | None = None,
    copy_metadata_to: str | None = None,
    timeout_s: float = 300,
) -> Iterator[CeleryAirflow]:
    """A migrated, running CeleryExecutor deployment for the `with` block.

    Its metadata database (which also holds the Celery results) is a new database on `postgres`;
    the DAGs are the checkout's dags/. Yields once the API server answers, the DAG processor has
    registered `dag_ids` and every worker answers a ping. Every process is stopped on the way out,
    whatever happened.

    `copy_metadata_to` names a database to create as a copy of the freshly migrated metadata
    database, before anything uses it: a migrated metadata database for another Airflow (such as
    `civicflow batch`) in milliseconds instead of a migration's tens of seconds.
    """
    database = postgres.create_database(f"airflow_{secrets.token_hex(4)}")
    airflow = CeleryAirflow(
        workdir,
        postgres=postgres,
        redis=redis,
        workers=workers,
        data_root=data_root,
        database=database,
        civicflow_env=civicflow_env,
    )
    airflow.install()
    airflow.migrate()
    if copy_metadata_to:
        postgres.create_database(copy_metadata_to, template=database)
    try:
        airflow.start()
        airflow.wait_until_ready(dag_ids, timeout_s)
        yield airflow
    finally:
        killed = airflow.stop()
        if killed:
            print(f"stopping Airflow had to kill: {killed}", file=sys.stderr)
