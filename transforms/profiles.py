"""Explicit tables from what gateways call a value to the contract measurement it carries.

A LoRaWAN uplink's decoded payload is whatever the device model's payload codec produces
(The Things Stack payload formatter, ChirpStack codec), so each model has a profile: for every
codec field, the contract measurement and the unit the codec reports it in; plus the fields the
model is known to send that are not contract measurements (battery, radio, diagnostics), which are
ignored. A field in neither list is refused (`unknown_field`): a firmware update that adds a
value is noticed, not silently dropped. SenML names map through `SENML_NAMES` the same way.

Adding a model is adding a row here and a test with one of its real uplinks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from civicflow.contract import Domain


class Kind(StrEnum):
    NUMBER = "number"  # a number in `unit`, converted by civicflow.transforms.units
    OCCUPIED = "occupied"  # a boolean bay state: true -> status "occupied", false -> "free"
    DISTANCE = "distance"  # ultrasonic distance to the contents, in `unit`; needs the bin depth


@dataclass(frozen=True)
class FieldRule:
    measurement: str
    unit: str | None = None
    kind: Kind = Kind.NUMBER


@dataclass(frozen=True)
class Profile:
    """How one device model's decoded payload maps to one domain's contract reading."""

    model: str
    domain: Domain
    fields: dict[str, FieldRule]
    ignored: frozenset[str] = field(default_factory=frozenset)
    source: str = ""  # where the field names and units come from


_MILESIGHT_DIAGNOSTICS = frozenset({"battery", "position", "device_status", "ipso_version", "sn"})

PROFILES: dict[str, Profile] = {
    p.model: p
    for p in (
        Profile(
            model="milesight_am319",
            domain=Domain.AIR_QUALITY,
            fields={
                "pm2_5": FieldRule("pm25", "ug/m3"),
                "pm10": FieldRule("pm10", "ug/m3"),
                "temperature": FieldRule("temperature", "Cel"),
                "humidity": FieldRule("relative_humidity", "%RH"),
            },
            ignored=_MILESIGHT_DIAGNOSTICS
            | {"pir", "light_level", "co2", "tvoc", "pressure", "hcho", "beep", "trigger"},
            source="Milesight AM319 codec: pm2_5/pm10 µg/m³, temperature °C, humidity %RH",
        ),
        Profile(
            model="decentlab_dl_pm",
            domain=Domain.AIR_QUALITY,
            fields={
                "pm2_5_mass_concentration": FieldRule("pm25", "ug/m3"),
                "pm10_mass_concentration": FieldRule("pm10", "ug/m3"),
                "air_temperature": FieldRule("temperature", "Cel"),
                "air_humidity": FieldRule("relative_humidity", "%RH"),
            },
            ignored=frozenset(
                {
                    "battery_voltage",
                    "protocol_version",
                    "device_id",
                    "pm1_0_mass_concentration",
                    "pm4_mass_concentration",
                    "typical_particle_size",
                    "pm0_5_number_concentration",
                    "pm1_0_number_concentration",
                    "pm2_5_number_concentration",
                    "pm4_number_concentration",
                    "pm10_number_concentration",
                    "barometric_pressure",
                }
            ),
            source="Decentlab DL-PM codec: mass concentrations µg/m³, air temperature °C, humidity %",
        ),
        Profile(
            model="milesight_em310_udl",
            domain=Domain.WASTE,
            fields={"distance": FieldRule("filling_level", "mm", Kind.DISTANCE)},
            ignored=_MILESIGHT_DIAGNOSTICS,
            source="Milesight EM310-UDL codec: distance mm",
        ),
        Profile(
            model="milesight_em400_udl",
            domain=Domain.WASTE,
            fields={
                "distance": FieldRule("filling_level", "mm", Kind.DISTANCE),
                "temperature": FieldRule("temperature", "Cel"),
            },
            ignored=_MILESIGHT_DIAGNOSTICS | {"temperature_abnormal", "distance_alarming"},
            source="Milesight EM400-UDL codec: distance mm, temperature °C",
        ),
        Profile(
            model="nwave_g4_nps",
            domain=Domain.PARKING,
            fields={"occupied": FieldRule("status", kind=Kind.OCCUPIED)},
            ignored=frozenset(
                {
                    "type",
                    "previous_state_duration",
                    "previous_state_duration_error",
                    "previous_state_duration_overflow",
                    "hw_health_status",
                    "temperature",  # the sensor's own temperature, not a parking measurement
                    "battery_voltage",
                    "battery_health",
                    "firmware_version",
                    "reset_cause",
                }
            ),
            source="Nwave G4 parking sensor codec: occupied boolean",
        ),
        Profile(
            model="bosch_parking_lot_sensor",
            domain=Domain.PARKING,
            fields={"occupied": FieldRule("status", kind=Kind.OCCUPIED)},
            ignored=frozenset({"type", "temperature", "resetCause", "firmwareVersion", "debugInfo"}),
            source="Bosch Parking Lot Sensor codec: occupied boolean",
        ),
        Profile(
            # Only the heartbeat is known from a real uplink: its fields are ignored, so a
            # heartbeat is quarantined as no_measurement. Count fields are added with a sample.
            model="nwave_g4_ncc",
            domain=Domain.TRAFFIC,
            fields={},
            ignored=frozenset({"type", "hw_health_status", "battery_voltage", "battery_voltage_mean_24h"}),
            source="Nwave G4 car counter codec: heartbeat fields",
        ),
    )
}


SENML_NAMES: dict[str, str] = {
    # air_quality
    "no2": "no2",
    "o3": "o3",
    "so2": "so2",
    "co": "co",
    "pm10": "pm10",
    "pm2.5": "pm25",
    "pm25": "pm25",
    "pm2_5": "pm25",
    "temperature": "temperature",
    "temp": "temperature",
    "humidity": "relative_humidity",
    "relativehumidity": "relative_humidity",
    "relative_humidity": "relative_humidity",
    # traffic
    "intensity": "intensity",
    "speed": "average_vehicle_speed",
    "averagevehiclespeed": "average_vehicle_speed",
    "average_vehicle_speed": "average_vehicle_speed",
    "occupancy": "occupancy",
    "interval": "interval_s",
    "laneid": "lane_id",
    "lane_id": "lane_id",
    # waste
    "fillinglevel": "filling_level",
    "filling_level": "filling_level",
    # parking (status comes as a string value `vs`, or as `occupied` with a boolean `vb`)
    "occupiedspotnumber": "occupied_spots",
    "occupied_spots": "occupied_spots",
    "totalspotnumber": "total_spots",
    "total_spots": "total_spots",
    "status": "status",
    "occupied": "status",
}
"""SenML record name (its last `:`/`/`-separated segment, compared in lower case) -> measurement."""

SENML_IGNORED = frozenset({"battery", "batterylevel", "bat", "voltage", "rssi", "snr"})
"""SenML names that are device diagnostics, not measurements: ignored."""
