"""Great Expectations Data Docs for every validation, kept beside its report.

The gate runs with an ephemeral Data Context (no stores on disk), so it does not build a Data Docs
site; it renders each validation result to one HTML page with GX's own renderer and page view, the
ones a filesystem Data Docs site uses. The page is written to
`data/validations/<domain>/council=<c>/date=<d>/v<version>/index.html`, next to the JSON report
`v<version>.json`. Like GX's site pages, it loads Bootstrap and its other styles from public CDNs.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.render.renderer import ValidationResultsPageRenderer
from great_expectations.render.view import DefaultJinjaPageView

from warehouse.layout import Layout


def validation_dir(layout: Layout, domain: str, council: str, day: date) -> Path:
    """Where a partition's validation reports and Data Docs live."""
    return layout.validations / domain / f"council={council}" / f"date={day.isoformat()}"


def data_docs_path(layout: Layout, domain: str, council: str, day: date, version: int) -> Path:
    return validation_dir(layout, domain, council, day) / f"v{version}" / "index.html"


def write_data_docs(result: ExpectationSuiteValidationResult, path: Path) -> Path:
    """Render a validation result as a Data Docs page at `path` (written then renamed into place)."""
    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
