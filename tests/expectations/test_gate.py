"""The quality gate run with real Great Expectations over frames shaped like staged Parquet."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from civicflow.contract import PARKING, Column
from civicflow.expectations.gate import (
    Part,
    ValidationReport,
    evaluate_batch,
    evaluate_partition,
    validate_partition,
)
from civicflow.expectations.quality import QualityInputs
from civicflow.expectations.suites import OBSERVED_AT_MAX, build_suite, suite_parameters

pytestmark = pytest.mark.integration

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)

_ARROW_TYPES = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
_TYPE_MAPPERS = {
    "numpy": None,
    "nullable": {pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype()}.get,
    "arrow": pd.ArrowDtype,
}


def _rows(n: int = 3) -> list[dict[str, Any]]:
    """Clean car-park readings from one council, one per device, every 5 minutes."""
    rows = []
    for i in range(n):
        observed = T0 + timedelta(minutes=5 * i)
        occupied, total = 10 + i, 50
        rows.append(
            {
                "council": "leeds",
                "device_id": f"carpark-{i}",
                "observed_at": observed,
                "occupied_spots": occupied,
                "total_spots": total,
                "status": None if i % 2 else "occupied",
                "occupancy": occupied / total,
                "lat": 53.8,
                "lon": -1.55,
                "event_date": observed.date(),
                "msg_id": None,
                "received_at": observed + timedelta(seconds=2),
                "segment_id": "seg-000001",
                "record_offset": 128 * i,
                "reading_index": 0,
                "staged_at": NOW,
            }
        )
    return rows


def _frame(rows: list[dict[str, Any]], mapper: str = "numpy") -> pd.DataFrame:
    """Build a partition the way the pipeline reads one: Arrow table to pandas."""
    columns: tuple[Column, ...] = PARKING.staged_columns
    schema = pa.schema([(c.name, _ARROW_TYPES[c.type]) for c in columns])
    table = pa.Table.from_pylist(rows, schema=schema)
    types_mapper = _TYPE_MAPPERS[mapper]
    return table.to_pandas(types_mapper=types_mapper) if types_mapper else table.to_pandas()


def _failed(report: ValidationReport, expectation: str) -> list[dict[str, Any]]:
    return [f for f in report.failed if f["expectation"] == expectation]


@pytest.mark.parametrize("mapper", sorted(_TYPE_MAPPERS))
def test_clean_partition_passes(mapper: str) -> None:
    df = _frame(_rows(), mapper)
    assert str(df["observed_at"].dtype) in {"datetime64[us, UTC]", "timestamp[us, tz=UTC][pyarrow]"}

    report = validate_partition(df, PARKING, now=NOW)

    assert report.failed == []
    assert report.success is True
    assert report.evaluated == len(build_suite(PARKING).expectations)
    assert report.dataset == "parking"
    assert report.now == "2025-03-14T12:00:00+00:00"


@pytest.mark.parametrize("mapper", sorted(_TYPE_MAPPERS))
def test_occupied_above_total_fails_naming_both_columns(mapper: str) -> None:
    rows = _rows()
    rows[1]["occupied_spots"], rows[1]["total_spots"], rows[1]["occupancy"] = 60, 50, None

    report = validate_partition(_frame(rows, mapper), PARKING, now=NOW)

    assert report.success is False
    assert [f["expectation"] for f in report.failed] == ["expect_column_pair_values_a_to_be_greater_than_b"]
    (failure,) = report.failed
    assert failure["columns"] == ["total_spots", "occupied_spots"]
    assert failure["unexpected_count"] == 1
    assert failure["sample"] == [[50, 60]]


def test_occupied_with_missing_total_is_not_compared() -> None:
    rows = _rows()
    rows[0]["total_spots"], rows[0]["occupancy"] = None, None

    report = validate_partition(_frame(rows, "nullable"), PARKING, now=NOW)

    assert report.success is True


def test_duplicate_natural_key_fails() -> None:
    rows = _rows()
    rows[2]["device_id"], rows[2]["observed_at"] = rows[0]["device_id"], rows[0]["observed_at"]

    report = validate_partition(_frame(rows), PARKING, now=NOW)

    assert report.success is False
    (failure,) = _failed(report, "expect_compound_columns_to_be_unique")
    assert failure["columns"] == ["council", "device_id", "observed_at"]
    assert failure["unexpected_count"] == 2
    assert failure["sample"][0] == {
        "council": "leeds",
        "device_id": "carpark-0",
        "observed_at": "2025-03-14T09:00:00+00:00",
    }
    assert len(report.failed) == 1
    # A rule about the partition holds the whole day, names no device and flags no row.
    assert failure["grain"] == "partition" and "devices" not in failure
    evaluation = evaluate_partition(_frame(rows), PARKING, now=NOW)
    assert (evaluation.partition_failures, evaluation.held_devices) == (["unique_key"], {})
    assert evaluation.flags.tolist() == [None, None, None]


@pytest.mark.parametrize("mapper", sorted(_TYPE_MAPPERS))
def test_negative_occupied_spots_fails(mapper: str) -> None:
    rows = _rows()
    rows[0]["occupied_spots"], rows[0]["occupancy"] = -3, None

    report = validate_partition(_frame(rows, mapper), PARKING, now=NOW)

    assert report.success is False
    assert len(report.failed) == 1
    (failure,) = _failed(report, "expect_column_values_to_be_between")
    assert failure["columns"] == ["occupied_spots"]
    assert failure["unexpected_count"] == 1
    assert failure["sample"] in ([-3], [-3.0])
    assert failure["detail"].startswith("1 of 3 rows unexpected")


def test_status_outside_enum_fails() -> None:
    rows = _rows()
    rows[1]["status"] = "reserved"

    report = validate_partition(_frame(rows), PARKING, now=NOW)

    assert report.success is False
    assert report.failed == [
        {
            "rule": "enum:status",
            "severity": "blocking",
            "expectation": "expect_column_values_to_be_in_set",
            "columns": ["status"],
            "unexpected_count": 1,
            "sample": ["reserved"],
            "detail": "1 of 3 rows unexpected, e.g. ['reserved']",
            "grain": "device",
            "devices": ["carpark-1"],
        }
    ]


@pytest.mark.parametrize("mapper", sorted(_TYPE_MAPPERS))
def test_future_observed_at_fails(mapper: str) -> None:
    rows = _rows()
    rows[0]["observed_at"] = NOW + timedelta(hours=1)
    rows[1]["observed_at"] = NOW + timedelta(minutes=4)

    report = validate_partition(_frame(rows, mapper), PARKING, now=NOW)

    assert report.success is False
    (failure,) = report.failed
    assert failure["expectation"] == "expect_column_values_to_be_between"
    assert failure["columns"] == ["observed_at"]
    assert failure["unexpected_count"] == 1
    assert failure["sample"] == ["2025-03-14T13:00:00+00:00"]


def test_missing_required_value_fails_once() -> None:
    rows = _rows()
    rows[0]["received_at"] = None

    report = validate_partition(_frame(rows, "arrow"), PARKING, now=NOW)

    assert [(f["expectation"], f["columns"]) for f in report.failed] == [
        ("expect_column_values_to_not_be_null", ["received_at"])
    ]


def test_empty_partition_fails_on_row_count() -> None:
    report = validate_partition(_frame([]), PARKING, now=NOW)

    assert report.success is False
    (failure,) = _failed(report, "expect_table_row_count_to_be_between")
    assert failure["columns"] == []
    assert failure["detail"] == "observed 0"


def test_missing_column_fails_and_is_named() -> None:
    df = _frame(_rows()).drop(columns=["lat"])

    report = validate_partition(df, PARKING, now=NOW)

    assert report.success is False
    by_type = {(f["expectation"], tuple(f["columns"])): f for f in report.failed}
    assert by_type[("expect_column_to_exist", ("lat",))]["detail"] == "column is missing"
    assert by_type[("expect_column_values_to_be_between", ("lat",))]["detail"] == (
        'could not evaluate: Error: The column "lat" in BatchData does not exist.'
    )


def test_same_input_gives_identical_report() -> None:
    rows = _rows()
    rows[0]["occupied_spots"], rows[0]["occupancy"] = -3, None
    rows[1]["status"] = "reserved"
    rows[2]["observed_at"] = NOW + timedelta(days=1)

    first = validate_partition(_frame(rows), PARKING, now=NOW)
    second = validate_partition(_frame(rows), PARKING, now=NOW)

    assert first == second
    assert [(f["expectation"], f["columns"]) for f in first.failed] == [
        ("expect_column_values_to_be_between", ["occupied_spots"]),
        ("expect_column_values_to_be_in_set", ["status"]),
        ("expect_column_values_to_be_between", ["observed_at"]),
    ]
    assert json.dumps(first.to_json(), sort_keys=True) == json.dumps(second.to_json(), sort_keys=True)


def test_report_is_json_serialisable() -> None:
    rows = _rows()
    rows[0]["observed_at"] = NOW + timedelta(days=1)

    payload = validate_partition(_frame(rows, "arrow"), PARKING, now=NOW).to_json()

    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {
        "dataset",
        "now",
        "success",
        "evaluated",
        "failed",
        "gx_version",
        "warnings",
        "metrics",
        "thresholds",
    }
    assert payload["gx_version"].startswith("1.")


def test_validation_makes_no_network_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)

    assert validate_partition(_frame(_rows()), PARKING, now=NOW).success is True


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_partition(_frame(_rows()), PARKING, now=NOW.replace(tzinfo=None))


def test_suite_is_built_from_the_contract() -> None:
    suite = build_suite(PARKING)
    configs = [(e.expectation_type, e.configuration.kwargs) for e in suite.expectations]
    types = [t for t, _ in configs]

    assert types.count("expect_column_to_exist") == len(PARKING.staged_columns)
    assert (
        "expect_column_values_to_be_in_set",
        {"column": "status", "value_set": ["free", "occupied", "closed", "unknown"]},
    ) in configs
    assert {kwargs["column"] for t, kwargs in configs if t == "expect_column_values_to_not_be_null"} == {
        c.name for c in PARKING.staged_columns if c.required
    }
    assert suite_parameters(NOW) == {
        OBSERVED_AT_MAX: NOW + timedelta(minutes=5),
        "completeness_min": 0.5,
        "freshness_max_minutes": 120.0,
        "quarantine_share_max": 0.05,
        "volume_ratio_max": 4.0,
        "volume_ratio_min": 0.25,
    }


# --- grain: a rule about readings holds back their devices, a rule about the day the whole day ------


def test_rules_about_readings_hold_back_only_the_devices_whose_rows_failed() -> None:
    rows = _rows(4)
    rows[0]["occupied_spots"], rows[0]["occupancy"] = -3, None
    rows[2]["observed_at"] = NOW + timedelta(hours=1)
    rows[3]["device_id"] = "carpark-0"  # a clean reading of the device that sent the bad one

    evaluation = evaluate_partition(_frame(rows), PARKING, now=NOW)

    assert evaluation.partition_failures == []
    assert evaluation.held_devices == {"carpark-0": ["range:occupied_spots"], "carpark-2": ["no_future"]}
    assert [
        (f["rule"], f["grain"], f["devices"], f["unexpected_count"]) for f in evaluation.report.failed
    ] == [
        ("range:occupied_spots", "device", ["carpark-0"], 1),
        ("no_future", "device", ["carpark-2"], 1),
    ]
    # The failing rows, and only they, carry their rules (what an approval publishes flagged).
    assert evaluation.flags.tolist() == ["range:occupied_spots", None, "no_future", None]
    assert evaluation.report.success is False


def test_quarantine_share_is_judged_per_device_and_unattributed_readings_count_in_the_metrics_only() -> None:
    rows = _rows(4)
    rows[3]["device_id"] = "carpark-1"  # carpark-1 has 2 staged readings, the others 1 each
    # 4 readings of the day were quarantined: 1 of carpark-1's (1 / 3 > 5 %), 3 with no device id.
    inputs = QualityInputs(quarantined=4, quarantined_by_device={"carpark-1": 1})

    evaluation = evaluate_partition(_frame(rows), PARKING, now=NOW, inputs=inputs)

    assert evaluation.held_devices == {"carpark-1": ["quarantine_share"]}
    assert evaluation.partition_failures == []
    (failure,) = evaluation.report.failed
    assert (failure["rule"], failure["grain"], failure["devices"]) == (
        "quarantine_share",
        "device",
        ["carpark-1"],
    )
    assert failure["unexpected_count"] == 2  # both of carpark-1's rows
    assert failure["sample"] == [pytest.approx(1 / 3)] * 2
    assert evaluation.flags.tolist() == [None, "quarantine_share", None, "quarantine_share"]
    assert evaluation.report.metrics["quarantined"] == 4
    assert evaluation.report.metrics["quarantine_share"] == pytest.approx(4 / 8)
    # Without a device to blame, the same 4 readings hold nothing back.
    alone = evaluate_partition(_frame(rows), PARKING, now=NOW, inputs=QualityInputs(quarantined=4))
    assert (alone.report.success, alone.held_devices, alone.report.metrics["quarantine_share"]) == (
        True,
        {},
        pytest.approx(4 / 8),
    )


def test_a_batch_gives_each_partition_the_decision_it_would_get_alone() -> None:
    clean = _frame(_rows())
    bad_rows = _rows()
    for row in bad_rows:
        row["council"] = "york"
    bad_rows[1]["status"] = "reserved"
    bad_rows[2]["device_id"] = bad_rows[0]["device_id"]
    bad_rows[2]["observed_at"] = bad_rows[0]["observed_at"]
    bad = _frame(bad_rows)

    together = evaluate_batch([Part(clean), Part(bad)], PARKING, now=NOW)
    alone = [evaluate_partition(clean, PARKING, now=NOW), evaluate_partition(bad, PARKING, now=NOW)]

    assert [e.report for e in together] == [e.report for e in alone]
    assert [e.flags.tolist() for e in together] == [e.flags.tolist() for e in alone]
    assert [(e.held_devices, e.partition_failures) for e in together] == [
        ({}, []),
        ({"carpark-1": ["enum:status"]}, ["unique_key"]),
    ]
    assert together[1].flags.tolist() == [None, "enum:status", None]
    assert together[0].report.success is True and together[1].report.metrics["rows"] == 3
