"""Opening the warehouse while another process has it open: a writer waits for a reader's moment
(a metrics scrape, a judge) instead of failing its task; past its wait it says what to do."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import civicflow.warehouse.db as db
from civicflow.errors import TransientError

HOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("open", flush=True)
sys.stdin.readline()
con.close()
"""


def test_a_writer_waits_while_a_reader_has_the_file_open(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.duckdb"
    db.connect(path).close()
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline() == "open\n"
        with pytest.raises(TransientError, match="open by another process.*retry when it has finished"):
            db.connect(path, lock_wait=0)

        waited, real_sleep = threading.Event(), time.sleep
        monkeypatch.setattr(time, "sleep", lambda s: (waited.set(), real_sleep(s)))
        opened: dict = {}
        writer = threading.Thread(target=lambda: opened.setdefault("con", db.connect(path, lock_wait=3600)))
        writer.start()
        assert waited.wait(timeout=600)  # the writer met the reader's lock and is waiting
        assert "con" not in opened
        reader.communicate("done\n", timeout=60)
        writer.join(timeout=600)
    finally:
        if reader.poll() is None:
            reader.kill()
    con = opened["con"]
    con.execute("CREATE TABLE written (x INTEGER)")
    con.close()
