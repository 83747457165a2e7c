"""Convert a gateway's value into the unit of its contract column, by explicit rules only.

Gateways report in many units (ppb, °F, %RH, mph); the contract (`civicflow.contract`) stores
each measurement in exactly one. Every conversion Civicflow makes is a row of `RULES`, keyed by
(the contract column's unit, the unit the gateway sent). A pair that is not in the table is not
guessed: the reading is quarantined as `unconvertible_unit`. Unit names are SenML's (RFC 8428)
and its secondary units (RFC 8798) where those exist (`Cel`, `K`, `/`, `%RH`, `ug/m3`, `km/h`,
`m/s`, `ppm`, `/100`, `count`); `ppb`, `degF`, `mph` and `%` fill the gaps.

Gas mixing ratios become mass concentrations at the EU reference conditions of Directive
2008/50/EC for gases (20 °C, 101.325 kPa), where one mole of an ideal gas takes 24.04 litres:
µg/m³ = ppb × M / 24.04, with M the molar mass in g/mol.
"""

from __future__ import annotations

from collections.abc import Callable

from civicflow.contract import Reason
from civicflow.transforms.invalid import Invalid

MOLAR_VOLUME_L = 24.04  # litres per mole at 20 °C and 101.325 kPa (EU reference conditions)
MOLAR_MASS_G = {"no2": 46.0055, "o3": 47.9982, "so2": 64.066, "co": 28.010}


def _ppb_to_ugm3(gas: str) -> Callable[[float], float]:
    factor = MOLAR_MASS_G[gas] / MOLAR_VOLUME_L
    return lambda v: v * factor


def _ppm_to_ugm3(gas: str) -> Callable[[float], float]:
    factor = 1000 * MOLAR_MASS_G[gas] / MOLAR_VOLUME_L
    return lambda v: v * factor


def _identity(v: float) -> float:
    return v


def _percent(v: float) -> float:
    return v / 100


# (measurement or contract unit, unit sent) -> conversion. Keys by measurement name come first,
# because the same unit pair means different things for different quantities (ppb of NO2 and of
# O3 convert with different molar masses; ppb of PM10 means nothing).
RULES: dict[tuple[str, str], Callable[[float], float]] = {
    # Gases in µg/m³: mass concentrations pass through, mixing ratios convert by molar mass.
    **{(gas, "ug/m3"): _identity for gas in ("no2", "o3", "so2", "pm10", "pm25")},
    **{(gas, "mg/m3"): (lambda v: v * 1000) for gas in ("no2", "o3", "so2", "pm10", "pm25")},
    **{(gas, "ppb"): _ppb_to_ugm3(gas) for gas in ("no2", "o3", "so2")},
    **{(gas, "ppm"): _ppm_to_ugm3(gas) for gas in ("no2", "o3", "so2")},
    # Carbon monoxide in mg/m³.
    ("co", "mg/m3"): _identity,
    ("co", "ug/m3"): lambda v: v / 1000,
    ("co", "ppm"): lambda v: v * MOLAR_MASS_G["co"] / MOLAR_VOLUME_L,
    ("co", "ppb"): lambda v: v * MOLAR_MASS_G["co"] / MOLAR_VOLUME_L / 1000,
    # Temperatures in degrees Celsius.
    ("Cel", "Cel"): _identity,
    ("Cel", "K"): lambda v: v - 273.15,
    ("Cel", "degF"): lambda v: (v - 32) * 5 / 9,
    # Fractions (relative humidity, filling level, occupancy) in 1.
    ("1", "/"): _identity,
    ("1", "1"): _identity,
    ("1", "%"): _percent,
    ("1", "/100"): _percent,
    ("relative_humidity", "%RH"): _percent,  # %RH only for humidity: 40 %RH is no filling level
    # Speeds in km/h.
    ("km/h", "km/h"): _identity,
    ("km/h", "m/s"): lambda v: v * 3.6,
    ("km/h", "mph"): lambda v: v * 1.609344,
    # Counts: a count is a count; SenML calls it `count`.
    ("vehicle", "count"): _identity,
    ("spot", "count"): _identity,
    # Intervals in seconds.
    ("s", "s"): _identity,
    ("s", "min"): lambda v: v * 60,
    ("s", "h"): lambda v: v * 3600,
}

ALIASES = {"°C": "Cel", "°F": "degF", "µg/m3": "ug/m3", "μg/m3": "ug/m3", "%rh": "%RH"}
"""Spellings some device codecs use, mapped to the SenML names above."""

COUNT_UNITS = frozenset({"vehicle", "spot"})
"""Contract units of counts: a count sent without a unit is a plain count, not a guess."""


def convert(measurement: str, contract_unit: str | None, value: float, unit: str | None) -> float:
    """`value` in `unit` expressed in the contract's unit; raise Invalid(UNCONVERTIBLE_UNIT) if no rule.

    A value sent without a unit is accepted only for counts: for any other quantity the sender
    must say which unit it means (a bare 21 could be °C or °F).
    """
    if unit is None:
        if contract_unit is None or contract_unit in COUNT_UNITS:
            return value
        raise Invalid(
            Reason.UNCONVERTIBLE_UNIT,
            f"{measurement} has no unit; send it in {contract_unit} or a unit Civicflow converts "
            f"({', '.join(units_for(measurement, contract_unit))})",
        )
    unit = ALIASES.get(unit, unit)
    rule = RULES.get((measurement, unit)) or RULES.get((contract_unit or "", unit))
    if rule is None:
        raise Invalid(
            Reason.UNCONVERTIBLE_UNIT,
            f"{measurement} in {unit[:20]!r} cannot be converted to {contract_unit}; "
            f"send one of {', '.join(units_for(measurement, contract_unit))}",
        )
    return rule(value)


def units_for(measurement: str, contract_unit: str | None) -> list[str]:
    """The units Civicflow accepts for a measurement, for error messages and docs."""
    return sorted({u for (key, u) in RULES if key in (measurement, contract_unit)})
