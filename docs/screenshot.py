"""The README's screenshots: a dataset page (Birmingham's real car-park readings) and a device map
(Aberdeen's Sensor.Community air-quality stations, at the positions their archive gives), as published.

1. land the Birmingham car-park recording (samples/parking/, October 2016) and the Aberdeen
   air-quality archive (samples/air_quality/, January 2018) in a raw segment, as the listener
   would, in a throwaway data root;
2. stage it and run the quality gate and publisher (`civicflow.jobs.stage_job`, `publish_job`:
   the code the Airflow tasks run), which cuts a release;
3. start `civicflow serve` on a free loopback port over that data root and take a screenshot of
   the parking dataset page with Debian's headless Chromium (Playwright, no browser download),
   from the top of the page to the chart, and one of the air-quality page's Devices section, from
   its heading to the end of Aberdeen's map and table.

Run with `make screenshot` (writes docs/images/dataset-page.png and docs/images/device-map.png), or
`python docs/screenshot.py --help`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from civicflow.settings import Settings  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
LISTENER = "screenshot"
DEVICE = "bhmbccmkt01"  # Birmingham's Bull Ring car park (BHMBCCMKT01), 577 spots
WIDTH = 1000


def publish_samples(data_root: Path) -> dict:
    """Land, stage and publish the Birmingham car parks and the Aberdeen stations under `data_root`."""
    from civicflow.ingest.samples import aberdeen_air_quality_messages, birmingham_parking_messages
    from civicflow.jobs import publish_job, stage_job
    from civicflow.warehouse.segments import SegmentWriter

    writer = SegmentWriter(data_root / "raw" / LISTENER, max_bytes=1 << 30, max_age_s=3600, fsync=False)
    now = time.time_ns()
    count = 0
    messages = [*birmingham_parking_messages(), *aberdeen_air_quality_messages()]
    for i, (topic, payload) in enumerate(messages):
        writer.append(topic.encode(), payload, now + i)
        count += 1
    writer.close()
    settings = Settings(data_root=data_root)
    staged = stage_job(settings)
    published = publish_job(settings)
    return {"messages": count, "staged": staged, "published": published}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(data_root: Path, port: int, log: Path) -> subprocess.Popen:
    """`civicflow serve` over `data_root`, once it answers."""
    script = Path(sys.executable).parent / "civicflow"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "civicflow.app.cli"]
    env = os.environ | {"CIVICFLOW_DATA_ROOT": str(data_root)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"civicflow serve exited {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/datasets", timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"civicflow serve did not answer within 60 s; see {log}")


@contextmanager
def browser_page(url: str) -> Iterator:
    """Debian's Chromium, headless, at `url` in a WIDTH-wide viewport; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 800}, device_scale_factor=1)
            page.goto(url)
            yield page
        finally:
            browser.close()


def screenshot(url: str, out: Path) -> dict:
    """A PNG of the page at `url`, from its top to the bottom of the chart's figure."""
    with browser_page(url) as page:
        figure = page.locator("figure").bounding_box()
        if figure is None or not page.locator("figure svg").count():
            raise RuntimeError(f"no chart on {url}")
        height = int(figure["y"] + figure["height"] + 16)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out, clip={"x": 0, "y": 0, "width": WIDTH, "height": height}, full_page=True)
        return {"title": page.title(), "width": WIDTH, "height": height}


def screenshot_devices(url: str, out: Path) -> dict:
    """A PNG of the Devices section at `url`: its heading, the first council's map and table."""
    with browser_page(url) as page:
        if not page.locator("svg.device-map circle").count():
            raise RuntimeError(f"no device with a position on {url}")
        # Boxes are relative to the viewport; the clip of a full-page shot, to the page.
        scrolled = page.evaluate("window.scrollY")
        top = page.locator("h2#devices").bounding_box()
        bottom = page.locator("h2#devices ~ table").first.bounding_box()
        y = int(top["y"] + scrolled - 8)
        height = int(bottom["y"] + scrolled + bottom["height"] + 16) - y
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out, clip={"x": 0, "y": y, "width": WIDTH, "height": height}, full_page=True)
        return {"title": page.title(), "width": WIDTH, "height": height}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/screenshot.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dataset-page.png")
    parser.add_argument("--map-out", type=Path, default=ROOT / "docs" / "images" / "device-map.png")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway data root and print it")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        parser.error(f"{CHROMIUM} is missing: apt-get install chromium")
    data_root = Path(tempfile.mkdtemp(prefix="civicflow-screenshot-"))
    try:
        result = publish_samples(data_root)
        print(
            f"published {result['published']['published']} of {result['published']['validated']} "
            f"Birmingham and Aberdeen partitions from {result['messages']:,} messages"
        )
        port = free_port()
        proc = serve(data_root, port, data_root / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}/datasets/parking?council=birmingham&device={DEVICE}"
            shots = [(args.out, screenshot(url, args.out))]
            url = f"http://127.0.0.1:{port}/datasets/air_quality?council=aberdeen"
            shots.append((args.map_out, screenshot_devices(url, args.map_out)))
        finally:
            proc.terminate()
            proc.wait(30)
        for out, shot in shots:
            size = out.stat().st_size
            print(f"{out} ({shot['width']}x{shot['height']}, {size / 1024:.0f} KiB): {shot['title']}")
    finally:
        if args.keep:
            print(f"data root kept: {data_root}")
        else:
            shutil.rmtree(data_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
