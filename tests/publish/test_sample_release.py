"""A release built from the real samples under the shipped registry: what it says of each file's
licence and attribution."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
import rdflib
from factories import LIMITS, car_park, land

from civicflow.registry import load_registry
from ingest.samples import aberdeen_air_quality_messages, birmingham_parking_messages
from jobs.publication import gate_and_publish
from publish.catalog import to_graph
from publish.release import latest_release
from transforms.stage import stage_segments
from warehouse.db import connect
from warehouse.layout import Layout

pytestmark = pytest.mark.integration
DCAT = rdflib.Namespace("http://www.w3.org/ns/dcat#")
DCTERMS = rdflib.Namespace("http://purl.org/dc/terms/")

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SENSOR_COMMUNITY = "Sensor.Community (https://sensor.community) contributors, archive.sensor.community"
OGL = "Contains public sector information licensed under the Open Government Licence v3.0."
ODBL = {
    "name": "ODbL-1.0",
    "path": "https://opendatacommons.org/licenses/odbl/1-0/",
    "title": "Open Data Commons Open Database License (ODbL) v1.0",
}


def on(day: date, messages):
    return [(topic, payload) for topic, payload in messages if day.isoformat() in str(payload)]


@pytest.fixture(scope="module")
def sample_release(tmp_path_factory) -> Layout:
    """Aberdeen's citizen air stations on 2018-01-01 (ODbL, passes), Birmingham's car parks on
    2016-10-06 (OGL, published with completeness warnings) and a testtown day held back (its only
    reading is from the future), gated and released under the shipped registry."""
    layout = Layout(tmp_path_factory.mktemp("samples") / "data")
    registry = load_registry()
    con = connect(layout.warehouse)
    land(
        layout,
        [
            *on(date(2018, 1, 1), aberdeen_air_quality_messages()),
            *on(date(2016, 10, 6), birmingham_parking_messages()),
            car_park("p1", "2026-11-23T13:00:00Z", 10),
        ],
    )
    stage_segments(layout, con, LIMITS, registry=registry, now=NOW)
    result = gate_and_publish(layout, con, now=NOW, licences=registry.licences(), registry=registry)
    con.close()
    assert (result.published, result.passed, result.failed) == (2, 2, 1)
    assert [(w["council"], w["warnings"]) for w in result.warned] == [("birmingham", ["completeness"])]
    assert [(h["council"], h["failed"]) for h in result.held_back] == [("testtown", ["no_future"])]
    return layout


def test_the_attribution_of_the_citizen_stations_is_in_their_data_package_and_the_catalogue(
    sample_release,
):
    layout = sample_release
    release = latest_release(layout)
    source = {"title": SENSOR_COMMUNITY, "path": "https://archive.sensor.community/"}
    for name in ("datapackage.json", "aberdeen.package.json"):
        package = json.loads((release / "air_quality" / name).read_text())
        assert package["licenses"] == [ODBL]
        assert package["sources"][1:] == [source]
        assert package["resources"]
        for resource in package["resources"]:
            assert (resource["licenses"], resource["sources"]) == ([ODBL], [source])
    parking = json.loads((release / "parking" / "datapackage.json").read_text())
    assert parking["licenses"][0]["name"] == "OGL-UK-3.0"
    assert parking["sources"][1:] == [{"title": OGL, "path": parking["licenses"][0]["path"]}]

    graph = to_graph(json.loads(layout.catalog("jsonld").read_text()))
    turtle = rdflib.Graph().parse(
        data=layout.catalog("ttl").read_text(),
        format="turtle",
        publicID="http://civicflow.invalid/published/",
    )
    for g in (graph, turtle):
        datasets = {
            str(g.value(ds, DCTERMS.identifier)): ds for ds in g.subjects(rdflib.RDF.type, DCAT.Dataset)
        }
        assert sorted(datasets) == ["civicflow-air_quality-aberdeen", "civicflow-parking-birmingham"]
        for identifier, text in (
            ("civicflow-air_quality-aberdeen", SENSOR_COMMUNITY),
            ("civicflow-parking-birmingham", OGL),
        ):
            ds = datasets[identifier]
            statement = g.value(ds, DCTERMS.rights)
            assert (statement, rdflib.RDF.type, DCTERMS.RightsStatement) in g
            assert str(g.value(statement, rdflib.RDFS.label)) == text
            distributions = list(g.objects(ds, DCAT.distribution))
            assert len(distributions) == 8  # readings and 3 aggregates, Parquet and CSV
            assert {g.value(d, DCTERMS.rights) for d in distributions} == {statement}
        odbl = g.value(datasets["civicflow-air_quality-aberdeen"], DCTERMS.license)
        assert str(odbl) == ODBL["path"]
