"""Civicflow's DAGs: wiring only, each task calls one job in `jobs`.

A package so that the import contracts in pyproject.toml check these files too. The DAG processor
loads each file here by path; this one defines no DAG, and its heuristic skips it.
"""
