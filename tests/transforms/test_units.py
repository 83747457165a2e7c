"""Each unit conversion rule of transforms/units.py, with values worked out by hand."""

from __future__ import annotations

import pytest

from civicflow.contract import DATASETS, Domain, Reason
from civicflow.transforms.invalid import Invalid
from civicflow.transforms.units import convert

pytestmark = pytest.mark.unit


def unit_of(domain: Domain, measurement: str) -> str | None:
    return next(c.unit for c in DATASETS[domain].reading_fields if c.name == measurement)


@pytest.mark.parametrize(
    ("domain", "measurement", "value", "unit", "expected"),
    [
        # gases at 20 °C, 101.325 kPa: µg/m³ = ppb × M / 24.04
        (Domain.AIR_QUALITY, "no2", 100, "ppb", 191.3706),  # 100 × 46.0055 / 24.04
        (Domain.AIR_QUALITY, "no2", 0.1, "ppm", 191.3706),
        (Domain.AIR_QUALITY, "o3", 50, "ppb", 99.8299),  # 50 × 47.9982 / 24.04
        (Domain.AIR_QUALITY, "so2", 1, "ppm", 2664.9750),  # 1000 × 64.066 / 24.04
        (Domain.AIR_QUALITY, "co", 1, "ppm", 1.16514),  # mg/m³ = ppm × 28.010 / 24.04
        (Domain.AIR_QUALITY, "co", 500, "ppb", 0.58257),
        (Domain.AIR_QUALITY, "co", 1200, "ug/m3", 1.2),
        (Domain.AIR_QUALITY, "pm25", 32, "ug/m3", 32.0),
        (Domain.AIR_QUALITY, "pm10", 0.048, "mg/m3", 48.0),
        (Domain.AIR_QUALITY, "pm25", 7, "µg/m3", 7.0),  # a codec's spelling of ug/m3
        (Domain.AIR_QUALITY, "temperature", 293.15, "K", 20.0),
        (Domain.AIR_QUALITY, "temperature", 68, "degF", 20.0),
        (Domain.AIR_QUALITY, "temperature", 23.8, "°C", 23.8),
        (Domain.AIR_QUALITY, "relative_humidity", 62, "%RH", 0.62),
        (Domain.AIR_QUALITY, "relative_humidity", 0.62, "/", 0.62),
        (Domain.WASTE, "filling_level", 40, "%", 0.4),
        (Domain.WASTE, "filling_level", 40, "/100", 0.4),
        (Domain.WASTE, "temperature", 14, "degF", -10.0),
        (Domain.TRAFFIC, "average_vehicle_speed", 10, "m/s", 36.0),
        (Domain.TRAFFIC, "average_vehicle_speed", 30, "mph", 48.28032),
        (Domain.TRAFFIC, "average_vehicle_speed", 41.5, "km/h", 41.5),
        (Domain.TRAFFIC, "occupancy", 25, "%", 0.25),
        (Domain.TRAFFIC, "intensity", 212, "count", 212),
        (Domain.TRAFFIC, "intensity", 212, None, 212),  # a bare count is a count
        (Domain.TRAFFIC, "interval_s", 5, "min", 300),
        (Domain.PARKING, "occupied_spots", 61, "count", 61),
    ],
)
def test_each_rule_converts_to_the_contract_unit(domain, measurement, value, unit, expected):
    assert convert(measurement, unit_of(domain, measurement), value, unit) == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize(
    ("domain", "measurement", "unit", "detail"),
    [
        (Domain.AIR_QUALITY, "pm10", "ppb", "pm10 in 'ppb' cannot be converted to ug/m3"),
        (Domain.AIR_QUALITY, "no2", "mol/m3", "send one of mg/m3, ppb, ppm, ug/m3"),
        (Domain.AIR_QUALITY, "temperature", None, "temperature has no unit; send it in Cel"),
        (Domain.WASTE, "filling_level", "%RH", "filling_level in '%RH' cannot be converted"),
        (Domain.TRAFFIC, "average_vehicle_speed", "kn", "send one of km/h, m/s, mph"),
        (Domain.AIR_QUALITY, "relative_humidity", "g/m3", "cannot be converted to 1"),
    ],
)
def test_a_unit_without_a_rule_is_refused_not_guessed(domain, measurement, unit, detail):
    with pytest.raises(Invalid) as info:
        convert(measurement, unit_of(domain, measurement), 1.0, unit)
    assert info.value.reason == Reason.UNCONVERTIBLE_UNIT
    assert detail in info.value.detail
