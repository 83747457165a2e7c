"""The zones' store: one contract, asserted the same way on local disk and on S3 (a moto server)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from brokers import free_port
from objectstores import aws_credentials, moto_server, s3_storage

from civicflow.errors import TerminalError, TransientError
from civicflow.settings import StorageSettings
from civicflow.warehouse.storage import LocalStore, S3Store, Store, open_store

pytestmark = pytest.mark.integration
FIXTURES = (aws_credentials, moto_server, s3_storage)  # tests/objectstores.py: the moto server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return open_store(StorageSettings(), tmp_path / "data")
    return open_store(request.getfixturevalue("s3_storage"), tmp_path / "data")


def test_open_store_names_where_the_zones_are(tmp_path, s3_storage):
    local = open_store(StorageSettings(), tmp_path / "data")
    assert isinstance(local, LocalStore) and local.is_local
    assert local.url == f"file://{(tmp_path / 'data').resolve()}"
    assert local.location("published/latest.json") == f"{local.url}/published/latest.json"
    s3 = open_store(s3_storage, tmp_path / "data")
    assert isinstance(s3, S3Store) and not s3.is_local
    assert s3.url == s3_storage.url and s3.url.endswith("/zones")
    assert s3.location("raw/l1/a.seg") == f"{s3_storage.url}/raw/l1/a.seg"
    assert s3.location() == s3_storage.url


def test_objects_are_written_read_listed_and_deleted(store, tmp_path):
    store.put_bytes("raw/l1/20260301T000000000000Z-00000001.seg", b"one")
    source = tmp_path / "segment.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    store.put_file("raw/l1/20260301T000001000000Z-00000002.seg", source)
    store.put_bytes("raw/l2/x.seg", b"")
    store.put_bytes("published/latest.json", b"{}")

    assert store.get_bytes("raw/l1/20260301T000000000000Z-00000001.seg") == b"one"
    assert store.get_bytes("raw/l1/20260301T000001000000Z-00000002.seg") == source.read_bytes()
    assert store.get_bytes("raw/l2/x.seg") == b""
    assert store.exists("raw/l2/x.seg") and not store.exists("raw/l2/y.seg") and not store.exists("raw/l2")
    assert store.list("raw/") == [
        "raw/l1/20260301T000000000000Z-00000001.seg",
        "raw/l1/20260301T000001000000Z-00000002.seg",
        "raw/l2/x.seg",
    ]
    assert store.list("raw/l1/20260301T000001") == ["raw/l1/20260301T000001000000Z-00000002.seg"]
    assert store.list("raw/l") == store.list("raw/")  # a string prefix, as S3's
    assert store.list("nothing/") == []
    assert store.list() == ["published/latest.json", *store.list("raw/")]

    store.put_bytes("raw/l2/x.seg", b"replaced")
    assert store.get_bytes("raw/l2/x.seg") == b"replaced"
    store.delete("raw/l2/x.seg")
    store.delete("raw/l2/x.seg")  # deleting what is not there is not an error
    assert not store.exists("raw/l2/x.seg")
    with pytest.raises(FileNotFoundError, match="raw/l2/x.seg"):
        store.get_bytes("raw/l2/x.seg")
    assert store.get_with_etag("raw/l2/x.seg") is None


def test_children_name_one_level_and_delete_many_removes_them(store):
    for key in [
        "published/latest.json",
        "published/releases/000001/a",
        "published/releases/000001/b/c",
        "published/releases/000002/a",
    ]:
        store.put_bytes(key, b"x")
    assert store.children("published/") == ["latest.json", "releases"]
    assert store.children("published/releases/") == ["000001", "000002"]
    assert store.children("published/releases/000001/") == ["a", "b"]
    assert store.children("nothing/") == []
    store.delete_many(store.list("published/releases/000001/"))
    assert store.list("published/") == ["published/latest.json", "published/releases/000002/a"]
    store.delete_many([])


def test_a_copy_inside_the_store_has_the_same_bytes(store):
    store.put_bytes("published/releases/000001/a.parquet", b"PAR1 rows PAR1")
    store.copy("published/releases/000001/a.parquet", "published/releases/000002/a.parquet")
    assert store.get_bytes("published/releases/000002/a.parquet") == b"PAR1 rows PAR1"
    with pytest.raises(FileNotFoundError):
        store.copy("published/releases/000001/missing.parquet", "published/releases/000002/b.parquet")


def test_keys_outside_the_store_are_refused(store):
    for key in ["/abs", "a//b", "a/../b", "./a", "", "a\\b", "a/"]:
        with pytest.raises(ValueError, match="invalid store key"):
            store.put_bytes(key, b"x")
    assert store.list() == []


def test_conditional_writes_keep_what_another_writer_wrote(store):
    assert store.put_if_absent("published/latest.json", b"release 1") is True
    assert store.put_if_absent("published/latest.json", b"release 2") is False
    assert store.get_bytes("published/latest.json") == b"release 1"

    data, etag = store.get_with_etag("published/latest.json")
    assert data == b"release 1"
    assert store.replace_if("published/latest.json", b"release 2", etag) is True
    assert store.replace_if("published/latest.json", b"release 3", etag) is False  # stale ETag
    assert store.replace_if("published/latest.json", b"release 3", None) is False  # exists already
    assert store.get_bytes("published/latest.json") == b"release 2"
    _, etag2 = store.get_with_etag("published/latest.json")
    assert etag2 != etag
    assert store.replace_if("published/missing.json", b"x", etag2) is False
    assert not store.exists("published/missing.json")
    assert store.replace_if("published/first.json", b"x", None) is True


def test_two_publishers_that_read_the_same_pointer_one_wins(store):
    """The race a release pointer is written under: both read it, both try to switch it."""
    store.put_bytes("published/latest.json", b"release 1")
    _, seen_by_a = store.get_with_etag("published/latest.json")
    _, seen_by_b = store.get_with_etag("published/latest.json")
    assert store.replace_if("published/latest.json", b"release 2 by a", seen_by_a) is True
    assert store.replace_if("published/latest.json", b"release 2 by b", seen_by_b) is False
    assert store.get_bytes("published/latest.json") == b"release 2 by a"


@pytest.mark.parametrize("operation", ["put_if_absent", "replace_if"])
def test_writers_racing_at_once_exactly_one_wins(store, operation):
    writers = 6
    key = "published/latest.json"
    etag = None
    if operation == "replace_if":
        store.put_bytes(key, b"release 0")
        etag = store.get_with_etag(key)[1]
    start = threading.Barrier(writers)
    won: dict[int, bool] = {}
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            start.wait()
            data = f"release 1 by writer {i}".encode()
            won[i] = store.put_if_absent(key, data) if etag is None else store.replace_if(key, data, etag)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    winners = [i for i, w in won.items() if w]
    assert len(won) == writers and len(winners) == 1
    assert store.get_bytes(key) == f"release 1 by writer {winners[0]}".encode()


def test_local_store_lists_no_temporary_or_lock_files(tmp_path):
    store = open_store(StorageSettings(), tmp_path / "data")
    store.put_if_absent("published/latest.json", b"1")
    (tmp_path / "data" / "published" / ".latest.json.0123.cf-tmp").write_bytes(b"half")
    assert store.list("published/") == ["published/latest.json"]
    assert {p.name for p in (tmp_path / "data" / "published").iterdir()} == {
        "latest.json",
        ".latest.json.cf-lock",
        ".latest.json.0123.cf-tmp",
    }


def test_s3_listing_follows_every_page(s3_storage, tmp_path):
    store = open_store(s3_storage, tmp_path)
    store.page_size = 2
    keys = [f"raw/l1/{i:03d}.seg" for i in range(7)]
    for key in reversed(keys):
        store.put_bytes(key, key.encode())
    store.put_bytes("raw/l10.seg", b"")
    assert store.list("raw/l1/") == keys
    assert store.list("raw/") == [*keys, "raw/l10.seg"]


def test_pyiceberg_file_io_reaches_the_store_with_its_properties(store):
    from pyiceberg.io.pyarrow import PyArrowFileIO

    io = PyArrowFileIO(store.iceberg_properties())
    with io.new_output(store.location("warehouse/t/data/file-1.parquet")).create(overwrite=True) as out:
        out.write(b"written by pyiceberg")
    assert store.get_bytes("warehouse/t/data/file-1.parquet") == b"written by pyiceberg"
    store.put_bytes("warehouse/t/metadata/v1.json", b'{"format-version": 2}')
    with io.new_input(store.location("warehouse/t/metadata/v1.json")).open() as f:
        assert f.read() == b'{"format-version": 2}'


# -- errors that say what to do --------------------------------------------------------------------


def test_a_missing_bucket_is_terminal_and_says_to_create_it(moto_server, tmp_path):
    store = open_store(moto_server.storage("civicflow-no-such-bucket"), tmp_path)
    for call in (
        lambda: store.put_bytes("raw/a.seg", b"x"),
        lambda: store.get_bytes("raw/a.seg"),
        lambda: store.exists("raw/a.seg"),
        lambda: store.list("raw/"),
        lambda: store.get_with_etag("published/latest.json"),
        lambda: store.put_if_absent("published/latest.json", b"x"),
    ):
        with pytest.raises(
            TerminalError, match="bucket 'civicflow-no-such-bucket' does not exist. Create it"
        ):
            call()


def test_missing_credentials_are_terminal_and_name_the_variables(moto_server, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(moto_server.storage(moto_server.create_bucket()), tmp_path)
    with pytest.raises(
        TerminalError, match="no credentials .* Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    ):
        store.put_bytes("raw/a.seg", b"x")


def test_an_unreachable_endpoint_is_transient_and_names_the_setting(aws_credentials, tmp_path):
    nobody = f"http://127.0.0.1:{free_port()}"
    store = open_store(StorageSettings(url="s3://civicflow-test/zones", endpoint_url=nobody), tmp_path)
    with pytest.raises(TransientError, match="unreachable .* Check CIVICFLOW_STORAGE__ENDPOINT_URL"):
        store.put_bytes("raw/a.seg", b"x")
    with pytest.raises(TransientError, match="unreachable"):
        store.get_with_etag("published/latest.json")


def test_local_store_writes_leave_no_temporary_file(tmp_path):
    store = open_store(StorageSettings(), tmp_path / "data")
    store.put_bytes("a/b.json", b"1")
    store.replace_if("a/b.json", b"2", store.get_with_etag("a/b.json")[1])
    assert sorted(p.name for p in Path(tmp_path / "data" / "a").iterdir()) == [".b.json.cf-lock", "b.json"]
