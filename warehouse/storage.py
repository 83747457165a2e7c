"""Where the zones live: the data root on local disk, or an S3-compatible object store.

One interface, `Store`, over both, so that the listener, staging and the publisher name objects
the same way wherever they are: a *key* is a `/`-separated path relative to the zones' root,
`raw/<listener>/<segment>.seg`, `published/releases/<id>/manifest.json`, `published/latest.json`.
Locally the root is the data root (`CIVICFLOW_DATA_ROOT`); on S3 it is `s3://bucket/prefix`
(`CIVICFLOW_STORAGE__URL`). docs/scaling.md, "Object storage", says what is where.

Every write is durable when it returns (locally: written to a temporary file beside the key,
fsynced, renamed over the key, directory fsynced; on S3: the PUT succeeded). Readers therefore
never see half an object. The conditional writes, `put_if_absent` and `replace_if`, are S3's
`If-None-Match: *` and `If-Match: <etag>`; locally they hold a lock file beside the key, so two
processes on one machine cannot both win.

Failures of the store itself are `civicflow.errors` classes whose message says what to do: an
unreachable endpoint or a throttled or failing store is a `TransientError` (retry as it is); a
missing bucket, missing or refused credentials or a TLS failure is a `TerminalError` (a person has
to fix a setting). A key that does not exist is `FileNotFoundError` from `get_bytes`.

Credentials are never settings: boto3 reads them from `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE` or an instance profile.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from civicflow.errors import CivicflowError, TerminalError, TransientError

if TYPE_CHECKING:
    from civicflow.settings import StorageSettings

TMP_SUFFIX = ".cf-tmp"
"""A local write in progress: `.<name>.<random>.cf-tmp` beside its key, renamed over it when whole."""
LOCK_SUFFIX = ".cf-lock"
"""The lock file of a key's conditional writes on local disk: `.<name>.cf-lock` beside it."""
SINGLE_PUT_MAX_BYTES = 256 * 1024 * 1024
"""Files up to this size go to S3 in one PUT; bigger ones in a multipart upload."""
CONFLICT_RETRIES = 5
"""Attempts of a conditional PUT that S3 answered with 409 (another conditional write in flight)."""

_boto_loader = None
_boto_lock = threading.Lock()


def _s3_client(endpoint_url: str | None, config):
    """A new S3 client in a session of its own (credentials are resolved per session, so a store
    opened after the environment changed sees the change), sharing one loader of the service
    model per process, which is what makes a new client slow. Sessions are not thread-safe: made
    under a lock; the clients themselves are."""
    global _boto_loader
    import boto3
    import botocore.session

    with _boto_lock:
        core = botocore.session.Session()
        if _boto_loader is None:
            _boto_loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _boto_loader)
        return boto3.session.Session(botocore_session=core).client(
            "s3", endpoint_url=endpoint_url, config=config
        )


def check_key(key: str) -> str:
    """A key as stored: relative, `/`-separated, no empty, `.` or `..` part. Raises ValueError."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"invalid store key {key!r}: use a relative path of non-empty names separated by '/', "
            "without '.' or '..'"
        )
    return key


class Store(ABC):
    """The zones' storage: keys to bytes, with conditional writes. See the module docstring."""

    url: str
    """`file:///absolute/data/root` or `s3://bucket/prefix`."""

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing what was there; durable when it returns."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Write the file at `path` to `key`, replacing what was there; durable when it returns."""

    @abstractmethod
    def copy(self, source: str, key: str) -> None:
        """Copy the object at `source` to `key` inside the store (no download); durable when it
        returns. Raises FileNotFoundError when there is no object at `source`."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes. Raises FileNotFoundError when there is no object at `key`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at `key`; nothing happens when there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix` (a string prefix, as S3's), sorted."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """The names one level below `prefix` (which ends in "/"): objects and "directories"
        (common prefixes), sorted, without listing everything beneath them."""

    def delete_many(self, keys: list[str]) -> None:
        """Remove every object in `keys` (in batches where the store has them)."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` only if no object is there; False (nothing written) if one is."""

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and its ETag (opaque, for `replace_if`); None when there is none."""

    @abstractmethod
    def replace_if(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write `data` at `key` only if the object there still has `etag` (None: only if there is
        no object, as `put_if_absent`); False, nothing written, if another writer came first."""

    @abstractmethod
    def iceberg_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties that reach this store (endpoint, region, credentials)."""

    @abstractmethod
    def location(self, key: str = "") -> str:
        """The URI of a key (or of the root, for ""), e.g. for pyiceberg's warehouse location."""


def open_store(storage: StorageSettings, data_root: Path) -> Store:
    """The store of `CIVICFLOW_STORAGE__URL`, or the data root when it is unset. No I/O."""
    if storage.url is None:
        return LocalStore(data_root)
    return S3Store(storage.url, endpoint_url=storage.endpoint_url, region=storage.region)


# -- local disk ----------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _local_error(exc: OSError, action: str, path: Path) -> CivicflowError:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TerminalError(
            f"cannot {action} {path}: {exc.strerror or exc}. Give the Civicflow user write access to "
            "the data root (CIVICFLOW_DATA_ROOT)"
        )
    return TransientError(
        f"cannot {action} {path}: {exc.strerror or exc}. Free space on the data root's disk or fix it; "
        "the operation can be retried as it is"
    )


class LocalStore(Store):
    """Keys as files under the data root. Conditional writes are atomic among processes of one
    machine (a lock file beside the key); not across machines sharing a network file system."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({self.url})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, target: Path, write) -> None:
        """Write a temporary file beside `target` with `write(fh)`, fsync it and rename it over."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        try:
            with tmp.open("xb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self._write(path, lambda fh: fh.write(data))
        except OSError as exc:
            raise _local_error(exc, "write", path) from exc

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        try:
            if target.exists() and os.path.samefile(path, target):
                with target.open("rb") as fh:  # already in place (a local raw zone): make it durable
                    os.fsync(fh.fileno())
                return

            def copy(fh) -> None:
                with Path(path).open("rb") as src:
                    while chunk := src.read(1 << 20):
                        fh.write(chunk)

            self._write(target, copy)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _local_error(exc, "write", target) from exc

    def copy(self, source: str, key: str) -> None:
        src = self._path(source)
        if not src.is_file():
            raise FileNotFoundError(errno.ENOENT, f"no object {source!r} in {self.url}")
        self.put_file(key, src)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise FileNotFoundError(errno.ENOENT, f"no object {key!r} in {self.url}") from exc
        except OSError as exc:
            raise _local_error(exc, "read", path) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise _local_error(exc, "delete", path) from exc

    def list(self, prefix: str = "") -> list[str]:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"invalid store prefix {prefix!r}: use a relative path without '..'")
        head, _, _ = prefix.rpartition("/")
        base = self.root / head if head else self.root
        if not base.is_dir():
            return []
        keys = []
        for directory, _dirs, files in os.walk(base):
            rel = Path(directory).relative_to(self.root).as_posix()
            for name in files:
                if name.endswith((TMP_SUFFIX, LOCK_SUFFIX)):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def children(self, prefix: str) -> list[str]:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"children() takes a prefix ending in '/', not {prefix!r}")
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.endswith((TMP_SUFFIX, LOCK_SUFFIX)))

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (path.parent / f".{path.name}{LOCK_SUFFIX}").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _etag(data: bytes) -> str:
        return f'"{hashlib.sha256(data).hexdigest()}"'

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            with self._locked(path):
                if path.exists():
                    return False
                self._write(path, lambda fh: fh.write(data))
                return True
        except OSError as exc:
            raise _local_error(exc, "write", path) from exc

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get_bytes(key)
        except FileNotFoundError:
            return None
        return data, self._etag(data)

    def replace_if(self, key: str, data: bytes, etag: str | None) -> bool:
        if etag is None:
            return self.put_if_absent(key, data)
        path = self._path(key)
        try:
            with self._locked(path):
                try:
                    current = path.read_bytes()
                except FileNotFoundError:
                    return False
                if self._etag(current) != etag:
                    return False
                self._write(path, lambda fh: fh.write(data))
                return True
        except OSError as exc:
            raise _local_error(exc, "write", path) from exc

    def iceberg_properties(self) -> dict[str, str]:
        return {}

    def location(self, key: str = "") -> str:
        return (self._path(key) if key else self.root).as_uri()


# -- S3 ------------------------------------------------------------------------------------------


class S3Store(Store):
    """Keys as objects under `s3://bucket/prefix/`, through boto3 (path-style addressing on a
    custom endpoint, as MinIO and Ceph expect)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        from botocore.config import Config

        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}; set CIVICFLOW_STORAGE__URL to s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.region = region
        self.page_size = 1000  # keys per LIST request (S3's largest page)
        self._where = f"{self.url}" + (f" at {endpoint_url}" if endpoint_url else "")
        config = Config(
            region_name=region,
            connect_timeout=5,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client = _s3_client(endpoint_url, config)

    def __repr__(self) -> str:
        return f"S3Store({self._where})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # Errors -----------------------------------------------------------------------------------

    def _error(self, exc: Exception, action: str, key: str | None = None) -> CivicflowError:
        """What a failed call means for the caller, and what a person should do about it."""
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx

        what = f"{action} {key!r} in {self._where}" if key else f"{action} in {self._where}"
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
            exc = exc.__context__
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return TerminalError(
                f"cannot {what}: no credentials for the object store. Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance profile) in the "
                "environment of every Civicflow process"
            )
        if isinstance(exc, bx.SSLError):
            return TerminalError(
                f"cannot {what}: TLS to the endpoint failed ({exc}). Check CIVICFLOW_STORAGE__ENDPOINT_URL "
                "and the certificate authority (AWS_CA_BUNDLE)"
            )
        if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
            return TransientError(
                f"cannot {what}: the object store is unreachable ({exc}). Check "
                "CIVICFLOW_STORAGE__ENDPOINT_URL and the network to it; retrying can succeed as it is"
            )
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = error.get("Message", "")
            if code == "NoSuchBucket":
                return TerminalError(
                    f"cannot {what}: bucket {self.bucket!r} does not exist. Create it (aws s3 mb "
                    f"s3://{self.bucket}) or correct CIVICFLOW_STORAGE__URL"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
                return TerminalError(
                    f"cannot {what}: the object store refused the credentials ({code}). Check "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
                )
            if code == "AccessDenied" or status == 403:
                return TerminalError(
                    f"cannot {what}: access denied ({code} {message}). Allow the credentials' user "
                    f"s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on {self.bucket}"
                )
            if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "Throttling"):
                return TransientError(
                    f"cannot {what}: the object store answered {status} {code} ({message}); "
                    "retrying can succeed as it is"
                )
            return TerminalError(f"cannot {what}: the object store answered {status} {code} ({message})")
        if isinstance(exc, OSError):  # reading a local file for an upload
            return TransientError(f"cannot {what}: {exc}")
        return TerminalError(f"cannot {what}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _code(exc: Exception) -> tuple[str, int]:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return "", 0
        return (
            str(exc.response.get("Error", {}).get("Code", "")),
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
        )

    # Operations -------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as exc:
            raise self._error(exc, "write", key) from exc

    def put_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        path = Path(path)
        size = path.stat().st_size  # FileNotFoundError for a missing file, as for any open()
        try:
            if size <= SINGLE_PUT_MAX_BYTES:
                with path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=body, ContentLength=size)
            else:
                self.client.upload_file(str(path), self.bucket, full)
        except Exception as exc:
            raise self._error(exc, f"upload {path} to", key) from exc

    def copy(self, source: str, key: str) -> None:
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self._key(key),
                CopySource={"Bucket": self.bucket, "Key": self._key(source)},
            )
        except Exception as exc:
            code, status = self._code(exc)
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                raise FileNotFoundError(errno.ENOENT, f"no object {source!r} in {self._where}") from exc
            raise self._error(exc, f"copy {source!r} to", key) from exc

    def get_bytes(self, key: str) -> bytes:
        found = self.get_with_etag(key)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, f"no object {key!r} in {self._where}")
        return found[0]

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
            return True
        except Exception as exc:
            code, status = self._code(exc)
            if status != 404 and code not in ("404", "NoSuchKey", "NotFound"):
                raise self._error(exc, "look up", key) from exc
        # HEAD answers a bare 404 for a missing bucket too: tell the two apart.
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            code, status = self._code(exc)
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                from botocore.exceptions import ClientError

                exc = ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadBucket")
            raise self._error(exc, "look up", key) from exc
        return False

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error(exc, "delete", key) from exc

    def list(self, prefix: str = "") -> list[str]:
        if prefix.startswith("/"):
            raise ValueError(f"invalid store prefix {prefix!r}: use a relative path")
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", ()))
        except Exception as exc:
            raise self._error(exc, f"list {prefix!r}") from exc
        return sorted(keys)

    def children(self, prefix: str) -> list[str]:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"children() takes a prefix ending in '/', not {prefix!r}")
        full = self.prefix + prefix
        names: set[str] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/", PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                names.update(p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", ()))
                names.update(o["Key"][len(full) :] for o in page.get("Contents", ()))
        except Exception as exc:
            raise self._error(exc, f"list {prefix!r}") from exc
        return sorted(names)

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # S3's largest DeleteObjects batch
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise self._error(exc, f"delete {len(batch)} objects") from exc
            if response.get("Errors"):
                first = response["Errors"][0]
                raise TransientError(
                    f"cannot delete {len(response['Errors'])} objects in {self._where}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}; retrying can succeed"
                )

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """PUT with If-None-Match or If-Match; False when the condition does not hold."""
        full = self._key(key)
        for attempt in range(CONFLICT_RETRIES):
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **condition)
                return True
            except Exception as exc:
                code, status = self._code(exc)
                if status == 412 or code == "PreconditionFailed":
                    return False
                if "IfMatch" in condition and (code == "NoSuchKey" or status == 404):
                    return False  # deleted since the ETag was read
                if status == 409 and attempt + 1 < CONFLICT_RETRIES:
                    time.sleep(0.1 * 2**attempt)  # another conditional write in flight: ask again
                    continue
                raise self._error(exc, "conditionally write", key) from exc
        raise AssertionError("unreachable")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        full = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read(), response["ETag"]
        except Exception as exc:
            code, _status = self._code(exc)
            if code in ("NoSuchKey", "404"):
                return None
            raise self._error(exc, "read", key) from exc

    def replace_if(self, key: str, data: bytes, etag: str | None) -> bool:
        if etag is None:
            return self.put_if_absent(key, data)
        return self._conditional_put(key, data, IfMatch=etag)

    def iceberg_properties(self) -> dict[str, str]:
        props = {"s3.region": self.region}
        if self.endpoint_url:
            props["s3.endpoint"] = self.endpoint_url
        for env, prop in (
            ("AWS_ACCESS_KEY_ID", "s3.access-key-id"),
            ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
            ("AWS_SESSION_TOKEN", "s3.session-token"),
        ):
            if os.environ.get(env):
                props[prop] = os.environ[env]
        return props

    def location(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key) if key else self.prefix.rstrip('/')}".rstrip("/")
