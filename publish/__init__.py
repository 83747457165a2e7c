"""The publish stage: what the gate lets through becomes open data.

Files (Parquet and CSV, only the allowlist's columns), published rows and aggregates, the ledger
row (`partition.py`); data packages from the ledger (`datapackage.py`); releases with a manifest,
`latest` switched in one step, the DCAT-AP catalogue and an optional CKAN push (`release.py`,
`catalog.py`, `ckan.py`). It decides nothing: the gate's decisions come in as data.
"""
