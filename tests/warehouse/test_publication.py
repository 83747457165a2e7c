"""Release artifacts through the whole pipeline: files, data packages, catalogue, privacy, councils.

Readings are landed as raw segments, staged and put through the gate (`gate_and_publish`), and
what consumers get is read back through `data/published/latest`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rdflib
import rdflib.compare
from factories import LIMITS, land

from civicflow.contract import DATASETS, Domain, Zone
from civicflow.jobs.publication import gate_and_publish
from civicflow.publish import files as publish_module
from civicflow.publish.catalog import to_graph
from civicflow.publish.files import PublicationError, allowlist
from civicflow.publish.partition import publish_partition
from civicflow.registry import CouncilRegistry, build_registry
from civicflow.settings import PublishSettings
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
DAY = "2026-03-02"
FRICTIONLESS = str(Path(sys.executable).with_name("frictionless"))
DCAT = rdflib.Namespace("http://www.w3.org/ns/dcat#")
DCT = rdflib.Namespace("http://purl.org/dc/terms/")
SPDX = rdflib.Namespace("http://spdx.org/rdf/terms#")
FOAF = rdflib.Namespace("http://xmlns.com/foaf/0.1/")


def reading(council: str, domain: str, device: str, minute: int, **values) -> tuple[str, dict]:
    return (
        f"city/{council}/{domain}/{device}",
        {"observed_at": f"{DAY}T08:{minute:02d}:00Z", **values},
    )


def four_domains(council: str) -> list[tuple[str, dict]]:
    return [
        *(
            reading(council, "parking", f"{council}-p{i}", m, occupied_spots=10 + m, total_spots=100)
            for i in (1, 2)
            for m in (0, 30)
        ),
        *(reading(council, "traffic", f"{council}-t1", m, intensity=20 + m, lane_id=1) for m in (0, 5)),
        *(
            reading(council, "air_quality", f"{council}-a1", m, no2=30.5 + m, lat=57.14, lon=-2.1)
            for m in (0, 15)
        ),
        *(reading(council, "waste", f"{council}-b1", m, filling_level=0.5) for m in (0, 30)),
    ]


def publish(layout: Layout, con, messages, registry=None, now=NOW, licences=None, **settings):
    land(layout, messages)
    stage_segments(layout, con, LIMITS, registry=registry, now=now)
    return gate_and_publish(
        layout, con, now=now, licences=licences, registry=registry, publication=PublishSettings(**settings)
    )


def arrow_schema_of(schema: dict) -> pa.Schema:
    types = {
        "string": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
        "date": pa.date32(),
        "datetime": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema(
        [
            pa.field(
                f["name"], types[f["type"]], nullable=not f.get("constraints", {}).get("required", False)
            )
            for f in schema["fields"]
        ]
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_domains_data_package_passes_frictionless_validate_as_a_whole(wh, tmp_path):
    layout, con = wh
    result = publish(layout, con, four_domains("testtown"))
    assert result.published == 4
    for domain in DATASETS:
        package_path = layout.latest / str(domain) / "datapackage.json"
        run = subprocess.run([FRICTIONLESS, "validate", str(package_path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:]
        package = json.loads(package_path.read_text())
        assert package["profile"] == "data-package"
        formats = {(r["format"], r["profile"]) for r in package["resources"]}
        assert formats == {
            ("csv", "tabular-data-resource"),
            ("parquet", "data-resource"),
            ("geojson", "data-resource"),  # devices.geojson, the last resource
        }
        assert package["resources"].pop()["path"] == "devices.geojson"
        # Every resource names its kind's Table Schema file, one beside the package per kind.
        schemas = {
            name: json.loads((package_path.parent / name).read_text())
            for name in ("schema.json", *(f"schema-{k}.json" for k in ("hourly", "daily", "council_daily")))
        }
        for r in package["resources"]:
            kind = "readings" if r["path"].startswith(("council=", "archives/")) else r["path"].split("/")[1]
            assert r["schema"] == ("schema.json" if kind == "readings" else f"schema-{kind}.json"), r["path"]
        readings = next(r for r in package["resources"] if r["path"].startswith("council="))
        schema = schemas[readings["schema"]]
        assert schema["primaryKey"] == list(DATASETS[domain].natural_key)
        assert schema["missingValues"] == [""]
        assert [f["name"] for f in schema["fields"]] == list(allowlist(DATASETS[domain]))
        assert all("unit" in f for f in schema["fields"] if f["name"] in ("lat", "lon"))
        assert schemas["schema-hourly.json"]["primaryKey"][-1] == "hour"
        # Frictionless checks Parquet's bytes and hash but not its rows (it reads nulls as NaN):
        # its columns and types must be the schema's, and its rows those of its CSV twin.
        by_name = {r["name"]: r for r in package["resources"]}
        for r in package["resources"]:
            if r["format"] == "parquet":
                parquet = pq.read_table(package_path.parent / r["path"])
                assert parquet.schema == arrow_schema_of(schemas[r["schema"]]), r["path"]
                assert parquet.num_rows == by_name[r["name"] + "-csv"]["rows"] > 0

    # The check can fail: one changed byte in a released file and the package is invalid.
    copy = tmp_path / "tampered"
    subprocess.run(["cp", "-rL", str(layout.latest / "parking"), str(copy)], check=True)
    victim = next(copy.glob("council=*/date=*/*.csv"))
    victim.write_bytes(victim.read_bytes().replace(b"testtown", b"testtowm", 1))
    run = subprocess.run([FRICTIONLESS, "validate", str(copy / "datapackage.json")], capture_output=True)
    assert run.returncode != 0
    # Rows are checked against the schema file the resource names: a value below the schema's
    # minimum fails even with the package's bytes and hash updated to match.
    copy = tmp_path / "off-schema"
    subprocess.run(["cp", "-rL", str(layout.latest / "parking"), str(copy)], check=True)
    package = json.loads((copy / "datapackage.json").read_text())
    resource = next(r for r in package["resources"] if r["format"] == "csv" and r["schema"] == "schema.json")
    victim = copy / resource["path"]
    data = victim.read_bytes()
    assert b",10,100," in data
    victim.write_bytes(data.replace(b",10,100,", b",-5,100,", 1))
    resource["bytes"], resource["hash"] = victim.stat().st_size, f"sha256:{sha256(victim)}"
    (copy / "datapackage.json").write_text(json.dumps(package))
    run = subprocess.run(
        [FRICTIONLESS, "validate", str(copy / "datapackage.json")], capture_output=True, text=True
    )
    assert run.returncode != 0 and "constraint-error" in run.stdout, run.stdout[-3000:]


def test_parquet_is_sorted_by_device_and_a_device_filter_skips_row_groups(wh):
    layout, con = wh
    devices = ["dev-c", "dev-a", "dev-b"]
    n = 3000
    rows = pa.table(
        {
            "council": ["testtown"] * n,
            "device_id": [devices[i % 3] for i in range(n)],
            "observed_at": pa.array(
                [datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp() * 1e6 + (n - i) * 1e6 for i in range(n)],
                pa.float64(),
            )
            .cast(pa.int64())
            .cast(pa.timestamp("us", tz="UTC")),
            "occupied_spots": [i % 100 for i in range(n)],
            "total_spots": [100] * n,
            "segment_id": ["lineage-stays-behind"] * n,  # a staged column: not on the allowlist
        }
    )
    dataset = DATASETS[Domain.PARKING]
    for c in allowlist(dataset):
        if c not in rows.column_names:
            rows = rows.append_column(c, pa.nulls(n))
    files = publish_partition(
        con, layout, dataset, "testtown", date(2026, 3, 2), 1, rows, NOW, row_group_rows=500
    )
    [entry] = [f for f in files if (f["kind"], f["format"]) == ("readings", "parquet")]
    assert entry["rows"] == n
    path = layout.published_dataset("parking") / entry["path"]
    assert (entry["bytes"], entry["sha256"]) == (path.stat().st_size, sha256(path))
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 6
    col = meta.schema.names.index("device_id")
    stats = [(meta.row_group(i).column(col).statistics) for i in range(meta.num_row_groups)]
    assert all(s is not None and s.has_min_max for s in stats)
    skippable = [i for i, s in enumerate(stats) if not (s.min <= "dev-b" <= s.max)]
    assert len(skippable) == 4  # only the two groups holding dev-b need reading
    table = pq.read_table(path)
    assert table.column_names == list(allowlist(dataset))
    keys = list(zip(table["device_id"].to_pylist(), table["observed_at"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    filtered = pq.read_table(path, filters=[("device_id", "=", "dev-b")])
    assert filtered.num_rows == n // 3 and set(filtered["device_id"].to_pylist()) == {"dev-b"}
    assert b"lineage-stays-behind" not in path.read_bytes()


def test_a_written_file_with_a_column_off_the_allowlist_is_never_renamed_into_place(wh, monkeypatch):
    layout, con = wh
    dataset = DATASETS[Domain.WASTE]
    rows = pa.table({c: pa.array([None], pa.string()) for c in allowlist(dataset)})
    rows = rows.set_column(0, "council", pa.array(["t"])).set_column(1, "device_id", pa.array(["b"]))
    rows = rows.set_column(2, "observed_at", pa.array([NOW]))
    real = publish_module.write_parquet

    def leaky(table, path, row_group_rows=500):  # a defect that lets a staged column through
        real(table.append_column("msg_id", pa.array(["m-1"])), path, row_group_rows)

    monkeypatch.setattr(publish_module, "write_parquet", leaky)
    with pytest.raises(PublicationError, match="not allowed: \\['msg_id'\\]"):
        publish_partition(con, layout, dataset, "t", date(2026, 3, 2), 1, rows, NOW)
    assert not list(layout.zone(Zone.PUBLISHED).rglob("*.parquet"))
    assert con.execute("SELECT count(*) FROM published.releases").fetchone() == (0,)


PERSONAL = {
    "council": "citytown",
    "citizen_hosted": False,
    "devices": [
        {"device_id": "home-1", "domain": "air_quality", "citizen_hosted": True},
        {"device_id": "kerb-1", "domain": "air_quality"},
        {"device_id": "anpr-1", "domain": "traffic", "personal_fields": ["plate"]},
    ],
}
SECRETS = [b"AB12CDE", b"jane@example.org", b"57.1234", b"2.0987", b"msg-private-77"]


def test_extra_and_personal_fields_and_precise_citizen_positions_never_reach_published(wh):
    layout, con = wh
    registry = build_registry([CouncilRegistry.model_validate(PERSONAL)])
    messages = [
        reading(
            "citytown",
            "air_quality",
            "home-1",
            0,
            no2=20.0,
            lat=57.1234567,
            lon=-2.0987654,
            msg_id="msg-private-77",
        ),
        reading("citytown", "air_quality", "home-1", 15, no2=21.0, lat=57.1234567, lon=-2.0987654),
        reading("citytown", "air_quality", "kerb-1", 0, no2=22.0, lat=57.15, lon=-2.11),
        reading("citytown", "traffic", "anpr-1", 0, intensity=1, plate="AB12CDE"),
        reading("citytown", "traffic", "anpr-1", 5, intensity=2, owner_email="jane@example.org"),
        # Enough clean counts that two quarantined readings stay under the gate's quarantine share.
        *(reading("citytown", "traffic", "anpr-1", m, intensity=3) for m in range(10, 60)),
    ]
    result = publish(layout, con, messages, registry=registry)
    assert result.published == 2
    reasons = con.execute("SELECT reason, count(*) FROM quarantine.readings GROUP BY 1").fetchall()
    assert reasons == [("unknown_field", 2)]  # the plate and the e-mail never got past the contract

    air = pq.read_table(next(layout.latest.glob("air_quality/council=*/date=*/*.parquet"))).to_pylist()
    assert [(r["device_id"], r["lat"], r["lon"]) for r in air] == [
        ("home-1", 57.123, -2.099),  # citizen-hosted: about 100 m
        ("home-1", 57.123, -2.099),
        ("kerb-1", 57.15, -2.11),  # the council's own device keeps its position
    ]
    assert con.execute("SELECT DISTINCT lat FROM published.air_quality ORDER BY 1").fetchall() == [
        (57.123,),
        (57.15,),
    ]
    traffic = pq.read_table(next(layout.latest.glob("traffic/council=*/date=*/*.parquet")))
    assert traffic["intensity"].to_pylist() == [3] * 50
    assert traffic.column_names == list(allowlist(DATASETS[Domain.TRAFFIC]))

    # Every byte of every file under published/ (and the decoded rows of every Parquet file,
    # whose pages are compressed) is free of the personal values, extras and precise positions.
    files = [p for p in layout.zone(Zone.PUBLISHED).rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        content = path.read_bytes()
        if path.suffix == ".parquet":
            content += repr(pq.read_table(path).to_pylist()).encode()
            content += repr(pq.read_schema(path).names).encode()
        for secret in SECRETS:
            assert secret not in content, (path, secret)
        assert b"plate" not in content and b"owner_email" not in content and b"msg_id" not in content


ODBL = {
    "name": "ODbL-1.0",
    "path": "https://opendatacommons.org/licenses/odbl/1-0/",
    "title": "Open Data Commons Open Database License 1.0",
    "attribution": "Southtown citizen sensor network",
}


def test_each_council_publishes_only_its_own_rows_licence_and_catalogue_entries(wh):
    layout, con = wh
    result = publish(
        layout, con, four_domains("northtown") + four_domains("southtown"), licences={"southtown": ODBL}
    )
    assert result.published == 8
    tables = [p for p in layout.latest.glob("*/**/*") if p.suffix in (".parquet", ".csv")]
    # domains x councils x ((readings, 3 aggregates) x 2 formats, and the month's and year's Parquet)
    assert len(tables) == 4 * 2 * (4 * 2 + 2)
    for path in tables:
        council = next(part for part in path.parts if part.startswith("council=")).removeprefix("council=")
        rows = (
            pq.read_table(path, columns=["council"])
            if path.suffix == ".parquet"
            else duckdb.sql(f"SELECT council FROM read_csv('{path}')").to_arrow_table()
        )
        assert rows.num_rows > 0 and set(rows["council"].to_pylist()) == {council}, path

    graph = to_graph(json.loads(layout.catalog("jsonld").read_text()))
    datasets = set(graph.subjects(rdflib.RDF.type, DCAT.Dataset))
    assert len(datasets) == 4 * 2
    for ds in datasets:
        publisher = graph.value(ds, DCT.publisher)
        council = str(graph.value(publisher, DCT.identifier))
        assert (publisher, rdflib.RDF.type, FOAF.Agent) in graph
        licence = "odbl" if council == "southtown" else "open-government-licence"
        assert licence in str(graph.value(ds, DCT.license))
        dists = list(graph.objects(ds, DCAT.distribution))
        assert len(dists) == 8 + 4  # a day's files, and the month's and the year's archives
        for dist in dists:
            assert f"/council={council}/" in str(dist)
            assert licence in str(graph.value(dist, DCT.license))


def test_the_catalogue_describes_every_file_of_the_release_exactly(wh):
    layout, con = wh
    publish(layout, con, four_domains("testtown"))
    text = layout.catalog("jsonld").read_text()
    graph = to_graph(json.loads(text))
    turtle = rdflib.Graph().parse(
        data=layout.catalog("ttl").read_text(),
        format="turtle",
        publicID="http://civicflow.invalid/published/",
    )
    assert rdflib.compare.isomorphic(graph, turtle)
    [catalog] = graph.subjects(rdflib.RDF.type, DCAT.Catalog)
    assert len(list(graph.objects(catalog, DCAT.dataset))) == 4
    themes = {}
    for ds in graph.subjects(rdflib.RDF.type, DCAT.Dataset):
        domain = str(graph.value(ds, DCT.identifier)).split("-")[1]
        themes[domain] = str(graph.value(ds, DCAT.theme)).rsplit("/", 1)[1]
        assert str(graph.value(ds, DCT.accrualPeriodicity)).endswith("/frequency/CONT")
        resolution = graph.value(ds, DCAT.temporalResolution)
        assert resolution.datatype == rdflib.XSD.duration and str(resolution).startswith("PT")
        period = graph.value(ds, DCT.temporal)
        assert (str(graph.value(period, DCAT.startDate)), str(graph.value(period, DCAT.endDate))) == (
            DAY,
            DAY,
        )
        conforms = {str(o) for o in graph.objects(ds, DCT.conformsTo)}
        assert any(c.endswith(f"/{domain}/schema.json") for c in conforms)
        assert any(c.startswith("https://smart-data-models.github.io/dataModel.") for c in conforms)
        assert graph.value(ds, DCAT.keyword) is not None and graph.value(ds, DCT.title) is not None
        for dist in graph.objects(ds, DCAT.distribution):
            path = layout.zone(Zone.PUBLISHED) / str(dist).removeprefix("http://civicflow.invalid/published/")
            assert "/releases/" in str(dist) and path.is_file()
            assert int(graph.value(dist, DCAT.byteSize)) == path.stat().st_size
            checksum = graph.value(dist, SPDX.checksum)
            assert str(graph.value(checksum, SPDX.algorithm)).endswith("checksumAlgorithm_sha256")
            assert str(graph.value(checksum, SPDX.checksumValue)) == sha256(path)
            assert str(graph.value(dist, DCAT.mediaType)).startswith("https://www.iana.org/assignments/")
    assert themes == {"traffic": "TRAN", "parking": "TRAN", "air_quality": "ENVI", "waste": "ENVI"}


@pytest.mark.unit
@pytest.mark.parametrize("base_url", [None, "https://data.example.org/published/"])
def test_the_turtle_catalogue_is_the_json_ld_graph_whatever_the_strings(base_url):
    from civicflow.publish.catalog import CONTEXT, PLACEHOLDER_BASE, to_turtle

    root = base_url or ""
    catalog = {
        "@context": CONTEXT,
        "@graph": [
            {
                "@id": f"{root}catalog.jsonld#parking-x",
                "@type": "dcat:Dataset",
                "dct:title": 'Car parks: "quoted", back\\slash, new\nline, tab\t, café ✓',
                "dcat:keyword": ["smart city", "x"],
                "dct:license": {
                    "@id": "https://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/"
                },
                "dct:modified": {"@value": "2026-11-23T12:00:00Z", "@type": "xsd:dateTime"},
                "dct:temporal": {
                    "@type": "dct:PeriodOfTime",
                    "dcat:startDate": {"@value": "2016-10-04", "@type": "xsd:date"},
                },
                "dcat:distribution": [
                    {
                        "@id": f"{root}releases/000001-x/parking/council=x/date=2016-10-04/p.parquet",
                        "@type": "dcat:Distribution",
                        "dcat:byteSize": {"@value": "1234", "@type": "xsd:nonNegativeInteger"},
                        "spdx:checksum": {
                            "@type": "spdx:Checksum",
                            "spdx:checksumValue": {"@value": "ab" * 32, "@type": "xsd:hexBinary"},
                        },
                    }
                ],
            },
        ],
    }
    expected = to_graph(catalog, base_url)
    written = rdflib.Graph().parse(
        data=to_turtle(catalog, base_url), format="turtle", publicID=PLACEHOLDER_BASE
    )
    assert len(expected) == 15
    assert rdflib.compare.isomorphic(expected, written)
