"""Data Docs: one HTML page per judged partition version, rendered by Civicflow from its report.

A partition's page says what the gate decided - passed, passed with warnings, published without
some devices, published on approval, or failed and held back - and why: every expectation of the
dataset's suite with its outcome, the failed rules and warnings with the rows they name, what is
held back, the measured metrics and the thresholds. It is rendered from the decision as recorded
(`published.validations`, so a partition that publishing held back says so), not from Great
Expectations' result, and it is written by the release step (`write_pages`) for every partition
the next release holds, beside the JSON report:

    data/validations/<domain>/data-docs.css
    data/validations/<domain>/council=<c>/date=<d>/v<version>.html

The release links each page into `<domain>/data-docs/council=<c>/date=<d>/v<version>.html` and the
stylesheet into `<domain>/data-docs/data-docs.css` (publish/release.py): the page names its
stylesheet by the relative path `../../data-docs.css`, which resolves to it in both places. A page
loads nothing else - no script, no font, no image, nothing from another host - so it reads the same
on a closed network, from a file, from the portal or from an object store.

Pages are public (they ship in releases), so they show what a consumer may know: rules, counts,
devices, metrics and thresholds, never the staged values a failure sampled (a held-back reading can
hold what was not published, a citizen's precise position say), an error's text or who approved
what. The JSON report beside the page keeps those for the operators (`civicflow release list`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cache
from html import escape
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from civicflow.contract import DATASETS, Domain
from civicflow.expectations.suites import QUALITY_COLUMN_NAMES, QUALITY_RULES, Severity, build_suite
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import GATE_ERROR, PartitionRef, held_back, pending

STYLESHEET = "data-docs.css"
"""The pages' stylesheet, two folders above each page (`<domain>/` in validations, `<domain>/data-docs/`
in a release)."""
STYLESHEET_HREF = f"../../{STYLESHEET}"

CSS = """\
body { font-family: system-ui, sans-serif; color: #1a1a1a; background: #fff; margin: 0 auto;
  max-width: 60rem; padding: 0 1rem 2rem; line-height: 1.5; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.site { color: #4a4a4a; margin-bottom: 0; }
.status { display: inline-block; font-size: 1.15rem; font-weight: 700; padding: .35rem .8rem;
  border: 2px solid; border-radius: .3rem; }
.status-passed { color: #0b5d1e; background: #e7f5ea; }
.status-warning { color: #6b4200; background: #fff4d6; }
.status-partial, .status-approved { color: #5b2c83; background: #f3ebfa; }
.status-failed { color: #9b1c1c; background: #fdeaea; }
dl.facts dt { float: left; clear: left; width: 15rem; font-weight: 600; }
dl.facts dd { margin: 0 0 .15rem 15.5rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid #767676; padding: .25rem .5rem; text-align: left; vertical-align: top;
  overflow-wrap: break-word; }
.scroll { overflow-x: auto; }
thead th { background: #f0f0f0; }
td.outcome-failed { color: #9b1c1c; font-weight: 700; }
td.outcome-warning { color: #6b4200; font-weight: 700; }
td.outcome-passed { color: #0b5d1e; }
code { font-family: ui-monospace, monospace; font-size: .95em; }
.muted { color: #4a4a4a; }
@media print { .status { border-width: 1px; } }
"""

_MEASURED = frozenset(r.name for r in QUALITY_RULES if not r.flags_rows or r.severity == Severity.BLOCKING)
"""Rules whose failure the report describes by the value measured against its threshold (as the gate
words it), not by the rows' values."""


@dataclass(frozen=True)
class Pages:
    """The Data Docs a release holds: each partition version's page, and each domain's stylesheet."""

    pages: dict[PartitionRef, Path]
    stylesheets: dict[str, Path]


def validation_dir(layout: Layout, domain: str, council: str, day: date) -> Path:
    """Where a partition's validation reports and Data Docs live."""
    return layout.validations / domain / f"council={council}" / f"date={day.isoformat()}"


def data_docs_path(layout: Layout, domain: str, council: str, day: date, version: int) -> Path:
    """A partition version's Data Docs page (written by `write_pages`)."""
    return validation_dir(layout, domain, council, day) / f"v{version}.html"


def stylesheet_path(layout: Layout, domain: str) -> Path:
    return layout.validations / domain / STYLESHEET


def status(report: Mapping[str, Any], published: bool) -> tuple[str, str]:
    """What the gate decided, as (kind, words): `passed`, `warning`, `partial`, `approved` or `failed`."""
    holds = report.get("holds") or []
    if not published or any(h.get("device_id") is None for h in holds):
        if any(GATE_ERROR in h.get("rules", []) for h in holds):
            return "failed", "Failed: held back (judging or publishing it raised an error)"
        return "failed", "Failed: held back"
    devices = sorted({h["device_id"] for h in holds if h.get("device_id") is not None})
    if devices:
        return "partial", f"Failed in part: published without {_count(len(devices), 'device')}"
    if not report.get("success", True):
        return "approved", "Failed, published on a data engineer's approval"
    if report.get("warnings"):
        return "warning", "Passed with warnings"
    return "passed", "Passed"


def render_page(report: Mapping[str, Any], published: bool) -> str:
    """A partition's Data Docs page, from its report as recorded (see the module docstring)."""
    part = report.get("partition") or {}
    domain, council = str(part.get("domain", report.get("dataset", ""))), str(part.get("council", ""))
    day, version = str(part.get("event_date", "")), part.get("version", "")
    kind, words = status(report, published)
    title = f"{domain} {council} {day} v{version}"
    out = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Data Docs: {_h(title)}: {_h(words)}</title>",
        f'<link rel="stylesheet" href="{STYLESHEET_HREF}">',
        "</head>",
        "<body>",
        '<header><p class="site">Civicflow Data Docs: the quality gate\'s decision on one partition</p>',
        f"<h1>{_h(domain)} · {_h(council)} · {_h(day)}</h1></header>",
        "<main>",
        f'<p class="status status-{kind}" role="status">Status: {_h(words)}</p>',
        '<dl class="facts">',
        *(
            f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>"
            for k, v in (
                ("Dataset", domain),
                ("Council", council),
                ("Date (UTC)", day),
                ("Partition version", version),
                ("Judged at", report.get("now", "")),
                ("Rows judged", (report.get("metrics") or {}).get("rows", "")),
                ("Expectations evaluated", report.get("evaluated", "")),
                (
                    "Validated with",
                    f"Great Expectations {report['gx_version']}" if report.get("gx_version") else "",
                ),
            )
            if v not in ("", None)
        ),
        "</dl>",
    ]
    out += _holds(report)
    failed, warned = report.get("failed"), report.get("warnings")
    out += _failures(domain, "Failed rules", "Blocking rules the partition failed", "failed", failed)
    out += _failures(domain, "Warnings", "Warning rules the partition failed", "warnings", warned)
    out += _approvals(report)
    out += _metrics(report)
    out += _expectations(domain, report)
    out += _thresholds(report)
    out += [
        "</main>",
        '<footer><p class="muted">What each rule checks, its grain and what a failure holds back: '
        "Civicflow's docs/warehouse.md and docs/publication.md.</p></footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


def _holds(report: Mapping[str, Any]) -> list[str]:
    holds = report.get("holds") or []
    if not holds:
        return []
    rows = []
    for h in holds:
        what = "the whole day" if h.get("device_id") is None else f"device {h['device_id']}"
        rows.append([what, ", ".join(h.get("rules", [])), h.get("rows", "")])
    return [
        '<section aria-labelledby="held"><h2 id="held">Held back</h2>',
        *_table("What the decision withholds", ["Held back", "Rules failed", "Rows"], rows),
        "</section>",
    ]


def _expectations(domain: str, report: Mapping[str, Any]) -> list[str]:
    """Every expectation of the suite (one Great Expectations expectation per rule) with its outcome,
    when the report is of that suite."""
    if not report.get("evaluated"):
        return []
    failed = {f["rule"] for f in report.get("failed") or []}
    warned = {f["rule"] for f in report.get("warnings") or []}
    try:
        suite = _suite(domain)
    except (KeyError, ValueError):
        suite = ()
    if len(suite) != report["evaluated"]:  # judged by another suite: only its failures are known
        return [
            '<section aria-labelledby="expectations"><h2 id="expectations">Expectations</h2>',
            f"<p>{_h(report['evaluated'])} expectations evaluated; {_h(len(failed))} blocking rules failed "
            f"and {_h(len(warned))} warnings (below). The others passed.</p>",
            "</section>",
        ]
    rows, kinds = [], []
    lineage = {"passed": 0, "failed": 0}
    for rule, _expectation, columns, severity in suite:
        outcome = "failed" if rule in failed else "warning" if rule in warned else "passed"
        if _lineage(domain, columns):  # checks of columns never published: counted, not named
            lineage["passed" if outcome == "passed" else "failed"] += 1
            continue
        kinds.append(outcome)
        rows.append(
            [
                rule,
                ", ".join(columns),
                severity,
                {"failed": "Failed", "warning": "Warning"}.get(outcome, "Passed"),
            ]
        )
    passed = kinds.count("passed") + lineage["passed"]
    checks = sum(lineage.values())
    return [
        '<section aria-labelledby="expectations"><h2 id="expectations">Expectations</h2>',
        f"<p>{_h(passed)} of {_h(len(suite))} passed. Besides those below, {_count(checks, 'check')} of the "
        "lineage Civicflow keeps and does not publish (where each reading came from): "
        f"{_h(lineage['failed'])} failed.</p>",
        *_table(
            "The dataset's suite, but for the lineage checks",
            ["Rule", "Columns", "If it fails", "Outcome"],
            rows,
            last_classes=[f"outcome-{k}" for k in kinds],
        ),
        "</section>",
    ]


def _failures(
    domain: str, heading: str, caption: str, anchor: str, failures: list[Mapping[str, Any]] | None
) -> list[str]:
    if not failures:
        return []
    rows = []
    for f in failures:
        rule = f.get("rule", "")
        if rule == GATE_ERROR:
            about = "judging or publishing the partition raised an error (operators: civicflow release list)"
        elif rule in _MEASURED:
            about = f.get("detail", "")  # a measured ratio against its threshold, no reading's value
        else:
            count = f.get("unexpected_count")
            about = "" if count is None else f"{_count(count, 'row')} unexpected"
        columns = f.get("columns", [])
        if _lineage(domain, columns):
            rule, columns = "lineage check", ["(not published)"]
        rows.append(
            [
                rule,
                f.get("grain", "row" if anchor == "warnings" else "partition"),
                ", ".join(columns),
                ", ".join(f.get("devices", [])),
                about,
            ]
        )
    return [
        f'<section aria-labelledby="{anchor}"><h2 id="{anchor}">{_h(heading)}</h2>',
        *_table(caption, ["Rule", "Grain", "Columns", "Devices", "What failed"], rows),
        "</section>",
    ]


def _approvals(report: Mapping[str, Any]) -> list[str]:
    approvals = report.get("approvals") or []
    if not approvals:
        return []
    items = ["the whole day" if a.get("device_id") is None else f"device {a['device_id']}" for a in approvals]
    return [
        '<section aria-labelledby="approvals"><h2 id="approvals">Approvals</h2>',
        "<p>A data engineer approved publishing, despite the failed rules: "
        + ", ".join(_h(i) for i in items)
        + ". Its rows carry the failed rules in <code>qc_flag</code>.</p>",
        "</section>",
    ]


def _metrics(report: Mapping[str, Any]) -> list[str]:
    metrics = report.get("metrics") or {}
    labels = {
        "rows": "Rows judged",
        "flagged_rows": "Rows with a qc_flag",
        "device_hours": "Device-hours",
        "completeness_mean": "Mean completeness of the device-hours",
        "quarantined": "Readings quarantined that day",
        "quarantine_share": "Quarantined share",
        "volume_ratio": "Rows / median of the trailing 7 days",
        "trailing_rows": "Rows of the trailing days",
        "freshness_minutes": "Minutes from the newest reading to the gate's time",
    }
    rows = [[labels[k], _plain(metrics[k])] for k in labels if metrics.get(k) not in (None, [])]
    if not rows:
        return []
    return [
        '<section aria-labelledby="metrics"><h2 id="metrics">Measured</h2>',
        *_table("What the quality rules measured", ["Metric", "Value"], rows),
        "</section>",
    ]


def _thresholds(report: Mapping[str, Any]) -> list[str]:
    thresholds = report.get("thresholds") or {}
    if not thresholds:
        return []
    rows = [[k, _plain(v)] for k, v in sorted(thresholds.items())]
    return [
        '<section aria-labelledby="thresholds"><h2 id="thresholds">Thresholds</h2>',
        *_table(
            "The council's quality thresholds the partition was judged against", ["Setting", "Value"], rows
        ),
        "</section>",
    ]


def _table(
    caption: str, header: list[str], rows: list[list[Any]], last_classes: list[str] | None = None
) -> list[str]:
    out = ['<div class="scroll"><table>', f"<caption>{_h(caption)}</caption>", "<thead><tr>"]
    out.append("".join(f'<th scope="col">{_h(h)}</th>' for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cells = [f'<th scope="row">{_h(row[0])}</th>']
        for j, cell in enumerate(row[1:], start=1):
            css = f' class="{last_classes[i]}"' if last_classes and j == len(row) - 1 else ""
            cells.append(f"<td{css}>{_h(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    return out


def _lineage(domain: str, columns: Iterable[str]) -> bool:
    """Whether a rule is about a column that is never published (the staged lineage columns)."""
    try:
        dataset = DATASETS[Domain(domain)]
    except ValueError:
        return False
    shown = {c.name for c in dataset.published_columns} | set(QUALITY_COLUMN_NAMES)
    return any(c not in shown for c in columns)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _h(value: Any) -> str:
    return escape(str(value), quote=True)


@cache
def _suite(domain: str) -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    """The dataset's suite as (rule, expectation, columns, what a failure does), in suite order."""
    out = []
    for expectation in build_suite(DATASETS[Domain(domain)]).expectations:
        config = expectation.configuration
        kwargs = config.kwargs
        columns = (
            [kwargs["column"]]
            if "column" in kwargs
            else [kwargs["column_A"], kwargs["column_B"]]
            if "column_A" in kwargs
            else list(kwargs.get("column_list", []))
        )
        severity = str(getattr(expectation.severity, "value", expectation.severity))
        effect = "warns" if severity == "warning" else "blocks"
        out.append(
            (str((config.meta or {}).get("rule", config.type)), config.type, tuple(map(str, columns)), effect)
        )
    return tuple(out)


def _write(path: Path, text: str) -> None:
    """Write a file by renaming a complete one into place (a release's hard link keeps the old one)."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_pages(con: duckdb.DuckDBPyConnection, layout: Layout) -> Pages:
    """Write the Data Docs of every partition version the next release holds; return where they are.

    The release holds every published version (the ledger) and every version held back now. The
    page of a version pending a release, held back now, or without a page yet is (re)written from
    its latest recorded decision; the others are as their release left them.
    """
    published = [
        PartitionRef(*row)
        for row in con.execute(  # the ledger's versions only: its files' lists are not needed here
            "SELECT domain, council, event_date, partition_version FROM published.releases ORDER BY ALL"
        ).fetchall()
    ]
    held = sorted({PartitionRef(h.domain, h.council, h.event_date, h.version) for h in held_back(con)})
    wanted = list(dict.fromkeys([*published, *held]))
    fresh = set(pending(con)) | set(held)
    paths = {r: data_docs_path(layout, r.domain, r.council, r.event_date, r.version) for r in wanted}
    todo = [r for r in wanted if r in fresh or not paths[r].is_file()]
    for ref, report, was_published in _decisions(con, todo):
        _write(paths[ref], render_page(report | {"partition": ref.to_json()}, was_published))
    pages = {r: p for r, p in paths.items() if p.is_file()}
    stylesheets = {}
    for domain in sorted({r.domain for r in pages}):
        stylesheets[domain] = stylesheet_path(layout, domain)
        _write(stylesheets[domain], CSS)
    return Pages(pages, stylesheets)


def _decisions(
    con: duckdb.DuckDBPyConnection, refs: Iterable[PartitionRef]
) -> Iterable[tuple[PartitionRef, dict, bool]]:
    """The latest recorded decision of each version: its report and whether it was published."""
    refs = list(refs)
    if not refs:
        return []
    wanted = pa.table(
        {
            "domain": [r.domain for r in refs],
            "council": [r.council for r in refs],
            "event_date": [r.event_date for r in refs],
            "partition_version": [r.version for r in refs],
        }
    )
    con.register("data_docs_wanted", wanted)
    try:
        rows = con.execute(
            """SELECT v.domain, v.council, v.event_date, v.partition_version, v.report, v.published
               FROM published.validations v
               JOIN data_docs_wanted w USING (domain, council, event_date, partition_version)
               QUALIFY row_number() OVER (PARTITION BY v.domain, v.council, v.event_date, v.partition_version
                                          ORDER BY v.validated_at DESC, v.rowid DESC) = 1"""
        ).fetchall()
    finally:
        con.unregister("data_docs_wanted")
    return [
        (PartitionRef(d, c, day, int(v)), json.loads(report), bool(pub)) for d, c, day, v, report, pub in rows
    ]
