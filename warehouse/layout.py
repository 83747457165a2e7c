"""Where each zone lives on disk. One name per zone: folder, DuckDB schema and Asset agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from civicflow.contract import Domain, Zone


@dataclass(frozen=True)
class Layout:
    """Paths under one data root (CIVICFLOW_DATA_ROOT, `data/` by default)."""

    root: Path

    def zone(self, zone: Zone) -> Path:
        return self.root / zone.value

    @property
    def raw(self) -> Path:
        return self.zone(Zone.RAW)

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse" / "civicflow.duckdb"

    @property
    def validations(self) -> Path:
        return self.root / "validations"

    def partition_dir(self, zone: Zone, domain: Domain | str, council: str, day: date) -> Path:
        return self.zone(zone) / str(domain) / f"council={council}" / f"date={day.isoformat()}"

    def staged_file(
        self, domain: Domain | str, council: str, day: date, name: str = "part-0.parquet"
    ) -> Path:
        """One of a staged partition's Parquet files (`staged.partitions.files` names them)."""
        return self.partition_dir(Zone.STAGED, domain, council, day) / name

    def published_dataset(self, domain: Domain | str) -> Path:
        """The publisher's working tree of a dataset: changes file by file, consumers never read it."""
        return self.zone(Zone.PUBLISHED) / str(domain)

    @property
    def releases(self) -> Path:
        """Immutable releases, `releases/<id>/<domain>/...` (publish/release.py)."""
        return self.zone(Zone.PUBLISHED) / "releases"

    @property
    def latest(self) -> Path:
        """Symlink to the current release: consumers' stable path is `published/latest/<domain>/...`."""
        return self.zone(Zone.PUBLISHED) / "latest"

    @property
    def latest_pointer(self) -> Path:
        """`latest.json`: the current release for consumers that cannot follow a symlink."""
        return self.zone(Zone.PUBLISHED) / "latest.json"

    def catalog(self, suffix: str = "jsonld") -> Path:
        """The DCAT-AP catalogue of the current release, `catalog.jsonld` or `catalog.ttl`."""
        return self.zone(Zone.PUBLISHED) / f"catalog.{suffix}"

    def quarantine_file(self, segment_id: str) -> Path:
        return self.zone(Zone.QUARANTINE) / "segments" / f"{segment_id}.parquet"
