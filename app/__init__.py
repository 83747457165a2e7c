"""The Civicflow application: the `civicflow` command and what it runs (demo, batch, status, serve).

The top layer: it reads settings and wires the stage packages together. Nothing imports it.
"""
