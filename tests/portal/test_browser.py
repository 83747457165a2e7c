"""The portal in a real browser: headless Chromium (Debian's) over a real uvicorn server.

What a consumer sees and does: the catalogue and its search form, a dataset page's schema,
licence, coverage and quality, the chart changing with the form, a download that is the published
file byte for byte, and basic accessibility (labelled controls, one h1, headings in order, named
images). Screenshots of each page go to test-artifacts/screenshots/ (not tracked).

Chromium is Debian's package at /usr/bin/chromium (`.ci/run` installs it), driven by Playwright
without its own browser download. Where it is missing these tests are skipped, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from civicflow.publish.release import latest_release

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"no {CHROMIUM}: the browser tests need Debian's chromium package (apt-get install chromium)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e .[test])"
)

# Run in the page: what the accessibility checks need, read from the DOM the browser built.
A11Y_SCRIPT = """() => {
  const text = (el) => (el ? el.textContent.trim() : "");
  const named = (el) => {
    const by = (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean);
    return [el.getAttribute("aria-label") || "", ...by.map((id) => text(document.getElementById(id)))]
      .join(" ").trim();
  };
  const controls = [...document.querySelectorAll("input, select, textarea")]
    .filter((el) => el.type !== "hidden" && el.type !== "submit")
    .map((el) => ({id: el.id, name: el.name,
                   label: [...el.labels].map(text).join(" ") || named(el)}));
  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")]
    .map((h) => ({level: Number(h.tagName[1]), text: text(h)}));
  const images = [
    ...[...document.querySelectorAll("img")]
      .map((el) => ({tag: "img", role: "img", name: el.alt || named(el)})),
    ...[...document.querySelectorAll("svg")]
      .map((el) => ({tag: "svg", role: el.getAttribute("role") || "", name: named(el)})),
  ];
  const buttons = [...document.querySelectorAll("button")].map(text);
  return {controls, headings, images, buttons, lang: document.documentElement.lang};
}"""


def accessibility_problems(page) -> list[str]:
    """What a screen-reader user would miss on the page: unlabelled controls, heading gaps, unnamed images."""
    found = page.evaluate(A11Y_SCRIPT)
    problems = []
    if not found["lang"]:
        problems.append("<html> has no lang")
    problems += [
        f"control {c['id'] or c['name']!r} has no label" for c in found["controls"] if not c["label"]
    ]
    problems += ["a button has no text" for b in found["buttons"] if not b]
    levels = [h["level"] for h in found["headings"]]
    if levels.count(1) != 1:
        problems.append(f"{levels.count(1)} h1 elements, not one")
    if levels and levels[0] != 1:
        problems.append(f"the first heading is h{levels[0]}, not h1")
    for before, after in zip(found["headings"], found["headings"][1:], strict=False):
        if after["level"] > before["level"] + 1:
            problems.append(
                f"h{after['level']} {after['text']!r} follows h{before['level']} {before['text']!r}"
            )
    for image in found["images"]:
        # a drawing is one image; a map whose points are links is a named group of them
        if image["role"] != "img" and not (image["tag"] == "svg" and image["role"] == "group"):
            problems.append(f"an {image['tag']} without role=img")
        if not image["name"]:
            problems.append(f"an {image['tag']} without an accessible name")
    return problems


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    context.close()


def entries(page) -> list[tuple[str, str]]:
    """(council, link text) of every dataset the catalogue lists, in page order."""
    return [
        (section.locator("h3").inner_text(), link.inner_text())
        for section in page.locator("main section").all()
        for link in section.get_by_role("link").all()
    ]


def test_catalogue_lists_datasets_by_council_and_domain(page, portal_url):
    page.goto(portal_url + "/")
    assert page.title() == "Civicflow open data"
    assert page.get_by_role("heading", level=1).inner_text() == "Open datasets"
    assert page.get_by_role("heading", level=2).inner_text() == "2 datasets"
    assert entries(page) == [
        ("citizens", "Air quality"),
        ("testtown", "Car park and parking bay occupancy"),
    ]
    items = [li.inner_text() for li in page.locator("main section li").all()]
    assert items == [
        "Air quality (air_quality) — Open Data Commons Open Database License 1.0; 2016-10-04 to 2016-10-04",
        "Car park and parking bay occupancy (parking) — Open Government Licence v3.0; "
        "2016-10-04 to 2016-10-05",
    ]
    page.get_by_role("link", name="Car park and parking bay occupancy").click()
    page.wait_for_url(portal_url + "/datasets/parking?council=testtown")
    assert page.get_by_role("heading", level=1).inner_text() == "Car park and parking bay occupancy"


def test_catalogue_search_and_filters_through_the_form(page, portal_url):
    page.goto(portal_url + "/")
    page.get_by_label("Search").fill("occupancy")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/?q=occupancy*")
    assert entries(page) == [("testtown", "Car park and parking bay occupancy")]
    assert page.get_by_label("Search").input_value() == "occupancy"  # the form keeps what was asked

    page.get_by_label("Search").fill("")
    page.get_by_label("Council").select_option("citizens")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**council=citizens*")
    assert entries(page) == [("citizens", "Air quality")]

    page.get_by_label("Council").select_option("")
    page.get_by_label("Domain").select_option("parking")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**domain=parking*")
    assert entries(page) == [("testtown", "Car park and parking bay occupancy")]

    page.get_by_label("Domain").select_option("")
    page.get_by_label("Search").fill("no such thing")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**q=no+such+thing*")
    assert entries(page) == []
    assert page.get_by_text("No dataset matches.").is_visible()
    assert page.get_by_role("heading", level=2).inner_text() == "0 datasets"


def table_rows(page, heading: str) -> list[list[str]]:
    """The cells of the first table after an h2, row by row, header row included."""
    table = page.locator(f"h2:text-is('{heading}') ~ table").first
    return [
        [cell.inner_text().strip() for cell in row.locator("th, td").all()]
        for row in table.locator("tr").all()
    ]


def refuse_other_hosts(page, portal_url: str) -> list[str]:
    """Let the page reach the portal only: every request to another host is refused and its URL
    kept in the list returned (a page that works offline leaves it empty)."""
    elsewhere: list[str] = []

    def only_the_portal(route):
        if route.request.url.startswith(portal_url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_portal)
    return elsewhere


def test_dataset_page_shows_schema_with_units_licence_coverage_and_quality(page, portal_url, released):
    page.goto(portal_url + "/datasets/parking")
    assert page.title() == "Car park and parking bay occupancy — Civicflow open data"
    assert [h.inner_text() for h in page.get_by_role("heading", level=2).all()] == [
        "Councils, licences and coverage",
        "Update frequency",
        "Schema",
        "Quality",
        "Recent values",
        "Devices",
        "Downloads",
    ]
    schema = {row[0]: row[1:3] for row in table_rows(page, "Schema")[1:]}
    assert schema["occupied_spots"] == ["integer", "spot"]
    assert schema["total_spots"] == ["integer", "spot"]
    assert schema["occupancy"] == ["number", "1"]
    assert schema["observed_at"][0] == "datetime"
    assert list(schema)[:3] == ["council", "device_id", "observed_at"]
    assert table_rows(page, "Councils, licences and coverage") == [
        ["Council", "Licence", "Temporal coverage (UTC)"],
        [
            "testtown",
            "Open Government Licence v3.0 (OGL-UK-3.0); attribution: Contains public sector information "
            "licensed under the Open Government Licence v3.0.",
            "2016-10-04 to 2016-10-05",
        ],
    ]
    licence = page.get_by_role("link", name="Open Government Licence v3.0")
    assert licence.get_attribute("href").startswith(
        "https://www.nationalarchives.gov.uk/doc/open-government-licence/"
    )
    quality = table_rows(page, "Quality")
    assert quality[0] == [
        "Council",
        "Days published",
        "Rows",
        "Flagged",
        "Completeness",
        "Held back",
        "Data Docs",
    ]
    assert quality[1][:4] == ["testtown", "2", "20", "0.0 %"]
    assert quality[1][5:] == ["0", "2016-10-04 2016-10-05"]
    # The day's Data Docs page is a file of the release, styled by the release's own stylesheet:
    # with every request to another host refused, it renders as it does anywhere.
    elsewhere = refuse_other_hosts(page, portal_url)
    page.get_by_role("link", name="2016-10-05").first.click()
    release = latest_release(released).name
    page.wait_for_url(
        f"{portal_url}/releases/{release}/parking/data-docs/council=testtown/date=2016-10-05/v1.html"
    )
    page.wait_for_load_state("load")
    assert page.title() == "Data Docs: parking testtown 2016-10-05 v1: Passed"
    status = page.get_by_role("status")
    assert status.inner_text() == "Status: Passed"
    style = status.evaluate("e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).fontWeight]")
    assert style == ["rgb(231, 245, 234)", "700"]  # .status-passed of data-docs.css
    assert elsewhere == []


def test_dataset_page_of_air_quality_names_the_citizens_licence(page, portal_url):
    page.goto(portal_url + "/datasets/air_quality")
    assert table_rows(page, "Councils, licences and coverage")[1] == [
        "citizens",
        "Open Data Commons Open Database License 1.0 (ODbL-1.0); "
        "attribution: Citizen sensor network contributors",
        "2016-10-04 to 2016-10-04",
    ]
    schema = {row[0]: row[1:3] for row in table_rows(page, "Schema")[1:]}
    assert schema["pm10"] == ["number", "ug/m3"]
    assert schema["no2"] == ["number", "ug/m3"]


def chart(page) -> tuple[str, list[str]]:
    """The chart's accessible name (its SVG title) and its lines' points, in order."""
    svg = page.get_by_role("img", name=re.compile("hourly means"))
    assert svg.count() == 1
    title = svg.locator("title").text_content()
    points = [p for line in svg.locator("polyline").all() for p in line.get_attribute("points").split()]
    return title, points


def test_chart_is_drawn_and_follows_the_chosen_device_and_measurement(page, portal_url):
    page.goto(portal_url + "/datasets/parking")
    title, points = chart(page)
    assert title == "occupied_spots (spot), hourly means from 2016-10-04 08:00 to 2016-10-05 11:00 UTC"
    assert len(points) == 8  # p1: 4 hours on each of two days, a line for each
    assert page.get_by_role("img", name=re.compile("hourly means")).locator("polyline").count() == 2
    assert page.get_by_label("Device", exact=True).input_value() == "p1"
    assert [o.inner_text() for o in page.get_by_label("Device", exact=True).locator("option").all()] == [
        "p1",
        "p2",
    ]

    page.get_by_label("Device", exact=True).select_option("p2")
    page.get_by_label("Measurement").select_option("occupancy")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**device=p2*")
    title2, points2 = chart(page)
    assert title2 == "occupancy (1), hourly means from 2016-10-04 08:00 to 2016-10-04 11:00 UTC"
    assert len(points2) == 4 and points2 != points
    # p2's occupancy rises 58/80 .. 61/80 by the hour: the line climbs (SVG y grows downwards)
    ys = [float(p.split(",")[1]) for p in points2]
    assert ys == sorted(ys, reverse=True) and ys[0] > ys[-1]
    assert page.get_by_label("Device", exact=True).input_value() == "p2"
    assert page.get_by_label("Measurement").input_value() == "occupancy"
    caption = page.locator("figcaption").first.inner_text()
    assert caption == "Hourly mean of occupancy (1) for device p2 of testtown, last 4 hours with a reading."


def test_downloads_are_listed_a_month_at_a_time_with_its_archives(page, portal_url, released):
    release = latest_release(released).name
    page.goto(portal_url + "/datasets/parking")
    months = page.get_by_role("navigation", name="Months").get_by_role("link")
    assert [(m.inner_text(), m.get_attribute("aria-current")) for m in months.all()] == [("2016-10", "page")]
    months.first.click()
    page.wait_for_url(f"{portal_url}/datasets/parking?month=2016-10#downloads")
    table = page.locator("h2:text-is('Downloads') ~ table").first
    rows = [row.locator("th").first.inner_text() for row in table.locator("tbody tr").all()]
    # the month's archive and its year's above the month's days, newest day first
    assert rows == ["2016-10 (whole month)", "2016 (whole year)", "2016-10-05", "2016-10-04"]
    folder = f"/releases/{release}/parking/archives/council=testtown"
    types = {"Parquet": "application/vnd.apache.parquet", "CSV.gz": "application/gzip"}
    for row, period in zip(table.locator("tr.archive").all(), ["2016-10", "2016"], strict=True):
        links = row.get_by_role("link").all()
        assert [link.inner_text() for link in links] == ["Parquet", "CSV.gz"]
        for link, suffix in zip(links, [".parquet", ".csv.gz"], strict=True):
            href = link.get_attribute("href")
            assert href == f"{folder}/parking-testtown-{period}{suffix}"
            answer = page.request.get(portal_url + href)
            assert (answer.status, answer.headers["content-type"]) == (200, types[link.inner_text()])
            assert f"{link.inner_text()} ({len(answer.body())} bytes)" in row.inner_text()


def test_a_map_point_leads_to_its_device_page_with_readings_and_chart(page, portal_url):
    elsewhere = refuse_other_hosts(page, portal_url)
    page.goto(portal_url + "/datasets/parking")
    device_map = page.get_by_role("group", name=re.compile("testtown"))
    points = device_map.locator("a")
    assert [a.get_attribute("href") for a in points.all()] == [
        "/datasets/parking/devices/testtown/p1",
        "/datasets/parking/devices/testtown/p2",
    ]
    assert points.first.locator("title").text_content().startswith("p1 (")
    points.first.click()
    page.wait_for_url(f"{portal_url}/datasets/parking/devices/testtown/p1")
    page.wait_for_load_state("load")
    assert page.get_by_role("heading", level=1).inner_text() == "Device p1 of testtown"
    latest = page.locator("#latest-readings")
    cells = [[c.inner_text() for c in row.locator("td").all()] for row in latest.locator("tbody tr").all()]
    header = [th.inner_text() for th in latest.locator("thead th").all()]
    assert len(cells) == 8  # p1's last day: 4 hours, two readings an hour, newest first
    at, occupied = header.index("observed_at"), header.index("occupied_spots")
    assert [(r[at], r[occupied]) for r in cells[:2]] == [
        ("2016-10-05 11:30:00+00:00", "21"),
        ("2016-10-05 11:00:00+00:00", "21"),
    ]
    title, points_drawn = chart(page)
    assert title.startswith("occupied_spots (spot), hourly means")
    assert len(points_drawn) == 8  # 4 hours on each of two days
    assert page.get_by_role("img", name=re.compile("hourly means")).is_visible()
    assert accessibility_problems(page) == []
    assert elsewhere == []


@pytest.mark.parametrize("fmt", ["PARQUET", "CSV"])
def test_download_link_returns_the_exact_published_bytes(page, portal_url, released, fmt):
    release = latest_release(released)
    package = json.loads((release / "parking" / "datapackage.json").read_text())
    page.goto(portal_url + "/datasets/parking")
    row = page.locator("h2:text-is('Downloads') ~ table tr", has=page.locator("th", has_text="2016-10-05"))
    link = row.locator("td").first.get_by_role("link", name=fmt)  # the readings column
    href = link.get_attribute("href")
    relpath = f"council=testtown/date=2016-10-05/parking-testtown-2016-10-05.{fmt.lower()}"
    assert href == f"/releases/{release.name}/parking/{relpath}"
    with page.expect_download() as info:
        link.click()
    download = info.value
    body = Path(download.path()).read_bytes()
    published = release / "parking" / relpath
    assert download.suggested_filename == published.name
    digest = hashlib.sha256(body).hexdigest()
    assert digest == hashlib.sha256(published.read_bytes()).hexdigest()
    (resource,) = [r for r in package["resources"] if r["path"] == relpath]
    assert resource["hash"] == f"sha256:{digest}"
    assert resource["bytes"] == len(body)
    assert f"({len(body)} bytes)" in row.inner_text()


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/?q=no+such+thing",
        "/datasets/parking",
        "/datasets/air_quality",
        "/datasets/parking?device=p2",
        "/datasets/parking?month=2016-10",
        "/docs",
        "/releases",
        "/datasets/parking/data-docs/testtown/2016-10-04",
    ],
)
def test_pages_pass_basic_accessibility_checks(page, portal_url, path):
    page.goto(portal_url + path)
    assert accessibility_problems(page) == []
    # every control can be reached by its label, as assistive technology names it
    for control in page.locator("main select, main input").all():
        label = page.locator(f"label[for='{control.get_attribute('id')}']").inner_text()
        assert page.get_by_label(label, exact=True).count() == 1


def test_accessibility_checks_find_what_is_missing(page):
    """The checks above can fail: a page with each problem gets each complaint."""
    page.set_content(
        """<html><body><h2>First</h2><h1>One</h1><h1>Two</h1><h4>Deep</h4>
        <input id="x"><img src="data:,"><svg></svg><button></button></body></html>"""
    )
    assert accessibility_problems(page) == [
        "<html> has no lang",
        "control 'x' has no label",
        "a button has no text",
        "2 h1 elements, not one",
        "the first heading is h2, not h1",
        "h4 'Deep' follows h1 'Two'",
        "an img without an accessible name",
        "an svg without role=img",
        "an svg without an accessible name",
    ]
