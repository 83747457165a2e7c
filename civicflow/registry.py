"""The device registry: which devices each council runs, and the LoRaWAN identities they answer to.

One TOML file per council under version control, `registry/<council>.toml` (docs/mqtt-contract.md,
"Device registry"). It is part of the contract: it decides which council, domain and device id a
LoRaWAN uplink belongs to (its topic names only a LoRaWAN application and device), which model
profile decodes it, and what a message may leave out (a car park's capacity, a device's position,
the depth of a bin whose sensor reports only a distance).

Loading validates every file with pydantic and fails with what to fix; decoding only looks up the
indexes built here, so the decoder stays pure (the registry is an argument, not a file it reads).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from civicflow.contract import DATASETS, LICENCE, NAME_PATTERN, Domain
from civicflow.errors import TerminalError
from civicflow.resources import resource_dir
from civicflow.settings import QualitySettings

LORA_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DEFAULT_REGISTRY_DIR = resource_dir("registry")
"""`registry/` at the root of the Civicflow checkout."""


class RegistryError(TerminalError):
    """A registry file is missing, malformed or contradicts another: fix the file, then re-run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoRaWANIds(_Strict):
    """The identities a LoRaWAN device answers to. Any one that matches an uplink identifies it."""

    dev_eui: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{16}$")
    tts: str | None = Field(
        default=None,
        pattern=rf"^{LORA_ID}@{LORA_ID}$",
        description="The Things Stack application and tenant, `<application>@<tenant>`",
    )
    tts_device_id: str | None = Field(default=None, pattern=rf"^{LORA_ID}$")
    chirpstack_application: str | None = Field(default=None, pattern=rf"^{LORA_ID}$")

    @model_validator(mode="after")
    def _usable(self) -> LoRaWANIds:
        if (self.tts is None) != (self.tts_device_id is None):
            raise ValueError("tts and tts_device_id come together")
        if self.dev_eui is None and self.tts is None:
            raise ValueError("give dev_eui, or tts with tts_device_id")
        if self.chirpstack_application is not None and self.dev_eui is None:
            raise ValueError("chirpstack_application needs the dev_eui the topic carries")
        return self

    @property
    def dev_eui_key(self) -> str | None:
        return None if self.dev_eui is None else self.dev_eui.upper()


class Device(_Strict):
    """One device of a council, as its readings are published."""

    device_id: str = Field(pattern=rf"^{NAME_PATTERN}$")
    domain: Domain
    model: str | None = Field(default=None, description="Decoding profile of a LoRaWAN device")
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    total_spots: int | None = Field(default=None, ge=1, description="Car park capacity")
    bin_depth_mm: float | None = Field(
        default=None, gt=0, description="Distance from an ultrasonic sensor to the bin's floor"
    )
    lorawan: LoRaWANIds | None = None
    citizen_hosted: bool | None = Field(
        default=None,
        description="Hosted by a citizen (at home): lat/lon are published rounded to 3 decimals; "
        "unset: the council's citizen_hosted",
    )
    personal_fields: tuple[str, ...] = Field(
        default=(), description="Fields the device sends that identify people (e.g. plate): never published"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Device:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon come together")
        if self.total_spots is not None and self.domain != Domain.PARKING:
            raise ValueError("total_spots is for parking devices")
        if self.bin_depth_mm is not None and self.domain != Domain.WASTE:
            raise ValueError("bin_depth_mm is for waste devices")
        if self.lorawan is not None and self.model is None:
            raise ValueError("a LoRaWAN device needs the model whose profile decodes it")
        return self


class Application(_Strict):
    """A LoRaWAN application the council owns; with accept_unknown_devices, its new devices are taken."""

    tts: str | None = Field(default=None, pattern=rf"^{LORA_ID}@{LORA_ID}$")
    chirpstack: str | None = Field(default=None, pattern=rf"^{LORA_ID}$")
    domain: Domain
    model: str

    @model_validator(mode="after")
    def _one_network(self) -> Application:
        if (self.tts is None) == (self.chirpstack is None):
            raise ValueError("give exactly one of tts (<application>@<tenant>) or chirpstack")
        return self


class Licence(_Strict):
    """A data licence, as Frictionless data packages name it."""

    name: str = Field(pattern=r"^[A-Za-z0-9.+-]{1,64}$", description="SPDX-style id, e.g. ODbL-1.0")
    path: str = Field(pattern=r"^https?://", description="Where the licence text is")
    title: str


PUBLISHER_TYPES = (
    "Academia-ScientificOrganisation",
    "Company",
    "IndustryConsortium",
    "LocalAuthority",
    "NationalAuthority",
    "NonGovernmentalOrganisation",
    "NonProfitOrganisation",
    "PrivateIndividual(s)",
    "RegionalAuthority",
    "StandardisationBody",
    "SupraNationalAuthority",
)
"""The ADMS publisher types (http://purl.org/adms/publishertype/<type>) a council may name."""
PLACEHOLDER_DOMAINS = (".invalid", ".example")
"""Domains that never deliver mail (RFC 2606): a contact there is a placeholder to replace."""


class Contact(_Strict):
    """`[contact]`: who answers questions about the council's published data (`dcat:contactPoint`).

    A team or a shared mailbox, not a person: the catalogue publishes it to everyone.
    """

    name: str = Field(min_length=1, max_length=200, description="The contact's name, e.g. 'Open data team'")
    email: str = Field(
        pattern=r"^[^@\s<>\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
        max_length=254,
        description="Its mailbox (a team's, never a person's own)",
    )
    url: str | None = Field(default=None, pattern=r"^https?://\S+$", description="Its contact page")

    @property
    def placeholder(self) -> bool:
        """Whether the mailbox is a placeholder (`.invalid`, `.example`) a deployer must replace."""
        return self.email.lower().endswith(PLACEHOLDER_DOMAINS)


_DeviceId = Annotated[str, StringConstraints(pattern=rf"^{NAME_PATTERN}$")]
_IntervalS = Annotated[int, Field(ge=1, le=86_400)]


class CouncilQuality(_Strict):
    """`[quality]`: a council's own quality-gate thresholds and its devices' reporting intervals.

    Any threshold of `QualitySettings` (`CIVICFLOW_QUALITY__*`) may be set here and replaces the
    global value for this council's partitions; an unknown name or a bad value fails the load.
    `[quality.reporting_interval_s]` maps a device id to the interval it is expected to report at;
    devices not named there get the rule of warehouse/aggregates.py (docs/queries.md#coverage).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    reporting_interval_s: dict[_DeviceId, _IntervalS] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_thresholds(self) -> CouncilQuality:
        QualitySettings.model_validate(self.model_extra or {})
        return self

    def thresholds(self, base: QualitySettings) -> QualitySettings:
        """The global thresholds with this council's overrides applied (validated together)."""
        return QualitySettings.model_validate(base.model_dump() | (self.model_extra or {}))


class CouncilRegistry(_Strict):
    """The contents of `registry/<council>.toml`."""

    council: str = Field(pattern=rf"^{NAME_PATTERN}$")
    licence: Licence | None = Field(
        default=None,
        description="Licence the council's data must be published under when it is not the "
        "Open Government Licence (e.g. data from citizen sensors under ODbL)",
    )
    attribution: str | None = Field(
        default=None, max_length=500, description="Attribution the licence asks published files to carry"
    )
    source: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Where the council's data comes from when it is not the council's own (a sensor "
        "network's archive, say): the source its published files name beside the attribution",
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The council's name as its catalogue entries give it (e.g. 'Birmingham City Council'); "
        "unset: the council id in title case",
    )
    publisher_type: Literal[PUBLISHER_TYPES] = Field(  # type: ignore[valid-type]
        default="LocalAuthority",
        description="The kind of organisation that publishes the data, from the ADMS publisher types",
    )
    contact: Contact | None = Field(
        default=None, description="Who answers questions about the published data (dcat:contactPoint)"
    )
    gss_code: str | None = Field(
        default=None,
        pattern=r"^[EKNSW]\d{8}$",
        description="The ONS/GSS code of the council's area (e.g. E08000025): the catalogue's "
        "dct:spatial names http://statistics.data.gov.uk/id/statistical-geography/<code>",
    )
    accept_unknown_devices: bool = Field(
        default=False,
        description="Take readings from devices not listed here instead of quarantining them",
    )
    timezone: str | None = Field(
        default=None,
        description="IANA time zone of the council's device clocks (e.g. Europe/London): a naive "
        "observed_at is local time there. Unset: a naive observed_at is quarantined",
    )
    ambiguous_local_time: Literal["quarantine", "earlier", "later"] = Field(
        default="quarantine",
        description="A naive observed_at in the hour the clocks go back, which happens twice: "
        "quarantine it, or take its first (earlier) or second (later) occurrence",
    )
    max_lateness_days: int | None = Field(
        default=None,
        ge=0,
        description="Quarantine a reading as too_late when its UTC event date is more than this "
        "many days before the UTC date it was received; unset: no horizon",
    )
    citizen_hosted: bool = Field(
        default=False,
        description="Every device is hosted by a citizen: lat/lon are published rounded to 3 decimals",
    )
    personal_fields: tuple[str, ...] = Field(
        default=(),
        description="Fields any device of the council may send that identify people: never published",
    )
    quality: CouncilQuality = Field(
        default_factory=CouncilQuality,
        description="Quality-gate thresholds for this council and its devices' reporting intervals",
    )
    devices: tuple[Device, ...] = ()
    applications: tuple[Application, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone such as 'Europe/London'") from exc
        return value

    @property
    def zone(self) -> ZoneInfo | None:
        return None if self.timezone is None else ZoneInfo(self.timezone)

    def too_late(self, observed_at: datetime, received_at: datetime) -> bool:
        """Whether a reading falls behind the lateness horizon: judged on the receive time, not
        the clock, so a replay of the raw zone decides the same way as the first staging did."""
        if self.max_lateness_days is None:
            return False
        horizon = received_at.astimezone(UTC).date() - timedelta(days=self.max_lateness_days)
        return observed_at.astimezone(UTC).date() < horizon

    @model_validator(mode="after")
    def _unique(self) -> CouncilRegistry:
        if self.ambiguous_local_time != "quarantine" and self.timezone is None:
            raise ValueError("ambiguous_local_time needs the timezone whose local times it resolves")
        published = {c.name for d in DATASETS.values() for c in d.published_columns}
        for name in (*self.personal_fields, *(f for d in self.devices for f in d.personal_fields)):
            if name in published:
                raise ValueError(
                    f"personal field {name!r} is a published column of the contract; "
                    "a field that identifies people must not be one"
                )
        seen: set[str] = set()
        for d in self.devices:
            if d.device_id in seen:
                raise ValueError(f"device_id {d.device_id!r} is listed twice")
            seen.add(d.device_id)
        return self


def council_title(council: str) -> str:
    """A council id as a name: `north-lanarkshire` is "North Lanarkshire"."""
    return council.replace("-", " ").replace("_", " ").title()


@dataclass(frozen=True)
class Match:
    """The council and device a message belongs to; `device` is None for an accepted unknown device."""

    council: str
    device: Device | None
    application: Application | None = None


@dataclass
class Registry:
    """Every council's registry, indexed for the decoder's look-ups. Build it with `build_registry`."""

    councils: dict[str, CouncilRegistry] = field(default_factory=dict)
    devices: dict[tuple[str, str], Device] = field(default_factory=dict)
    by_tts: dict[tuple[str, str], tuple[str, Device]] = field(default_factory=dict)
    by_dev_eui: dict[str, tuple[str, Device]] = field(default_factory=dict)
    tts_applications: dict[str, tuple[str, Application]] = field(default_factory=dict)
    chirpstack_applications: dict[str, tuple[str, Application]] = field(default_factory=dict)

    def licences(self) -> dict[str, dict]:
        """Council -> the Frictionless licence of its published files (`name`, `path`, `title`) with
        the `attribution` and `source` they must name.

        Only councils that differ from the default are listed: the Open Government Licence with its
        own statement (`civicflow.contract.OGL_ATTRIBUTION`). A council that names an attribution or
        a source but no licence is listed under the Open Government Licence.
        """
        out = {}
        for name, c in self.councils.items():
            if c.licence is None and c.attribution is None and c.source is None:
                continue
            licence = c.licence.model_dump() if c.licence is not None else dict(LICENCE)
            if c.attribution:
                licence["attribution"] = c.attribution
            if c.source:
                licence["source"] = c.source
            out[name] = licence
        return out

    def citizen_hosted(self, council: str, device_id: str) -> bool:
        """Whether a device is hosted by a citizen: its own setting, else its council's."""
        c = self.councils.get(council)
        d = self.devices.get((council, device_id))
        if d is not None and d.citizen_hosted is not None:
            return d.citizen_hosted
        return c is not None and c.citizen_hosted

    def personal_fields(self, council: str) -> set[str]:
        """Every field a device of the council may send that identifies people."""
        c = self.councils.get(council)
        return (
            set() if c is None else {*c.personal_fields, *(f for d in c.devices for f in d.personal_fields)}
        )

    def quality(self, council: str, base: QualitySettings) -> tuple[QualitySettings, dict[str, int]]:
        """A council's quality thresholds and device reporting intervals (global ones if unlisted)."""
        registered = self.councils.get(council)
        if registered is None:
            return base, {}
        return registered.quality.thresholds(base), dict(registered.quality.reporting_interval_s)

    def device(self, council: str, device_id: str) -> Device | None:
        return self.devices.get((council, device_id))

    def models(self) -> set[str]:
        """Every model a device or application names, to check against the decoder's profiles."""
        return {
            m
            for c in self.councils.values()
            for m in [*(d.model for d in c.devices), *(a.model for a in c.applications)]
            if m is not None
        }

    def match_tts(self, application: str, tenant: str, device: str, dev_eui: str | None) -> Match | None:
        """The device a The Things Stack uplink comes from: by application and device id, else DevEUI."""
        app = f"{application}@{tenant}"
        hit = self.by_tts.get((app, device))
        if hit is None and dev_eui is not None:
            hit = self.by_dev_eui.get(dev_eui.upper())
        if hit is not None:
            return Match(hit[0], hit[1])
        owner = self.tts_applications.get(app)
        return None if owner is None else Match(owner[0], None, owner[1])

    def match_chirpstack(self, application: str, dev_eui: str) -> Match | None:
        """The device a ChirpStack uplink comes from: by DevEUI, within its application if one is set."""
        hit = self.by_dev_eui.get(dev_eui.upper())
        if hit is not None:
            app = hit[1].lorawan.chirpstack_application if hit[1].lorawan else None
            if app is None or app == application:
                return Match(hit[0], hit[1])
        owner = self.chirpstack_applications.get(application)
        return None if owner is None else Match(owner[0], None, owner[1])


def build_registry(councils: list[CouncilRegistry], source: str = "registry") -> Registry:
    """Index councils' registries; raise RegistryError if two devices claim the same identity."""
    reg = Registry()

    def claim(index: dict, key, value, what: str) -> None:
        if key in index:
            raise RegistryError(
                f"{source}: {what} {key!r} is claimed by council {index[key][0]!r} and {value[0]!r}; "
                "an identity may belong to one device only"
            )
        index[key] = value

    for c in councils:
        if c.council in reg.councils:
            raise RegistryError(f"{source}: council {c.council!r} is defined twice")
        reg.councils[c.council] = c
        for d in c.devices:
            reg.devices[(c.council, d.device_id)] = d
            if d.lorawan is None:
                continue
            if d.lorawan.tts is not None and d.lorawan.tts_device_id is not None:
                claim(reg.by_tts, (d.lorawan.tts, d.lorawan.tts_device_id), (c.council, d), "TTS device")
            if d.lorawan.dev_eui_key is not None:
                claim(reg.by_dev_eui, d.lorawan.dev_eui_key, (c.council, d), "DevEUI")
        for a in c.applications:
            if a.tts is not None:
                claim(reg.tts_applications, a.tts, (c.council, a), "TTS application")
            if a.chirpstack is not None:
                claim(reg.chirpstack_applications, a.chirpstack, (c.council, a), "ChirpStack application")
    return reg


def load_council(path: Path) -> CouncilRegistry:
    """Read and validate one `<council>.toml`; its `council` must be the file's name."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        council = CouncilRegistry.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"cannot read device registry {path}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
        )
        raise RegistryError(f"device registry {path} is invalid, fix: {problems}") from exc
    if council.council != path.stem:
        raise RegistryError(
            f"device registry {path} declares council {council.council!r}; "
            f"rename the file to {council.council}.toml or fix the council"
        )
    return council


def load_registry(directory: Path = DEFAULT_REGISTRY_DIR) -> Registry:
    """Load every `<council>.toml` in a directory into one Registry."""
    if not directory.is_dir():
        raise RegistryError(
            f"device registry directory {directory} does not exist; create it with one "
            "<council>.toml per council (docs/mqtt-contract.md, Device registry)"
        )
    return build_registry([load_council(p) for p in sorted(directory.glob("*.toml"))], str(directory))
