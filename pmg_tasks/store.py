"""The object store: one small interface over a local folder (the default) and S3.

Stages exchange files by key (`runs/ds=2026-11-20/events.parquet`), never by absolute path, so the same
code runs on a laptop and in production. Writes are atomic in both backends: a reader never sees half a
file, which is what lets a retried task trust that a key that exists is complete.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from pmg_tasks.settings import Settings


class ObjectStore(Protocol):
    root: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def url(self, key: str) -> str: ...

    def writing(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to write `key` to; published atomically when the block exits without error."""
        ...

    def reading(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local path holding the object's bytes for the duration of the block."""
        ...


# Local objects are readable by everyone who can reach the folder, writable by their writer only.
PUBLISHED_MODE = 0o644


class LocalStore:
    """A folder on disk. Keys are relative POSIX paths below `root`; objects are written 0644."""

    def __init__(self, root: str | Path):
        self.root = str(Path(root).expanduser().resolve())

    def path(self, key: str) -> Path:
        path = (Path(self.root) / key).resolve()
        # A key is data, never a way out of the store.
        if not path.is_relative_to(self.root):
            raise ValueError(f"object key {key!r} escapes the store root {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writing(key) as tmp:
            tmp.write_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"no object {key!r} in store {self.root}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            self.path(key).unlink()
        return len(keys)

    def url(self, key: str) -> str:
        return self.path(key).as_uri()

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=final.suffix)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            # mkstemp made it 0600 (and a writer may have recreated it): a published object is for its
            # readers, the group and others too.
            os.chmod(tmp, PUBLISHED_MODE)
            os.replace(tmp, final)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            # The half-written temporary file goes (below); the object was never published, so nothing is corrupt.
            raise OSError(
                errno.ENOSPC,
                f"no space left on the disk that holds {final.parent} while writing object {key!r}: free space "
                "there (or move PMG_STORE_ROOT), then clear the failed tasks; objects already written are whole",
            ) from error
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise KeyError(f"no object {key!r} in store {self.root}")
        yield path


class S3Store:
    """An S3 bucket and prefix, through boto3. `endpoint_url` points at any S3 API (moto, MinIO)."""

    def __init__(self, root: str, endpoint_url: str = "", client=None):
        if not root.startswith("s3://"):
            raise ValueError(f"an S3 store root looks like s3://bucket/prefix, got {root!r}")
        self.root = root.rstrip("/")
        bucket, _, prefix = root[len("s3://") :].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url or None)
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: the object appears whole or not at all.
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(f"no object {key!r} in store {self.root}") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as error:
            if error.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise

    def list_keys(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pmg-s3-") as tmp_dir:
            tmp = Path(tmp_dir) / Path(key).name
            yield tmp
            # upload_file switches to multipart for large files, so memory stays bounded.
            self.client.upload_file(str(tmp), self.bucket, self._key(key))

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pmg-s3-") as tmp_dir:
            tmp = Path(tmp_dir) / Path(key).name
            with open(tmp, "wb") as out:
                out.write(self.get_bytes(key))
            yield tmp


def open_store(settings: Settings) -> ObjectStore:
    """The store named by `settings.store_root`: s3://bucket/prefix or a local folder."""
    if settings.store_root.startswith("s3://"):
        return S3Store(settings.store_root, endpoint_url=settings.s3_endpoint_url)
    return LocalStore(settings.store_root)


# Tables travel as Parquet. These helpers are the only place that knows it.


def write_table(store: ObjectStore, key: str, table: pa.Table | pd.DataFrame) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with store.writing(key) as path:
        pq.write_table(table, path, compression="zstd")
    return key


def read_table(store: ObjectStore, key: str) -> pa.Table:
    import pyarrow.parquet as pq

    with store.reading(key) as path:
        return pq.read_table(path)


def read_frame(store: ObjectStore, key: str) -> pd.DataFrame:
    return read_table(store, key).to_pandas()


def write_json(store: ObjectStore, key: str, payload: dict) -> str:
    import json

    store.put_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
    return key


def read_json(store: ObjectStore, key: str) -> dict:
    import json

    return json.loads(store.get_bytes(key))


def image_bytes(image) -> bytes:
    """PNG bytes of a PIL image, with its `info` text chunks kept (scores travel inside the PNG)."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for name, value in image.info.items():
        if isinstance(value, str):
            meta.add_text(name, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()
