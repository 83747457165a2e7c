"""Warehouse: the DuckDB database, the Parquet zone layout and publication."""
