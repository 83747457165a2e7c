"""A release built from the real samples under the shipped registry: what it says of each file's
licence and attribution, and the Data Docs it carries."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import pyshacl
import pytest
import rdflib
from factories import LIMITS, car_park, land
from fastapi.testclient import TestClient

from civicflow.ingest.samples import aberdeen_air_quality_messages, birmingham_parking_messages
from civicflow.jobs.publication import gate_and_publish
from civicflow.portal.app import create_app, held_pages
from civicflow.portal.release import load_release
from civicflow.publish.catalog import PLACEHOLDER_BASE, build_catalog, to_graph
from civicflow.publish.release import Release, latest_release
from civicflow.registry import load_registry
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
DCAT = rdflib.Namespace("http://www.w3.org/ns/dcat#")
DCTERMS = rdflib.Namespace("http://purl.org/dc/terms/")
FOAF = rdflib.Namespace("http://xmlns.com/foaf/0.1/")
VCARD = rdflib.Namespace("http://www.w3.org/2006/vcard/ns#")

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
            # Readings and 3 aggregates, Parquet and CSV, and the month's and the year's archives.
            assert len(distributions) == 12
            assert {g.value(d, DCTERMS.rights) for d in distributions} == {statement}
        odbl = g.value(datasets["civicflow-air_quality-aberdeen"], DCTERMS.license)
        assert str(odbl) == ODBL["path"]


class Assets(HTMLParser):
    """Every address a page loads (scripts, stylesheets, icons, images, frames, media, fonts)."""

    LOADED = {
        "script": "src",
        "img": "src",
        "iframe": "src",
        "source": "src",
        "embed": "src",
        "audio": "src",
        "video": "src",
        "object": "data",
        "input": "src",
    }

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and attrs.get("href"):
            self.loaded.append(attrs["href"])  # stylesheets, icons, preloads, fonts: all fetched
        elif tag in self.LOADED and attrs.get(self.LOADED[tag]):
            self.loaded.append(attrs[self.LOADED[tag]])
        if attrs.get("srcset"):
            self.loaded += [c.split()[0] for c in attrs["srcset"].split(",")]
        if attrs.get("style"):
            self.css.append(attrs["style"])
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style:
            self.css.append(data)


def css_urls(text: str) -> list[str]:
    return re.findall(r"""url\(\s*['"]?([^'")]+)|@import\s+['"]([^'"]+)""", text)


def test_the_data_docs_of_a_release_load_nothing_from_elsewhere_and_say_what_was_decided(sample_release):
    release = latest_release(sample_release)
    pages = sorted(release.rglob("*.html"))
    assert [p.relative_to(release).as_posix() for p in pages] == [
        "air_quality/data-docs/council=aberdeen/date=2018-01-01/v1.html",
        "parking/data-docs/council=birmingham/date=2016-10-06/v1.html",
        "parking/data-docs/council=testtown/date=2026-11-23/v1.html",
    ]
    stylesheets = set()
    for page in pages:
        html = page.read_text(encoding="utf-8")
        parsed = Assets()
        parsed.feed(html)
        assert parsed.loaded == ["../../data-docs.css"], page  # the one asset, from the release
        assert css_urls(" ".join(parsed.css)) == []
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), page
        for ref in parsed.loaded:
            asset = (page.parent / ref).resolve()
            assert asset.is_file() and asset.is_relative_to(release.resolve()), (page, ref)
            stylesheets.add(asset)
            assert css_urls(asset.read_text()) == []  # a stylesheet that loads nothing either
    # One stylesheet per dataset, linked from the publisher's copy rather than written per page.
    assert sorted(s.relative_to(release.resolve()).as_posix() for s in stylesheets) == [
        "air_quality/data-docs/data-docs.css",
        "parking/data-docs/data-docs.css",
    ]
    assert len({s.stat().st_ino for s in stylesheets}) == 2 and all(
        s.stat().st_nlink >= 2 for s in stylesheets
    )

    def status(path: str) -> str:
        [line] = [x for x in (release / path).read_text().splitlines() if 'role="status"' in x]
        return re.sub(r"<[^>]+>", "", line)

    assert (
        status("parking/data-docs/council=birmingham/date=2016-10-06/v1.html")
        == "Status: Passed with warnings"
    )
    assert status("parking/data-docs/council=testtown/date=2026-11-23/v1.html") == "Status: Failed: held back"
    assert status("air_quality/data-docs/council=aberdeen/date=2018-01-01/v1.html") == "Status: Passed"
    warned = (release / "parking/data-docs/council=birmingham/date=2016-10-06/v1.html").read_text()
    assert '<th scope="row">completeness</th>' in warned and "Great Expectations" in warned

    # The manifest names each published partition's page, and the page of the day held back.
    manifest = json.loads((release / "manifest.json").read_text())
    assert sorted((p["council"], p.get("data_docs")) for p in manifest["partitions"]) == [
        ("aberdeen", "air_quality/data-docs/council=aberdeen/date=2018-01-01/v1.html"),
        ("birmingham", "parking/data-docs/council=birmingham/date=2016-10-06/v1.html"),
    ]
    assert [(p["council"], p["data_docs"]) for p in manifest["held_back"]] == [
        ("testtown", "parking/data-docs/council=testtown/date=2026-11-23/v1.html")
    ]
    # quality.json names the held-back day's page as the release holds it, from the dataset's folder.
    quality = json.loads((release / "parking" / "quality.json").read_text())
    [held] = quality["councils"]["testtown"]["held_back"]
    assert (held["date"], held["data_docs"]) == (
        "2026-11-23",
        "data-docs/council=testtown/date=2026-11-23/v1.html",
    )
    assert (release / "parking" / held["data_docs"]).is_file()
    # The portal serves that page from the release, under the path quality.json gives.
    answer = TestClient(create_app(sample_release)).get(
        f"/releases/{release.name}/parking/{held['data_docs']}"
    )
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert answer.content == (release / "parking" / held["data_docs"]).read_bytes()
    parking = load_release(sample_release).datasets["parking"]
    assert held_pages(parking, "testtown") == [("2026-11-23", held["data_docs"])]  # the dataset page's link


SHAPES = Path(__file__).parent / "data" / "dcat-ap-3.0.1"
SH = rdflib.Namespace("http://www.w3.org/ns/shacl#")
GSS = "http://statistics.data.gov.uk/id/statistical-geography/"
# Recommended properties the catalogue leaves out on purpose: (focus node, path) -> why.
DCAT_AP_EXCEPTIONS = {
    # Civicflow's own agent publishes the catalogue for whoever runs the deployment, whose kind of
    # organisation (council, combined authority, company) Civicflow is not told.
    ("catalog.jsonld#civicflow", "http://purl.org/dc/terms/type"): "the deployment's kind is unknown",
    # A council whose devices have no position in its registry file (Birmingham's car parks,
    # Aberdeen's unlisted citizen stations) is located by its area's GSS code alone: Civicflow has
    # no box or centre for it, and the statistical geography's own URI describes the area.
    **{
        (f"{GSS}{code}", f"http://www.w3.org/ns/dcat#{p}"): "an area known only by its GSS code"
        for code in ("E08000025", "S12000033")
        for p in ("bbox", "centroid")
    },
}


def dcat_ap_problems(graph: rdflib.Graph) -> tuple[list[tuple[str, str, str]], str]:
    """Every violation and warning of the DCAT-AP 3.0.1 shapes not in DCAT_AP_EXCEPTIONS, and the text."""
    shapes = rdflib.Graph()
    for name in ("dcat-ap-SHACL.ttl", "shapes_recommended.ttl"):
        shapes.parse(SHAPES / name, format="turtle")
    _, report, text = pyshacl.validate(
        graph, shacl_graph=shapes, inference="none", advanced=True, allow_warnings=False
    )
    problems = []
    for result in report.subjects(rdflib.RDF.type, SH.ValidationResult):
        node = str(report.value(result, SH.focusNode)).removeprefix(PLACEHOLDER_BASE)
        node = node.removeprefix(BASE_URL)
        path = str(report.value(result, SH.resultPath))
        if (node, path) not in DCAT_AP_EXCEPTIONS:
            problems.append((str(report.value(result, SH.resultSeverity)), node, path))
    return sorted(problems), text


BASE_URL = "https://data.example.org/published/"


def test_the_catalogue_passes_the_dcat_ap_3_shapes_recommended_ones_included(sample_release):
    layout = sample_release
    registry = load_registry()
    written = to_graph(json.loads(layout.catalog("jsonld").read_text()))
    turtle = rdflib.Graph().parse(
        data=layout.catalog("ttl").read_text(), format="turtle", publicID=PLACEHOLDER_BASE
    )
    for graph in (written, turtle):
        problems, text = dcat_ap_problems(graph)
        assert problems == [], text

    # The same release behind a base URL, its car parks with positions: landing pages, and the
    # box around the devices instead of the GSS code.
    pointer = json.loads(layout.latest_pointer.read_text())
    release = Release(
        pointer["release"],
        layout.releases / pointer["release"],
        datetime.fromisoformat(pointer["published_at"]),
        tuple(pointer["datasets"]),
    )
    birmingham = registry.councils["birmingham"]
    placed = birmingham.model_copy(
        update={
            "devices": tuple(
                d.model_copy(update={"lat": 52.47 + i / 1000, "lon": -1.90 - i / 1000})
                for i, d in enumerate(birmingham.devices)
            )
        }
    )
    councils = {**registry.councils, "birmingham": placed}
    graph = to_graph(build_catalog(layout, release, BASE_URL, councils), BASE_URL)
    problems, text = dcat_ap_problems(graph)
    assert problems == [], text

    ds = {str(graph.value(d, DCTERMS.identifier)): d for d in graph.subjects(rdflib.RDF.type, DCAT.Dataset)}
    parking, air = ds["civicflow-parking-birmingham"], ds["civicflow-air_quality-aberdeen"]
    assert str(graph.value(parking, DCAT.landingPage)) == f"{BASE_URL}datasets/parking?council=birmingham"
    area = graph.value(parking, DCTERMS.spatial)
    assert len(birmingham.devices) == 30
    west, north = -1.929, 52.499  # the 30th car park's
    assert str(graph.value(area, DCAT.bbox)) == (
        f"POLYGON(({west} 52.47, -1.9 52.47, -1.9 {north}, {west} {north}, {west} 52.47))"
    )
    assert str(graph.value(area, DCAT.centroid)) == "POINT(-1.914500 52.484500)"
    assert str(graph.value(area, DCTERMS.isPartOf)) == f"{GSS}E08000025"
    assert str(graph.value(air, DCTERMS.spatial)) == f"{GSS}S12000033"
    for dataset, council in ((parking, "birmingham"), (air, "aberdeen")):
        contact = graph.value(dataset, DCAT.contactPoint)
        assert str(graph.value(contact, VCARD.hasEmail)) == f"mailto:open-data@{council}.invalid"
        publisher = graph.value(dataset, DCTERMS.publisher)
        assert str(graph.value(publisher, FOAF.name)) == registry.councils[council].name
        assert str(graph.value(publisher, DCTERMS.type)).endswith("/publishertype/LocalAuthority")
        for dist in graph.objects(dataset, DCAT.distribution):
            assert str(graph.value(dist, DCTERMS.description)).startswith(("Air quality", "Car park"))
    # The attribution stays each council's rights statement.
    statement = graph.value(air, DCTERMS.rights)
    assert str(graph.value(statement, rdflib.RDFS.label)) == SENSOR_COMMUNITY
    # A dataset keeps the time it was first released; the catalogue was written at the release.
    assert graph.value(air, DCTERMS.issued).toPython() == NOW
