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
import logging
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import rdflib

from civicflow.contract import DATASETS, LICENCE, Domain
from civicflow.publish.datapackage import archive_of
from civicflow.publish.datapackage import rights as rights_of
from civicflow.publish.devices import is_devices
from civicflow.registry import CouncilRegistry, council_title
from civicflow.warehouse.aggregates import DEFAULT_INTERVAL_S
from civicflow.warehouse.layout import Layout

if TYPE_CHECKING:
    from civicflow.publish.release import Release

log = logging.getLogger(__name__)

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dcatap": "http://data.europa.eu/r5r/",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "gsp": "http://www.opengis.net/ont/geosparql#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "spdx": "http://spdx.org/rdf/terms#",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
EU = "http://publications.europa.eu/resource/authority"
THEMES = {  # EU data theme vocabulary
    Domain.TRAFFIC: "TRAN",
    Domain.PARKING: "TRAN",
    Domain.AIR_QUALITY: "ENVI",
    Domain.WASTE: "ENVI",
}
THEME_LABELS = {"TRAN": "Transport", "ENVI": "Environment"}
FILE_TYPES = {"parquet": "PARQUET", "csv": "CSV"}  # EU file type vocabulary
FORMAT_NAMES = {"parquet": "Parquet", "csv": "CSV"}
KIND_NAMES = {"hourly": "Hourly", "daily": "Daily", "council_daily": "Council-wide daily"}
# ADMS licence types of the licences councils use (http://purl.org/adms/licencetype/<type>); a
# licence not listed here is published without a type.
LICENCE_TYPES = {
    "OGL-UK-3.0": ("Attribution",),
    "ODbL-1.0": ("Attribution", "ShareAlike"),
    "ODC-By-1.0": ("Attribution",),
    "PDDL-1.0": ("PublicDomain",),
    "CC-BY-4.0": ("Attribution",),
    "CC-BY-SA-4.0": ("Attribution", "ShareAlike"),
    "CC0-1.0": ("PublicDomain",),
}
LICENCE_TYPE_LABELS = {
    "Attribution": "Attribution",
    "ShareAlike": "Share-alike",
    "PublicDomain": "Public domain",
}
GSS = "http://statistics.data.gov.uk/id/statistical-geography/"
WKT = "gsp:wktLiteral"
# A release's files stay until `keep_releases` newer releases exist, which can be days: a link into
# one is temporary (the EU planned-availability vocabulary).
AVAILABILITY = (f"{EU}/planned-availability/TEMPORARY", "Temporary")
LANGUAGE = (f"{EU}/language/ENG", "English")
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


def _term(terms: dict, iri: str, kind: str, **props: object) -> dict:
    """A link to a term of a vocabulary, described once in the catalogue with the class DCAT-AP
    expects of it (the catalogue is validated without loading the vocabularies)."""
    terms.setdefault(iri, {"@id": iri, "@type": kind} | props)
    return _iri(iri)


def _concept(terms: dict, iri: str, label: str) -> dict:
    return _term(terms, iri, "skos:Concept", **{"skos:prefLabel": label})


def _licence(terms: dict, licence: Mapping) -> dict:
    """A licence as a `dct:LicenseDocument` with its title and its ADMS licence types."""
    types = [
        _concept(terms, f"http://purl.org/adms/licencetype/{t}", LICENCE_TYPE_LABELS[t])
        for t in LICENCE_TYPES.get(licence.get("name", ""), ())
    ]
    props: dict = {"rdfs:label": licence["title"]} if licence.get("title") else {}
    if types:
        props["dct:type"] = types
    return _term(terms, licence["path"], "dct:LicenseDocument", **props)


def _location(council: CouncilRegistry, domain: str, anchor: str, terms: dict) -> dict | None:
    """Where a council's dataset is: the box around its devices of that domain that have a position
    (rounded to 3 decimals for a citizen's, as published), else its area's GSS code; None: neither."""
    points = []
    for d in council.devices:
        if d.domain == domain and d.lat is not None and d.lon is not None:
            citizen = council.citizen_hosted if d.citizen_hosted is None else d.citizen_hosted
            digits = 3 if citizen else 6
            points.append((round(d.lon, digits), round(d.lat, digits)))
    if points:
        west, east = min(p[0] for p in points), max(p[0] for p in points)
        south, north = min(p[1] for p in points), max(p[1] for p in points)
        box = f"POLYGON(({west} {south}, {east} {south}, {east} {north}, {west} {north}, {west} {south}))"
        node = {
            "@id": anchor,
            "@type": "dct:Location",
            "dcat:bbox": _typed(box, WKT),
            "dcat:centroid": _typed(f"POINT({(west + east) / 2:.6f} {(south + north) / 2:.6f})", WKT),
        }
        if council.gss_code:
            node["dct:isPartOf"] = _iri(f"{GSS}{council.gss_code}")
        terms[anchor] = node
        return _iri(anchor)
    if council.gss_code:
        label = council.name or council_title(council.council)
        return _term(terms, f"{GSS}{council.gss_code}", "dct:Location", **{"rdfs:label": label})
    return None


def _contact(council: CouncilRegistry, anchor: str) -> dict | None:
    """A council's `[contact]` as a `vcard:Kind` (an organisation's mailbox, never a person's)."""
    contact = council.contact
    if contact is None:
        return None
    if contact.placeholder:
        log.warning(
            "council %s: the catalogue's contact %s is a placeholder; set [contact] in registry/%s.toml",
            council.council,
            contact.email,
            council.council,
        )
    node = {
        "@id": anchor,
        "@type": ["vcard:Kind", "vcard:Organization"],
        "vcard:fn": contact.name,
        "vcard:hasEmail": _iri(f"mailto:{contact.email}"),
    }
    if contact.url:
        node["vcard:hasURL"] = _iri(contact.url)
    return node


def _describe(dataset_title: str, name: str, resource: dict, kind: str | None, day: str | None) -> str:
    """A distribution's `dct:description`: what the file holds, of whom and when, in which format."""
    fmt = FORMAT_NAMES[resource["format"]]
    if resource.get("compression"):
        fmt = f"gzipped {fmt}"
    archive = archive_of(resource)
    if archive is not None:
        return (
            f"{dataset_title}: every reading of {name} in {archive['period']} "
            f"({archive['start']} to {archive['end']}) that passed the quality gate, as one {fmt} file."
        )
    if kind == "readings":
        return f"{dataset_title}: the readings of {name} on {day} that passed the quality gate, as {fmt}."
    kind_name = KIND_NAMES.get(kind or "", kind)
    return f"{dataset_title}: {kind_name} aggregates of {name}'s readings on {day}, as {fmt}."


def _issued_before(layout: Layout) -> dict[str, dict]:
    """The `dct:issued` of each node of the catalogue written before: a dataset keeps the time it
    was first released (the catalogue is rewritten with each release)."""
    path = layout.catalog("jsonld")
    try:
        nodes = json.loads(path.read_text(encoding="utf-8"))["@graph"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {n["@id"]: n["dct:issued"] for n in nodes if isinstance(n, dict) and "dct:issued" in n}


def smart_data_model_url(fiware_type: str) -> str:
    return f"https://smart-data-models.github.io/{SMART_DATA_MODELS[fiware_type]}/{fiware_type}/schema.json"


def _distribution(
    resource: dict, url: str, licence: dict, rights: str | None, description: str, terms: dict
) -> dict:
    fmt = resource["format"]
    algorithm, _, digest = resource["hash"].partition(":")
    assert algorithm == "sha256", resource["hash"]
    out = {
        "@id": url,
        "@type": "dcat:Distribution",
        "dct:title": resource["name"],
        "dct:description": description,
        "dcat:accessURL": _iri(url),
        "dcat:downloadURL": _iri(url),
        "dct:format": _term(terms, f"{EU}/file-type/{FILE_TYPES[fmt]}", "dct:MediaTypeOrExtent"),
        "dcat:mediaType": _term(terms, MEDIA_TYPES[fmt], "dct:MediaType"),
        "dcat:byteSize": _typed(resource["bytes"], "nonNegativeInteger"),
        "spdx:checksum": {
            "@type": "spdx:Checksum",
            "spdx:algorithm": _term(
                terms, "http://spdx.org/rdf/terms#checksumAlgorithm_sha256", "spdx:ChecksumAlgorithm"
            ),
            "spdx:checksumValue": _typed(digest, "hexBinary"),
        },
        "dct:license": _licence(terms, licence),
        "dcatap:availability": _concept(terms, *AVAILABILITY),
    }
    if resource.get("compression"):  # a gzipped CSV archive: CSV inside, gzip around it
        out["dcat:compressFormat"] = _term(terms, COMPRESS_FORMATS[resource["compression"]], "dct:MediaType")
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


def build_catalog(
    layout: Layout,
    release: Release,
    base_url: str | None = None,
    councils: Mapping[str, CouncilRegistry] | None = None,
) -> dict:
    """The JSON-LD catalogue of a release, from the data packages in its directory.

    `councils` are the councils' registry files: their name, publisher type, contact point and
    area (docs/publication.md, "Catalogue"). A council without one is named after its id.
    """
    root = base_url or ""
    release_url = f"{root}releases/{release.id}/"
    published_at = release.published_at.isoformat().replace("+00:00", "Z")
    issued = _issued_before(layout)
    datasets, agents, rights, contacts, terms = [], {}, {}, {}, {}
    places: dict[str, dict] = {}
    files = _manifest_files(release.path)
    for domain in release.datasets:
        dataset = DATASETS[Domain(domain)]
        package = json.loads((release.path / domain / "datapackage.json").read_text(encoding="utf-8"))
        by_council: dict[str, list[dict]] = defaultdict(list)
        day_of: dict[str, str] = {}
        what: dict[str, tuple[str, str]] = {}
        for resource in package["resources"]:
            if is_devices(resource):  # every council's devices in one file: no council's distribution
                continue
            archive = archive_of(resource)
            if archive is not None:  # not in the manifest, which lists the ledger's day files
                by_council[archive["council"]].append(resource)
                continue
            council, day, kind = _described(files, domain, resource["path"])
            by_council[council].append(resource)
            what[resource["path"]] = (kind, day)
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
            registered = (councils or {}).get(council)
            name = (registered.name if registered else None) or council_title(council)
            agent = f"{root}catalog.jsonld#council-{council}"
            agents[council] = {
                "@id": agent,
                "@type": "foaf:Agent",
                "foaf:name": name,
                "dct:identifier": council,
            }
            if registered is not None:
                kind = registered.publisher_type
                label = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", kind)
                agents[council]["dct:type"] = _concept(
                    terms, f"http://purl.org/adms/publishertype/{kind}", label
                )
                contact = _contact(registered, f"{root}catalog.jsonld#contact-{council}")
                if contact is not None:
                    contacts[council] = contact
            ident = f"{root}catalog.jsonld#{domain}-{council}"
            entry = {
                "@id": ident,
                "@type": "dcat:Dataset",
                "dct:identifier": f"civicflow-{domain}-{council}",
                "dct:title": f"{dataset.title}: {name}",
                "dct:description": f"{dataset.description} Published by {name} through Civicflow: "
                "readings that passed the quality gate, with hourly and daily aggregates.",
                "dcat:keyword": ["smart city", str(domain).replace("_", " "), council, *dataset.fiware_types],
                "dcat:theme": _concept(
                    terms, f"{EU}/data-theme/{THEMES[dataset.domain]}", THEME_LABELS[THEMES[dataset.domain]]
                ),
                "dct:publisher": _iri(agent),
                "dct:license": _licence(terms, licence),
                "dct:issued": issued.get(ident, _typed(published_at, "dateTime")),
                "dct:modified": _typed(published_at, "dateTime"),
                "dct:accrualPeriodicity": _term(terms, f"{EU}/frequency/CONT", "dct:Frequency"),
                "dcat:temporalResolution": _typed(_duration(RESOLUTION_S[dataset.domain]), "duration"),
                "dct:conformsTo": [
                    _term(terms, f"{release_url}{domain}/schema.json", "dct:Standard"),
                    *(_term(terms, smart_data_model_url(t), "dct:Standard") for t in dataset.fiware_types),
                ],
                "dcat:distribution": [
                    _distribution(
                        r,
                        f"{release_url}{domain}/{r['path']}",
                        licence,
                        statement,
                        _describe(dataset.title, name, r, *what.get(r["path"], (None, None))),
                        terms,
                    )
                    for r in resources
                ],
            }
            if council in contacts:
                entry["dcat:contactPoint"] = _iri(contacts[council]["@id"])
            place = None
            if registered is not None:
                place = _location(registered, domain, f"{root}catalog.jsonld#area-{domain}-{council}", terms)
            if place is not None:
                entry["dct:spatial"] = place
                places[place["@id"]] = place
            if base_url:  # the portal's page of the dataset, where base_url serves the portal
                entry["dcat:landingPage"] = _term(
                    terms, f"{base_url}datasets/{domain}?council={council}", "foaf:Document"
                )
            if statement:
                entry["dct:rights"] = _iri(statement)
            if days:
                entry["dct:temporal"] = _period(days[0], days[-1])
            datasets.append(entry)
    catalog = {
        "@id": f"{root}catalog.jsonld",
        "@type": "dcat:Catalog",
        "dct:title": "Civicflow open data",
        "dct:description": "Smart-city sensor readings published by councils through Civicflow: "
        "quality-checked Parquet and CSV with Frictionless data packages. Release "
        f"{release.id}.",
        "dct:publisher": _iri(f"{root}catalog.jsonld#civicflow"),
        # The portal's catalogue page: where base_url (else the catalogue's own folder) is served.
        "foaf:homepage": _term(terms, root or "./", "foaf:Document"),
        # The catalogue's own metadata is under the Open Government Licence.
        "dct:license": _licence(terms, LICENCE),
        "dct:language": _term(terms, LANGUAGE[0], "dct:LinguisticSystem", **{"rdfs:label": LANGUAGE[1]}),
        "dcat:themeTaxonomy": _term(
            terms, f"{EU}/data-theme", "skos:ConceptScheme", **{"dct:title": "Data theme"}
        ),
        "dct:issued": issued.get(f"{root}catalog.jsonld", _typed(published_at, "dateTime")),
        "dct:modified": _typed(published_at, "dateTime"),
        "dcat:dataset": [_iri(d["@id"]) for d in datasets],
    }
    if places:
        catalog["dct:spatial"] = [_iri(p) for p in sorted(places)]
    return {
        "@context": CONTEXT,
        "@graph": [
            catalog,
            {"@id": f"{root}catalog.jsonld#civicflow", "@type": "foaf:Agent", "foaf:name": "Civicflow"},
            *agents.values(),
            *(contacts[c] for c in sorted(contacts)),
            *(rights[c] for c in sorted(rights)),
            *datasets,
            *(terms[t] for t in sorted(terms)),
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
