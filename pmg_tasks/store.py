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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from pmg_tasks.settings import S3, Settings


class ObjectStore(Protocol):
    root: str

    # Uploads (or writes) this many objects at once in put_many.
    concurrency: int

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def delete_keys(self, keys: Sequence[str]) -> int: ...
    def url(self, key: str) -> str: ...
    def transfer_stats(self) -> dict:
        """Requests and retries so far (S3); empty for a local folder."""
        ...

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

    concurrency = 4

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

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        return put_many_with_pool(self.put_bytes, items, self.concurrency)

    def transfer_stats(self) -> dict:
        return {}

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
        return self.delete_keys(self.list_keys(prefix))

    def delete_keys(self, keys: Sequence[str]) -> int:
        for key in keys:
            self.path(key).unlink(missing_ok=True)
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


# What each kind of object is, for readers that go by Content-Type (browsers, CDNs, Spark's listing).
CONTENT_TYPES = {
    ".png": "image/png", ".parquet": "application/vnd.apache.parquet", ".json": "application/json",
    ".html": "text/html; charset=utf-8", ".yaml": "application/yaml", ".safetensors": "application/octet-stream",
}  # fmt: skip
# A creative's name is a hash of what made it, so its bytes never change: cache it for a year. Manifests,
# markers and reports are rewritten by a rerun: always revalidate.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


def object_headers(key: str) -> dict[str, str]:
    """Content-Type and Cache-Control of the object at `key`."""
    name = key.rsplit("/", 1)[-1]
    content_type = "application/json" if name == "_SUCCESS" else CONTENT_TYPES.get(Path(name).suffix, "")
    cache = IMMUTABLE if key.startswith("creatives/") else REVALIDATE
    return {"ContentType": content_type or "application/octet-stream", "CacheControl": cache}


def put_many_with_pool(put, items: Iterable[tuple[str, bytes]], threads: int) -> int:
    """`put(key, data)` for every item on `threads` threads, with at most 2 x threads items held at once;
    the first failure is raised after the rest have finished."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    done, pending, errors = 0, set(), []
    with ThreadPoolExecutor(threads, thread_name_prefix="pmg-put") as pool:
        for key, data in items:
            if len(pending) >= 2 * threads:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done += _collect(finished, errors)
            pending.add(pool.submit(put, key, data))
        done += _collect(wait(pending)[0], errors)
    if errors:
        raise errors[0]
    return done


def _collect(futures, errors: list) -> int:
    ok = 0
    for future in futures:
        if future.exception() is not None:
            errors.append(future.exception())
        else:
            ok += 1
    return ok


class S3Store:
    """An S3 bucket and prefix, through boto3 (pmg_tasks/s3_client.py makes the client). Every object is
    written with its content type and cache headers; large ones in parts; many at once on a bounded pool."""

    def __init__(self, root: str, endpoint_url: str = "", client=None, options: S3 | None = None):
        from pmg_tasks.s3_client import count_retries
        from pmg_tasks.settings import S3

        if not root.startswith("s3://"):
            raise ValueError(f"an S3 store root looks like s3://bucket/prefix, got {root!r}")
        self.root = root.rstrip("/")
        bucket, _, prefix = root[len("s3://") :].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or S3()
        if client is None:
            import boto3

            from pmg_tasks.s3_client import botocore_config

            client = boto3.client("s3", endpoint_url=endpoint_url or None, config=botocore_config(self.options))
        self.client = client
        self.concurrency = self.options.upload_threads
        self.retries = count_retries(client)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer(self):
        from boto3.s3.transfer import TransferConfig

        mib = 1024 * 1024
        return TransferConfig(
            multipart_threshold=self.options.multipart_threshold_mb * mib,
            multipart_chunksize=self.options.multipart_chunk_mb * mib, max_concurrency=4, use_threads=True,
        )  # fmt: skip

    def put_bytes(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: the object appears whole or not at all; so is a completed multipart
        # upload, which is what a large object gets.
        if len(data) >= self.options.multipart_threshold_mb * 1024 * 1024:
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, self._key(key), ExtraArgs=object_headers(key), Config=self._transfer()
            )
            return
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **object_headers(key))

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Upload every (key, bytes), `options.upload_threads` at a time; returns how many."""
        return put_many_with_pool(self.put_bytes, items, self.concurrency)

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
        return self.delete_keys(self.list_keys(prefix))

    def delete_keys(self, keys: Sequence[str]) -> int:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise RuntimeError(
                    f"S3 refused to delete {len(response['Errors'])} objects of {self.root} (e.g. {first['Key']}: "
                    f"{first.get('Code')} {first.get('Message')})"
                )
        return len(keys)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def transfer_stats(self) -> dict:
        return self.retries.summary()

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pmg-s3-") as tmp_dir:
            tmp = Path(tmp_dir) / Path(key).name
            yield tmp
            # upload_file switches to multipart from the threshold, so memory stays bounded.
            self.client.upload_file(
                str(tmp), self.bucket, self._key(key), ExtraArgs=object_headers(key), Config=self._transfer()
            )

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pmg-s3-") as tmp_dir:
            tmp = Path(tmp_dir) / Path(key).name
            with open(tmp, "wb") as out:
                out.write(self.get_bytes(key))
            yield tmp


def open_store(settings: Settings) -> ObjectStore:
    """The store named by `settings.store_root`: s3://bucket/prefix (through the Airflow connection where
    one is defined, see pmg_tasks/s3_client.py) or a local folder."""
    if settings.store_root.startswith("s3://"):
        from pmg_tasks.s3_client import s3_client

        client, _ = s3_client(settings)
        return S3Store(settings.store_root, client=client, options=settings.s3)
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
