"""A dataset's Frictionless data package, rebuilt from the publication ledger.

`data/published/<domain>/datapackage.json` lists every published file of the dataset (readings
and aggregates, Parquet and CSV) with its byte size and sha256, as the ledger recorded it when the
file was written: nothing is read back out of paths. Every resource of a kind shares one Table
Schema file beside the package (`schema.json` for the readings, `schema-<kind>.json` for an
aggregate), referenced by path, so the package grows by a few hundred bytes per file rather than
by a whole schema.

Licences and attribution: a council's files are under the Open Government Licence, attributed with
the licence's statement, unless its registry file names another licence, attribution or source.
Those councils' resources carry their own `licenses` (name, path, title) and a `sources` entry whose
title is the attribution text and whose path is where the data comes from. The package lists every
licence used and, after the gateways, every attribution as a source. `rights` reads them back.

Archives: after each council's files, the package lists its monthly and yearly archives of the
readings (publish/archives.py), brought up to date here: a Parquet `file` resource and a gzipped
CSV `tabular-data-resource` (`compression: gz`) per period, each with `bytes` and `hash` of the
bytes as stored and a `civicflow.archive` object naming its council, period and days.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import duckdb

from civicflow import __version__
from civicflow.contract import CONTRACT_VERSION, LICENCE, OGL_ATTRIBUTION, Dataset
from civicflow.publish.archives import write_archives
from civicflow.publish.devices import devices_resource, write_devices
from civicflow.publish.files import MEDIA_TYPES, columns_schema, replace_into_place, table_schema
from civicflow.publish.partition import READINGS
from civicflow.registry import CouncilRegistry, build_registry
from civicflow.warehouse.aggregates import KINDS, columns, primary_key
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import publications


def schema_file(kind: str) -> str:
    """The Table Schema file of a kind of table, relative to the dataset's folder."""
    return "schema.json" if kind == READINGS else f"schema-{kind}.json"


def kind_schema(dataset: Dataset, kind: str) -> dict:
    if kind == READINGS:
        return table_schema(dataset)
    return columns_schema(columns(dataset, kind), primary_key(dataset, kind))


def resource_name(*parts: str) -> str:
    """A Frictionless resource name (lower case, digits, `-._/`): `air_quality` becomes `air-quality`."""
    return "-".join(parts).lower().replace("_", "-")


def _profiled(resource: dict) -> dict:
    """Declare what Frictionless can check of a resource.

    CSV is a `tabular-data-resource`: its rows are validated against the Table Schema. Parquet
    keeps the same schema for consumers but is declared a plain `data-resource` of type `file`:
    Frictionless reads Parquet through pyarrow without counting bytes, so as a table its `bytes`
    and `hash` could never be checked; as a file they are (and `rows`, which a file has not, is
    left to the CSV twin, which carries the same rows).
    """
    out = {k: v for k, v in resource.items() if k not in ("profile", "type")}
    if resource["format"] == "csv":
        return out | {"profile": "tabular-data-resource"}
    return {k: v for k, v in out.items() if k != "rows"} | {"profile": "data-resource", "type": "file"}


def _file(parts: list[str], entry: Mapping, kind: str) -> dict:
    """A published file's resource: name, path, format, media type, size, hash, rows and schema."""
    fmt = entry["format"]
    resource = {
        "name": resource_name(*parts) + ("" if fmt == "parquet" else "-csv"),
        "path": entry["path"],
        "format": fmt,
        "mediatype": MEDIA_TYPES[fmt],
        "bytes": entry["bytes"],
        "hash": f"sha256:{entry['sha256']}",
        "rows": entry["rows"],
        "schema": schema_file(kind),
    }
    if fmt == "csv":
        resource["encoding"] = "utf-8"
    return resource


def file_resource(domain: str, council: str, day: str, entry: dict) -> dict:
    """The data package resource of one file the ledger lists."""
    kind = entry["kind"]
    parts = [domain] + ([] if kind == READINGS else [kind]) + [council, day]
    return _profiled(_file(parts, entry, kind))


def archive_resource(domain: str, entry: dict) -> dict:
    """The data package resource of one archive (`civicflow.publish.archives.write_archives`' entry)."""
    resource = _file([domain, entry["council"], entry["period"]], entry, READINGS)
    if entry["format"] == "csv":  # before its encoding, as archives have always listed them
        resource = {
            **{k: v for k, v in resource.items() if k != "encoding"},
            "compression": "gz",
            "encoding": "utf-8",
        }
    resource["civicflow"] = {
        "archive": "month" if len(entry["period"]) == 7 else "year",
        "council": entry["council"],
        "period": entry["period"],
        "start": entry["start"],
        "end": entry["end"],
        "days": entry["days"],
    }
    return _profiled(resource)


def archive_of(resource: Mapping) -> dict | None:
    """An archive resource's `civicflow.archive` description (None: a day's file)."""
    extra = resource.get("civicflow")
    return extra if isinstance(extra, dict) and "archive" in extra else None


def licence_object(licence: Mapping) -> dict:
    """A licence as a Frictionless `licenses` entry: its `name`, `path` and `title`."""
    return {k: licence[k] for k in ("name", "path", "title")}


def attribution_source(licence: Mapping) -> dict | None:
    """The `sources` entry that carries the attribution files under `licence` must give.

    Its `title` is the attribution text: the council's own (registry `attribution`), else, under the
    Open Government Licence, the licence's statement. Its `path` is where the data comes from
    (registry `source`), else, for that statement, the licence. None: nothing to attribute.
    """
    text = licence.get("attribution")
    if not text and licence.get("name") == LICENCE["name"]:
        text = OGL_ATTRIBUTION
    if not text:
        return None
    path = licence.get("source") or (licence["path"] if text == OGL_ATTRIBUTION else None)
    return {"title": text} | ({"path": path} if path else {})


def rights(resource: Mapping) -> tuple[dict, str | None]:
    """A resource's licence and the attribution it must be given, as `write_datapackage` wrote them.

    A resource with no `licenses` of its own is under the Open Government Licence with the licence's
    statement; one with its own carries the attribution as the title of its first `sources` entry.
    The catalogue and the portal read them here, so they always read what the packages say.
    """
    licences = resource.get("licenses")
    if not licences:
        return dict(LICENCE), OGL_ATTRIBUTION
    sources = resource.get("sources") or []
    if sources and sources[0].get("title"):
        return licences[0], sources[0]["title"]
    return licences[0], OGL_ATTRIBUTION if licences[0].get("name") == LICENCE["name"] else None


def _licensed(resource: dict, licence: dict | None) -> dict:
    """A council's resource under its own licence and attribution (None: the package's default)."""
    if licence is None:
        return resource
    out = resource | {"licenses": [licence_object(licence)]}
    source = attribution_source(licence)
    if source is not None:
        out["sources"] = [source]
    return out


def write_datapackage(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    dataset: Dataset,
    licences: Mapping[str, dict] | None = None,
    councils: Mapping[str, CouncilRegistry] | None = None,
) -> Path:
    """Rebuild `datapackage.json` of a dataset, and its Table Schema files, from the ledger.

    The dataset's monthly and yearly archives are brought up to date first and listed after each
    council's files (publish/archives.py).

    `licences` maps a council to the licence its data must carry when that is not the Open
    Government Licence (citizen-science data under ODbL, say). Those councils' resources, and the
    aggregates built from them, name their own licence; the package lists every licence used.

    Last, the dataset's `devices.geojson` (publish/devices.py), with `councils`' registry files for
    its models, reporting intervals and citizen-hosted devices.
    """
    licences = licences or {}
    ledger = publications(con, dataset.domain.value)
    by_council: dict[str, list[dict]] = {}
    for kind in (READINGS, *KINDS):
        for pub in ledger:
            licence = licences.get(pub.ref.council)
            for entry in pub.files["files"]:
                if entry["kind"] == kind:
                    resource = file_resource(
                        dataset.domain.value, pub.ref.council, pub.ref.event_date.isoformat(), entry
                    )
                    by_council.setdefault(pub.ref.council, []).append(_licensed(resource, licence))
    folder = layout.published_dataset(dataset.domain)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in write_archives(folder, dataset, ledger):
        resource = archive_resource(dataset.domain.value, entry)
        by_council[entry["council"]].append(_licensed(resource, licences.get(entry["council"])))
    for kind in (READINGS, *KINDS):
        _write_json(folder / schema_file(kind), kind_schema(dataset, kind), indent=2)
    # One package per council, beside the dataset's: a consumer of one council's data reads only
    # that council's metadata (a few hundred bytes per file), and all of them share the schemas.
    for council, resources in by_council.items():
        _write_json(
            folder / council_package_file(council),
            _package(dataset, resources, [council], licences, name=f"civicflow-{dataset.domain}-{council}"),
        )
    everything = [r for council in sorted(by_council) for r in by_council[council]]
    everything.sort(key=lambda r: _KIND_ORDER[_kind_of(r)])
    # Last, the devices and where they are (publish/devices.py): `councils` gives their models,
    # reporting intervals and which are citizen-hosted.
    registry = build_registry(list(councils.values())) if councils else None
    devices = devices_resource(dataset.domain.value, write_devices(con, folder, dataset, registry))
    owners = {json.dumps(licences.get(c), sort_keys=True) for c in by_council}
    if len(owners) == 1:  # every council's data under one licence: the listing is under it too
        devices = _licensed(devices, licences.get(next(iter(by_council))))
    everything.append(devices)
    path = folder / "datapackage.json"
    _write_json(path, _package(dataset, everything, sorted(by_council), licences), indent=2)
    return path


def council_package_file(council: str) -> str:
    """A council's data package of a dataset, beside the dataset's `datapackage.json`."""
    return f"{council}.package.json"


_KIND_ORDER = {k: i for i, k in enumerate((READINGS, *KINDS))}


def _kind_of(resource: dict) -> str:
    schema = resource["schema"]
    return READINGS if schema == "schema.json" else schema.removeprefix("schema-").removesuffix(".json")


def _package(
    dataset: Dataset,
    resources: list[dict],
    councils: list[str],
    licences: Mapping[str, dict],
    name: str | None = None,
) -> dict:
    default = any(c not in licences for c in councils)
    used = {LICENCE["name"]: LICENCE} if default else {}
    # Every attribution the package's files must give, each once: the Open Government Licence's
    # statement for the councils under it by default, then each other council's.
    attributions = [attribution_source(LICENCE)] if default else []
    for council in councils:
        if (licence := licences.get(council)) is not None:
            used[licence["name"]] = licence_object(licence)
            source = attribution_source(licence)
            if source is not None and source not in attributions:
                attributions.append(source)
    return {
        # Not `tabular-data-package`: that profile requires every resource to be tabular, and the
        # Parquet files are declared as files (see _profiled).
        "profile": "data-package",
        "name": name or f"civicflow-{dataset.domain}",
        "title": dataset.title,
        "description": dataset.description,
        "version": f"contract-{CONTRACT_VERSION}",
        "licenses": list(used.values()) or [LICENCE],
        "keywords": ["smart city", str(dataset.domain), *dataset.fiware_types],
        "sources": [
            {"title": "Council sensor gateways, via Civicflow", "path": "docs/mqtt-contract.md"},
            *attributions,
        ],
        "civicflow": {"version": __version__, "fiware_types": list(dataset.fiware_types)},
        "resources": resources,
    }


def _write_json(path: Path, doc: dict, indent: int | None = None) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=indent) + "\n", encoding="utf-8")
    replace_into_place(tmp, path)
