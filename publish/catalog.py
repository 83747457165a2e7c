"""The DCAT-AP catalogue of a release: one dcat:Dataset per domain per council.

Built from the release's own data packages, so it describes exactly the files of that release:
each council's dataset lists only that council's files (readings and aggregates, then its monthly
and yearly archives, each with the period it covers as `dct:temporal` and a gzipped CSV with
`dcat:compressFormat`), under the council's licence, with byte size and sha256, and the
attribution that licence asks for as the council's rights statement (`dct:rights`, a
`dct:RightsStatement` whose `rdfs:label` is the text its data packages give). Written as JSON-LD
(`catalog.jsonld`) and, through rdflib, as Turtle (`catalog.ttl`). Links are relative to
`data/published/` unless a base URL is given (`CIVICFLOW_PUBLISH__BASE_URL`, where that folder is
served), and point into the immutable release directory, so a catalogue never lists a checksum
its file does not have.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import rdflib

from civicflow.contract import DATASETS, Domain
from publish.datapackage import archive_of
from publish.datapackage import rights as rights_of
from warehouse.aggregates import DEFAULT_INTERVAL_S
from warehouse.layout import Layout

if TYPE_CHECKING:
    from publish.release import Release

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "spdx": "http://spdx.org/rdf/terms#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
EU = "http://publications.europa.eu/resource/authority"
THEMES = {  # EU data theme vocabulary
    Domain.TRAFFIC: "TRAN",
    Domain.PARKING: "TRAN",
    Domain.AIR_QUALITY: "ENVI",
    Domain.WASTE: "ENVI",
}
FILE_TYPES = {"parquet": "PARQUET", "csv": "CSV"}  # EU file type vocabulary
MEDIA_TYPES = {
    "parquet": "https://www.iana.org/assignments/media-types/application/vnd.apache.parquet",
    "csv": "https://www.iana.org/assignments/media-types/text/csv",
}
COMPRESS_FORMATS = {"gz": "https://www.iana.org/assignments/media-types/application/gzip"}
SMART_DATA_MODELS = {  # the FIWARE Smart Data Model each dataset follows
    "OffStreetParking": "dataModel.Parking",
    "ParkingSpot": "dataModel.Parking",
    "TrafficFlowObserved": "dataModel.Transportation",
    "AirQualityObserved": "dataModel.Environment",
    "WasteContainer": "dataModel.WasteManagement",
}
# How often a device reports, as published: traffic counters every 5 minutes (the contract's
# default interval), the others at the default interval of the coverage rule (docs/queries.md).
RESOLUTION_S = {Domain.TRAFFIC: 300, **DEFAULT_INTERVAL_S}
PARTITION_RE = re.compile(r"council=([^/]+)/date=(\d{4}-\d{2}-\d{2})/")
PLACEHOLDER_BASE = "http://civicflow.invalid/published/"
"""Resolves relative links while converting to Turtle; never written to a file."""


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"PT{seconds // 3600}H"
    if seconds % 60 == 0:
        return f"PT{seconds // 60}M"
    return f"PT{seconds}S"


def _typed(value: object, xsd: str) -> dict:
    return {"@value": str(value), "@type": f"xsd:{xsd}"}


def _iri(value: str) -> dict:
    return {"@id": value}


def smart_data_model_url(fiware_type: str) -> str:
    return f"https://smart-data-models.github.io/{SMART_DATA_MODELS[fiware_type]}/{fiware_type}/schema.json"


def _distribution(resource: dict, url: str, licence: dict, rights: str | None) -> dict:
    fmt = resource["format"]
    algorithm, _, digest = resource["hash"].partition(":")
    assert algorithm == "sha256", resource["hash"]
    out = {
        "@id": url,
        "@type": "dcat:Distribution",
        "dct:title": resource["name"],
        "dcat:accessURL": _iri(url),
        "dcat:downloadURL": _iri(url),
        "dct:format": _iri(f"{EU}/file-type/{FILE_TYPES[fmt]}"),
        "dcat:mediaType": _iri(MEDIA_TYPES[fmt]),
        "dcat:byteSize": _typed(resource["bytes"], "nonNegativeInteger"),
        "spdx:checksum": {
            "@type": "spdx:Checksum",
            "spdx:algorithm": _iri("http://spdx.org/rdf/terms#checksumAlgorithm_sha256"),
            "spdx:checksumValue": _typed(digest, "hexBinary"),
        },
        "dct:license": _iri(licence["path"]),
    }
    if resource.get("compression"):  # a gzipped CSV archive: CSV inside, gzip around it
        out["dcat:compressFormat"] = _iri(COMPRESS_FORMATS[resource["compression"]])
    archive = archive_of(resource)
    if archive is not None:  # a month's or a year's archive: the period it covers
        out["dct:temporal"] = _period(archive["start"], archive["end"])
    return out | ({"dct:rights": _iri(rights)} if rights else {})


def _period(start: str, end: str) -> dict:
    return {
        "@type": "dct:PeriodOfTime",
        "dcat:startDate": _typed(start, "date"),
        "dcat:endDate": _typed(end, "date"),
    }


def _manifest_files(release_dir: Path) -> dict[str, dict] | None:
    """The release's files by path, from its `manifest.json` (None for a release cut without one)."""
    path = release_dir / "manifest.json"
    if not path.is_file():
        return None
    return {f["path"]: f for f in json.loads(path.read_text(encoding="utf-8"))["files"]}


def _described(files: dict[str, dict] | None, domain: str, path: str) -> tuple[str, str, str]:
    """A file's council, date and kind, as the manifest records them.

    Releases cut before manifests existed are read from the path's `council=`/`date=` folders.
    """
    if files is not None:
        entry = files[f"{domain}/{path}"]
        return entry["council"], entry["date"], entry["kind"]
    match = PARTITION_RE.search(path)
    assert match is not None, path
    kind = path.split("/")[1] if path.startswith("aggregates/") else "readings"
    return match.group(1), match.group(2), kind


def build_catalog(layout: Layout, release: Release, base_url: str | None = None) -> dict:
    """The JSON-LD catalogue of a release, from the data packages in its directory."""
    root = base_url or ""
    release_url = f"{root}releases/{release.id}/"
    published_at = release.published_at.isoformat().replace("+00:00", "Z")
    datasets, agents, rights = [], {}, {}
    files = _manifest_files(release.path)
    for domain in release.datasets:
        dataset = DATASETS[Domain(domain)]
        package = json.loads((release.path / domain / "datapackage.json").read_text(encoding="utf-8"))
        by_council: dict[str, list[dict]] = defaultdict(list)
        day_of: dict[str, str] = {}
        for resource in package["resources"]:
            archive = archive_of(resource)
            if archive is not None:  # not in the manifest, which lists the ledger's day files
                by_council[archive["council"]].append(resource)
                continue
            council, day, kind = _described(files, domain, resource["path"])
            by_council[council].append(resource)
            if kind == "readings":
                day_of[resource["path"]] = day
        for council, resources in sorted(by_council.items()):
            licences = {json.dumps(rights_of(r), sort_keys=True) for r in resources}
            assert len(licences) == 1, f"{domain} {council} has resources under several licences"
            licence, attribution = json.loads(licences.pop())
            statement = None
            if attribution:
                # One rights statement per council: its datasets and distributions name it.
                statement = f"{root}catalog.jsonld#rights-{council}"
                rights[council] = {
                    "@id": statement,
                    "@type": "dct:RightsStatement",
                    "rdfs:label": attribution,
                }
            days = sorted(day_of[r["path"]] for r in resources if r["path"] in day_of)
            agent = f"{root}catalog.jsonld#council-{council}"
            agents[council] = {
                "@id": agent,
                "@type": "foaf:Agent",
                "foaf:name": council.replace("-", " ").replace("_", " ").title(),
                "dct:identifier": council,
            }
            entry = {
                "@id": f"{root}catalog.jsonld#{domain}-{council}",
                "@type": "dcat:Dataset",
                "dct:identifier": f"civicflow-{domain}-{council}",
                "dct:title": f"{dataset.title}: {agents[council]['foaf:name']}",
                "dct:description": f"{dataset.description} Published by {council} through Civicflow: "
                "readings that passed the quality gate, with hourly and daily aggregates.",
                "dcat:keyword": ["smart city", str(domain).replace("_", " "), council, *dataset.fiware_types],
                "dcat:theme": _iri(f"{EU}/data-theme/{THEMES[dataset.domain]}"),
                "dct:publisher": _iri(agent),
                "dct:license": _iri(licence["path"]),
                "dct:modified": _typed(published_at, "dateTime"),
                "dct:accrualPeriodicity": _iri(f"{EU}/frequency/CONT"),
                "dcat:temporalResolution": _typed(_duration(RESOLUTION_S[dataset.domain]), "duration"),
                "dct:conformsTo": [
                    _iri(f"{release_url}{domain}/schema.json"),
                    *(_iri(smart_data_model_url(t)) for t in dataset.fiware_types),
                ],
                "dcat:distribution": [
                    _distribution(r, f"{release_url}{domain}/{r['path']}", licence, statement)
                    for r in resources
                ],
            }
            if statement:
                entry["dct:rights"] = _iri(statement)
            if days:
                entry["dct:temporal"] = _period(days[0], days[-1])
            datasets.append(entry)
    return {
        "@context": CONTEXT,
        "@graph": [
            {
                "@id": f"{root}catalog.jsonld",
                "@type": "dcat:Catalog",
                "dct:title": "Civicflow open data",
                "dct:description": "Smart-city sensor readings published by councils through Civicflow: "
                "quality-checked Parquet and CSV with Frictionless data packages. Release "
                f"{release.id}.",
                "dct:publisher": _iri(f"{root}catalog.jsonld#civicflow"),
                "dct:modified": _typed(published_at, "dateTime"),
                "dcat:dataset": [_iri(d["@id"]) for d in datasets],
            },
            {"@id": f"{root}catalog.jsonld#civicflow", "@type": "foaf:Agent", "foaf:name": "Civicflow"},
            *agents.values(),
            *(rights[c] for c in sorted(rights)),
            *datasets,
        ],
    }


def to_graph(catalog: dict, base_url: str | None = None) -> rdflib.Graph:
    """Parse the JSON-LD catalogue into RDF (relative links resolved against `base_url`)."""
    return rdflib.Graph().parse(
        data=json.dumps(catalog), format="json-ld", publicID=base_url or PLACEHOLDER_BASE
    )


def to_turtle(catalog: dict, base_url: str | None = None) -> str:
    """The catalogue in Turtle, written straight from its JSON-LD nodes.

    rdflib's JSON-LD parser and Turtle serializer take about 2.5 ms per distribution, which made
    the catalogue the slowest part of every release (minutes at a year of a few councils' files).
    The catalogue has one fixed shape (`build_catalog`), so it is written here in one pass:
    subjects and objects as the JSON-LD names them (relative links stay relative to
    `data/published/`, as in the JSON-LD, unless a base URL made them absolute), prefixes from
    the JSON-LD context. tests/warehouse/test_publication.py checks that rdflib reads the same
    graph from this Turtle as from the JSON-LD.
    """
    prefixes = catalog["@context"]
    out = [f"@prefix {name}: <{iri}> ." for name, iri in prefixes.items()]
    out.append("")
    for node in catalog["@graph"]:
        _turtle_node(node, prefixes, out)
    return "\n".join(out) + "\n"


def _turtle_node(node: dict, prefixes: dict, out: list[str]) -> None:
    """A node's statements (and, after them, those of the nodes it embeds with an @id)."""
    embedded: list[dict] = []
    lines = _turtle_predicates(node, prefixes, embedded)
    out.append(f"{_turtle_iri(node['@id'], prefixes)}\n    " + " ;\n    ".join(lines) + " .\n")
    for child in embedded:
        _turtle_node(child, prefixes, out)


def _turtle_predicates(node: dict, prefixes: dict, embedded: list[dict]) -> list[str]:
    lines = []
    types = node.get("@type")
    if types:
        types = types if isinstance(types, list) else [types]
        lines.append("a " + ", ".join(_turtle_curie(t, prefixes) for t in types))
    for key, value in node.items():
        if key.startswith("@"):
            continue
        values = value if isinstance(value, list) else [value]
        objects = ", ".join(_turtle_object(v, prefixes, embedded) for v in values)
        lines.append(f"{_turtle_curie(key, prefixes)} {objects}")
    return lines


def _turtle_object(value: object, prefixes: dict, embedded: list[dict]) -> str:
    if isinstance(value, dict):
        if "@value" in value:
            literal = _turtle_string(str(value["@value"]))
            kind = value.get("@type")
            return f"{literal}^^{_turtle_curie(kind, prefixes)}" if kind else literal
        if "@id" in value:
            if len(value) > 1:  # a node described here: its statements follow its parent's
                embedded.append(value)
            return _turtle_iri(value["@id"], prefixes)
        inner = _turtle_predicates(value, prefixes, embedded)  # a blank node
        return "[ " + " ; ".join(inner) + " ]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return _turtle_string(str(value))


def _turtle_curie(name: str, prefixes: dict) -> str:
    prefix, _, local = name.partition(":")
    if prefix in prefixes and local and all(c.isalnum() or c in "_-." for c in local):
        return name
    return _turtle_iri(name, prefixes)


def _turtle_iri(iri: str, prefixes: dict) -> str:
    prefix, _, local = iri.partition(":")
    if prefix in prefixes and not local.startswith("//"):
        iri = prefixes[prefix] + local  # a compact IRI, as JSON-LD expands it
    escaped = "".join(c if c not in '<>"{}|^`\\ ' and ord(c) > 0x20 else f"%{ord(c):02X}" for c in iri)
    return f"<{escaped}>"


def _turtle_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
