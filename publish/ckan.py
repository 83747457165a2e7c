"""Optional push of a release's catalogue to a CKAN portal, through CKAN's Action API.

Each catalogue dataset (a domain of one council) becomes a CKAN package named by its identifier,
`civicflow-<domain>-<council>`, under the council's licence mapped to a CKAN licence id, and each
distribution a resource linking to the file's stable path under `latest/` (CKAN holds the links,
Civicflow the files). The attribution the licence asks for (the catalogue's rights statement, which
is what `civicflow.publish.datapackage.rights` reads from the data packages) is the package's `attribution`
extra and ends its notes and every resource's description, so whoever reuses the data from CKAN
sees it. A push is idempotent: `package_show` decides between `package_create` and
`package_patch`, and a resource is created when its name is new and patched only when its
checksum changed. The API key goes in the Authorization header and is never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from civicflow.errors import TerminalError, TransientError

log = logging.getLogger(__name__)

CKAN_LICENCES = (  # licence URL (as the registry names it) -> CKAN's default licence ids
    ("nationalarchives.gov.uk/doc/open-government-licence", "uk-ogl"),
    ("opendatacommons.org/licenses/odbl", "odc-odbl"),
    ("opendatacommons.org/licenses/by", "odc-by"),
    ("opendatacommons.org/licenses/pddl", "odc-pddl"),
    ("creativecommons.org/licenses/by-sa/", "cc-by-sa"),
    ("creativecommons.org/licenses/by/", "cc-by"),
    ("creativecommons.org/publicdomain/zero/", "cc-zero"),
)
FORMATS = {"PARQUET": "Parquet", "CSV": "CSV"}


def ckan_licence_id(licence_url: str) -> str:
    """CKAN's id for a licence; `other-open` for an open licence CKAN does not list."""
    return next((ckan for part, ckan in CKAN_LICENCES if part in licence_url), "other-open")


@dataclass
class PushResult:
    created: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    resources_created: int = 0
    resources_patched: int = 0


def _value(node: object) -> str:
    return node["@value"] if isinstance(node, dict) and "@value" in node else str(node)


def _attributed(text: str, attribution: str | None) -> str:
    return f"{text}\n\nAttribution: {attribution}" if attribution else text


def packages_from_catalog(
    catalog: dict, release_id: str, base_url: str, organization: str | None
) -> list[dict]:
    """CKAN package dicts (resources included) for every dataset of a catalogue."""
    graph = catalog["@graph"]
    nodes = {n["@id"]: n for n in graph if isinstance(n, dict) and "@id" in n}

    def label(ref: dict | None) -> str | None:
        return (
            _value(nodes[ref["@id"]]["rdfs:label"])
            if ref and "rdfs:label" in nodes.get(ref["@id"], {})
            else None
        )

    release_prefix = f"{base_url}releases/{release_id}/"
    packages = []
    for ds in (n for n in graph if n["@type"] == "dcat:Dataset"):
        attribution = label(ds.get("dct:rights"))
        licence_url = ds["dct:license"]["@id"]
        resources = []
        for dist in ds["dcat:distribution"]:
            url = dist["dcat:downloadURL"]["@id"]
            if not url.startswith(release_prefix):
                raise TerminalError(f"catalogue link {url} is not under {release_prefix}")
            file_type = dist["dct:format"]["@id"].rsplit("/", 1)[-1]
            resources.append(
                {
                    "name": dist["dct:title"],
                    "description": _attributed(
                        dist["dct:description"], label(dist.get("dct:rights")) or attribution
                    ),
                    "url": f"{base_url}latest/{url.removeprefix(release_prefix)}",
                    "format": FORMATS[file_type],
                    # A gzipped CSV archive downloads as gzip: CKAN's mimetype is what the link serves.
                    "mimetype": (dist.get("dcat:compressFormat") or dist["dcat:mediaType"])["@id"].split(
                        "/media-types/", 1
                    )[1],
                    "size": int(_value(dist["dcat:byteSize"])),
                    "hash": "sha256:" + _value(dist["spdx:checksum"]["spdx:checksumValue"]),
                }
            )
        package = {
            "name": ds["dct:identifier"],
            "title": ds["dct:title"],
            "notes": _attributed(ds["dct:description"], attribution),
            "license_id": ckan_licence_id(licence_url),
            "tags": [{"name": k} for k in ds["dcat:keyword"]],
            # CKAN names the licence by its id; its title and link, and the attribution, are extras
            # (CKAN drops fields its schema does not know).
            "extras": [
                {"key": "licence", "value": label(ds["dct:license"]) or licence_url},
                {"key": "licence_url", "value": licence_url},
                *([{"key": "attribution", "value": attribution}] if attribution else []),
            ],
            "resources": resources,
        }
        if organization:
            package["owner_org"] = organization
        packages.append(package)
    return packages


class CkanClient:
    """The few Action API calls a push needs. `transport` lets a test route calls without a network."""

    def __init__(self, url: str, api_key: SecretStr, timeout_s: float = 30.0, transport=None) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/api/3/action/",
            headers={"Authorization": api_key.get_secret_value()},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def call(self, action: str, payload: dict) -> dict | None:
        """POST one action; None when CKAN answers Not Found (for package_show)."""
        try:
            response = self._http.post(action, json=payload)
        except httpx.TransportError as exc:
            raise TransientError(f"CKAN {action} failed ({type(exc).__name__}); retry the publish") from exc
        if response.status_code == 404 and action.endswith("_show"):
            return None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"CKAN {action} answered {response.status_code}; retry the publish")
        body = response.json() if response.content else {}
        if response.status_code >= 400 or not body.get("success"):
            raise TerminalError(
                f"CKAN refused {action} for {payload.get('name') or payload.get('id')}: "
                f"{response.status_code} {body.get('error')}; check the CKAN settings and organization"
            )
        return body["result"]


def push_catalog(client: CkanClient, packages: list[dict]) -> PushResult:
    """Create or update each package and its resources."""
    result = PushResult()
    for package in packages:
        resources = package["resources"]
        metadata = {k: v for k, v in package.items() if k != "resources"}
        existing = client.call("package_show", {"id": package["name"]})
        if existing is None:
            created = client.call("package_create", metadata)
            package_id, current = created["id"], {}
            result.created.append(package["name"])
        else:
            client.call("package_patch", {"id": existing["id"], **metadata})
            package_id = existing["id"]
            current = {r["name"]: r for r in existing.get("resources", [])}
            result.patched.append(package["name"])
        for resource in resources:
            old = current.get(resource["name"])
            if old is None:
                client.call("resource_create", {"package_id": package_id, **resource})
                result.resources_created += 1
            elif any(old.get(k) != resource[k] for k in ("hash", "url", "description")):
                client.call("resource_patch", {"id": old["id"], **resource})
                result.resources_patched += 1
    log.info(
        "CKAN: %d packages created, %d updated; %d resources created, %d updated",
        len(result.created),
        len(result.patched),
        result.resources_created,
        result.resources_patched,
    )
    return result
