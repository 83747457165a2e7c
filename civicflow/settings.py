"""The one settings object. Only entry points (CLI, DAG tasks) read it; library code takes arguments."""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from civicflow.contract import is_name
from civicflow.errors import TerminalError


class TlsSettings(BaseModel):
    """TLS to the broker. Off unless `enabled`; a CA file pins the broker's certificate authority."""

    enabled: bool = False
    ca_file: Path | None = Field(default=None, description="PEM CA bundle; unset: the system's CAs")
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="Client certificate's private key")


LORAWAN_TOPIC_FILTERS = ("v3/+/devices/+/up", "application/+/device/+/event/up")
"""Uplink topics of The Things Stack v3 and ChirpStack v4, subscribed to besides `<prefix>/#`."""


class MqttSettings(BaseModel):
    """Where the listener connects and what it subscribes to."""

    host: str | None = Field(
        default=None,
        description="Broker host. Unset: `civicflow demo` starts an embedded broker.",
    )
    port: int = 1883
    topic_prefix: str = Field(default="city", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    client_id: str = Field(default="civicflow-listener-1", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    qos: int = Field(default=1, ge=1, le=2)
    keepalive_s: int = 30
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = TlsSettings()
    lorawan_topics: bool = Field(
        default=True, description="Also subscribe to The Things Stack and ChirpStack uplink topics"
    )
    shared_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Share the subscription ($share/<group>/...) among several listener processes",
    )
    councils: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Only these councils' topics (<prefix>/<council>/#), comma-separated: shards councils "
        "across listener processes on a broker without shared subscriptions (NATS). Every council must "
        "be in one listener's list: the broker keeps no reading nobody subscribed to. Empty: all councils",
    )

    @field_validator("councils", mode="before")
    @classmethod
    def _split_councils(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [c.strip() for c in value.split(",") if c.strip()]
        bad = [c for c in value if not is_name(c)] if isinstance(value, list | tuple) else []
        if bad:
            raise ValueError(
                f"CIVICFLOW_MQTT__COUNCILS: {', '.join(map(repr, bad))} is not a council name "
                "(lower case letters, digits, _ and -, at most 64); give names separated by commas"
            )
        if isinstance(value, list | tuple) and len(set(value)) != len(value):
            raise ValueError("CIVICFLOW_MQTT__COUNCILS names a council twice")
        return value

    def topic_filters(self) -> list[str]:
        """What the listener subscribes to, shared among the group's listeners when one is set."""
        councils = [f"{self.topic_prefix}/{c}/#" for c in self.councils] or [f"{self.topic_prefix}/#"]
        filters = [*councils, *(LORAWAN_TOPIC_FILTERS if self.lorawan_topics else ())]
        if self.shared_group:
            return [f"$share/{self.shared_group}/{f}" for f in filters]
        return filters


class LandingSettings(BaseModel):
    """How the listener writes the raw zone."""

    segment_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    segment_max_age_s: float = Field(default=300.0, gt=0)
    flush_max_messages: int = Field(default=500, ge=1, description="Flush and ack at least this often")
    flush_max_delay_s: float = Field(default=0.05, gt=0)
    fsync: bool = True


class MetricsSettings(BaseModel):
    """The listener's Prometheus endpoint (`/metrics`)."""

    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535, description="0 turns the endpoint off")


class CkanSettings(BaseModel):
    """Optional push of each release's catalogue to a CKAN portal. Off unless `url` is set."""

    url: str | None = Field(
        default=None, pattern=r"^https?://", description="CKAN site, e.g. https://data.example.gov.uk"
    )
    api_key: SecretStr | None = Field(
        default=None, description="API token of a user who may edit the organization"
    )
    organization: str | None = Field(
        default=None, description="CKAN organization (owner_org) of the datasets"
    )
    timeout_s: float = Field(default=30.0, gt=0)


class PublishSettings(BaseModel):
    """Open-data releases under `<data root>/published/` (docs/publication.md)."""

    keep_releases: int = Field(default=5, ge=1, description="Releases kept after a switch, latest included")
    partitions_per_task: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Partitions one judging task of civicflow_publish takes (at least: a run maps at most "
        "256 tasks). 1 makes each council's day its own task to see and retry; more amortises a "
        "task's start-up where each task is a new process (LocalExecutor, Celery)",
    )
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://.*/$",
        description="Where `<data root>/published/` is served, ending in /; unset: the catalogue's "
        "links are relative to it",
    )
    ckan: CkanSettings = CkanSettings()


class PortalSettings(BaseModel):
    """`civicflow serve`: the portal and API (docs/publication.md, "The portal's API over HTTP")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_limit_per_minute: int = Field(
        default=600,
        ge=0,
        le=1_000_000,
        description="Requests one client address may make a minute, sustained, before it is answered "
        "429 with Retry-After; 0: no limit. Anonymous access stays open: this only shares the "
        "portal fairly",
    )
    rate_limit_burst: int = Field(
        default=120,
        ge=1,
        le=1_000_000,
        description="Requests one client address may make at once (a page of links, a parallel "
        "download) before the per-minute rate applies",
    )


class QualitySettings(BaseModel):
    """Thresholds of the quality gate's expectations (docs/warehouse.md, "Publication").

    Set with `CIVICFLOW_QUALITY__<NAME>`; a council's registry file can override any of them in
    its `[quality]` table. Which expectations block a partition and which only warn is fixed in
    `expectations/suites.py`; only their thresholds are settings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    completeness_min: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Warning: rows of a device-hour whose readings cover less than this share of "
        "the readings its reporting interval expects are flagged `completeness`",
    )
    quarantine_share_max: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Blocking, per device: largest share of a device's readings in a day that may have "
        "been quarantined (above it, that device's readings that day are held back)",
    )
    volume_ratio_min: float = Field(
        default=0.25,
        ge=0,
        description="Blocking: fewest staged rows, as a share of the median of the trailing 7 days",
    )
    volume_ratio_max: float = Field(
        default=4.0,
        gt=0,
        description="Blocking: most staged rows, as a multiple of the median of the trailing 7 days",
    )
    volume_min_days: int = Field(
        default=3,
        ge=1,
        le=7,
        description="Days of the trailing 7 that must have a partition before volume is judged",
    )
    freshness_max_minutes: float = Field(
        default=120,
        gt=0,
        description="Warning: largest age of today's newest reading when the gate runs",
    )

    @model_validator(mode="after")
    def _ordered(self) -> QualitySettings:
        if self.volume_ratio_min > self.volume_ratio_max:
            raise ValueError("volume_ratio_min must not exceed volume_ratio_max")
        return self


class RetentionSettings(BaseModel):
    """How long what may hold personal data is kept (docs/security.md, "Personal data").

    Set with `CIVICFLOW_RETENTION__<NAME>`; the `civicflow_maintenance` DAG enforces them daily.
    Published readings are open data about infrastructure and are not subject to these periods.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    raw_segment_days: int = Field(
        default=90,
        ge=0,
        description="Days a closed raw segment is kept (from when it was opened), once staged; a "
        "segment not yet staged is never deleted. Long enough to replay a quarter's readings after "
        "a decoder or registry fix, beyond any council's lateness horizon",
    )
    quarantine_payload_days: int = Field(
        default=30,
        ge=0,
        description="Days a quarantined message keeps its bytes (from when it was received); then "
        "its payload is removed and the values its detail quotes are masked",
    )
    quarantine_record_days: int = Field(
        default=365,
        ge=0,
        description="Days a quarantine row (reason, masked detail, device, times) is kept for the "
        "quality record; then it is deleted",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetentionSettings:
        if self.quarantine_payload_days > self.quarantine_record_days:
            raise ValueError("quarantine_payload_days must not exceed quarantine_record_days")
        return self


class StorageSettings(BaseModel):
    """Where the zones live: a local directory (the data root) by default, or an S3-compatible store.

    Credentials come from the environment as for any AWS client (`AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY`, or an instance profile); they are never settings of Civicflow.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="s3://bucket/prefix of the zones; unset: the data root on local disk",
    )
    endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="S3-compatible endpoint (Ceph RGW, MinIO, ...); unset: AWS S3",
    )
    region: str = Field(
        default="us-east-1", description="The store's region (any value for most S3-compatible stores)"
    )


class CatalogSettings(BaseModel):
    """The Iceberg catalogue of the staged tables (docs/scaling.md): SQLite under the data root by
    default, PostgreSQL where several machines write (`postgresql+psycopg2://...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(
        default=None,
        pattern=r"^(sqlite|postgresql(\+psycopg2)?)://",
        description="SQLAlchemy URL of the catalogue database; unset: "
        "sqlite:///<data root>/warehouse/catalog.db",
    )
    commit_retries: int = Field(
        default=16,
        ge=0,
        le=1000,
        description="Attempts after a commit lost to a concurrent writer; size it to the number of "
        "staging workers (each retry re-reads the ledger, so nothing is staged twice)",
    )


class StageSettings(BaseModel):
    """How staging is spread over workers (civicflow_stage's mapped tasks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Staging shards: each mapped task of civicflow_stage takes its share of every "
        "listener's raw segments (round-robin by sequence number), so shards never take the same segment",
    )
    close_after_hours: float = Field(
        default=2.0,
        ge=0,
        le=24 * 14,
        description="Hours after a UTC day ends until its staged partitions close: until then each merge "
        "writes a partition's new readings as one more Parquet file; once closed, its files are compacted "
        "into one (a late reading later rewrites the day whole)",
    )


class FeedbackSettings(BaseModel):
    """Rejection summaries published back to gateways after each staging run (docs/mqtt-contract.md,
    Feedback), on the listener's broker (`CIVICFLOW_MQTT__HOST`, port and TLS) with an account of
    their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True, description="Publish summaries; false: the feedback step does nothing"
    )
    username: str | None = Field(
        default=None,
        description="Broker user that may write <prefix>/+/+/+/feedback (civicflow-feedback in "
        "deploy/mosquitto/acl); unset: the listener's CIVICFLOW_MQTT__USERNAME, which a broker binding "
        "client ids to user names would take for the listener itself",
    )
    password: SecretStr | None = Field(default=None, description="Its password; unset: the listener's")
    client_id: str = Field(default="civicflow-feedback", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    window_hours: int = Field(
        default=24, ge=1, le=24 * 31, description="Summaries count the rejections received in this many hours"
    )
    timeout_s: float = Field(default=30.0, gt=0, description="How long to wait for the broker's answers")


ENV_PREFIX = "CIVICFLOW_"

NOT_SETTINGS = {
    "CIVICFLOW_LOG_JSON": "`civicflow listen|batch|replay|erase --log-json`",
}
"""`CIVICFLOW_*` variables that are not fields of `Settings` but are read elsewhere, and by what."""

TOOLING_PREFIXES = ("CIVICFLOW_TEST_", "CIVICFLOW_BENCH_", "CIVICFLOW_FUZZ_")
"""Name spaces of the variables of the test suite (tests/), the benchmarks (bench/) and the fuzzer."""


class Settings(BaseSettings):
    """Civicflow settings, from `CIVICFLOW_*` environment variables (`__` nests).

    A `CIVICFLOW_*` variable that names no setting (`CIVICFLOW_MQTT_HOST` for
    `CIVICFLOW_MQTT__HOST`) is refused with a `TerminalError` naming the closest setting, rather
    than ignored: a misspelt variable would otherwise leave its default in place without a word.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    data_root: Path = Field(default=Path("data"))
    registry_dir: Path | None = Field(
        default=None,
        description="Device registry (one TOML file per council); unset: registry/ of the checkout",
    )
    mqtt: MqttSettings = MqttSettings()
    landing: LandingSettings = LandingSettings()
    metrics: MetricsSettings = MetricsSettings()
    quality: QualitySettings = QualitySettings()
    max_payload_bytes: int = Field(default=256 * 1024, ge=1)
    max_batch_readings: int = Field(default=10_000, ge=1)
    publish_csv: bool = True
    publish: PublishSettings = PublishSettings()
    portal: PortalSettings = PortalSettings()
    retention: RetentionSettings = RetentionSettings()
    storage: StorageSettings = StorageSettings()
    catalog: CatalogSettings = CatalogSettings()
    stage: StageSettings = StageSettings()
    feedback: FeedbackSettings = FeedbackSettings()

    def __init__(self, **values: Any) -> None:
        refuse_unknown_variables(os.environ)
        super().__init__(**values)

    @cached_property
    def warehouse_path(self) -> Path:
        return self.data_root / "warehouse" / "civicflow.duckdb"

    @cached_property
    def catalog_uri(self) -> str:
        """The Iceberg catalogue's database: the setting, or SQLite beside the warehouse."""
        if self.catalog.uri:
            return self.catalog.uri
        return f"sqlite:///{(self.data_root / 'warehouse' / 'catalog.db').resolve()}"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (`TlsSettings`, or `TlsSettings | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(filter(None, map(_nested_model, typing.get_args(annotation))), None)
    return None


def _names(model: type[BaseModel], prefix: str) -> Iterable[str]:
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        yield variable  # a nested model's variable takes the whole model as JSON
        if (nested := _nested_model(field.annotation)) is not None:
            yield from _names(nested, f"{variable}__")


@cache
def setting_variables() -> tuple[str, ...]:
    """Every variable `Settings` reads: `CIVICFLOW_DATA_ROOT`, `CIVICFLOW_MQTT__TLS__ENABLED`..."""
    return tuple(_names(Settings, ENV_PREFIX))


def refuse_unknown_variables(environ: Mapping[str, str]) -> None:
    """Raise `TerminalError` if a `CIVICFLOW_*` variable is neither a setting nor a known other one.

    Names compare without case, as `Settings` reads them. The error names each unknown variable
    and the closest valid name.
    """
    known = {*setting_variables(), *NOT_SETTINGS}
    unknown = sorted(
        name
        for name in environ
        if (upper := name.upper()).startswith(ENV_PREFIX)
        and upper not in known
        and not upper.startswith(TOOLING_PREFIXES)
    )
    if not unknown:
        return
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.6)
        guess = f"did you mean {suffixes[close[0]]}?" if close else "no setting has a similar name."
        lines.append(f"{name} is not a Civicflow setting: {guess}")
    raise TerminalError(
        "\n".join(lines)
        + "\nRename or unset "
        + ("it" if len(unknown) == 1 else "them")
        + " (a name Civicflow does not know would leave the setting it meant at its default). The "
        "settings are listed in docs/operations.md; `__` separates a nested name (CIVICFLOW_MQTT__HOST)."
    )
