"""Fixtures every test package shares."""

from __future__ import annotations

import pytest

from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout


@pytest.fixture
def wh(tmp_path):
    """A data root under tmp_path and its warehouse, open for writing: (layout, connection)."""
    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    yield layout, con
    con.close()
