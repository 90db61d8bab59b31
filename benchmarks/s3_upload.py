"""Uploading a night's creatives to S3: the store's concurrent path against a plain sequential boto3 loop.

    .venv/bin/python -m benchmarks.s3_upload                  # 10,000 PNGs; writes benchmarks/results/s3_upload.json
    .venv/bin/python -m benchmarks.s3_upload --images 2000

A real S3 API server (moto in server mode) on loopback, started here and stopped by its PID. In the same run,
on the same server, the same 10,000 small PNGs (64x64, distinct bytes) go up twice, to fresh prefixes:
- baseline: `for key, data in images: client.put_object(...)`, one boto3 client, one request at a time;
- store: `S3Store.put_many`, what a shard's uploads use (bounded pool of `s3.upload_threads`, adaptive
  retries, content type and cache headers).
Seconds are wall time; the ratio is baseline / store. Target (issue 11): >= 5x. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "s3_upload.json"


def start_moto() -> tuple[subprocess.Popen, str]:
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto is None:
        raise SystemExit("moto_server is not installed: run `make setup`")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto_server did not start within 30 s")


def small_pngs(count: int) -> list[tuple[str, bytes]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(16)]
    images = []
    for i in range(count):
        pixels = base[i % 16].copy()
        pixels[0, 0] = (i % 256, (i // 256) % 256, 7)  # distinct bytes per image
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append((f"creatives/ds=2026-11-20/campaign=bench/{i:020d}.png", buffer.getvalue()))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args(argv if argv is not None else [])
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    import boto3

    from pmg_tasks.settings import Settings
    from pmg_tasks.store import open_store

    images = small_pngs(args.images)
    server, url = start_moto()
    try:
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="bench")
        started = time.perf_counter()
        for key, data in images:
            client.put_object(Bucket="bench", Key=f"sequential/{key}", Body=data)
        sequential = time.perf_counter() - started

        settings = Settings(store_root="s3://bench/store", s3_endpoint_url=url)
        store = open_store(settings)
        started = time.perf_counter()
        store.put_many(images)
        concurrent = time.perf_counter() - started
        uploaded = len(store.list_keys("creatives/"))
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    result = {
        "benchmark": "s3_upload",
        "command": f"python -m benchmarks.s3_upload --images {args.images}",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_before_after": None},
        "images": args.images,
        "bytes": sum(len(d) for _, d in images),
        "upload_threads": settings.s3.upload_threads,
        "sequential_boto3_seconds": round(sequential, 3),
        "store_put_many_seconds": round(concurrent, 3),
        "ratio": round(sequential / concurrent, 2),
        "target_ratio": 5.0,
        "store_uploaded": uploaded,
        "store_retries": store.transfer_stats()["retries"],
    }
    result["machine"]["load_average_before_after"] = list(os.getloadavg())
    print(f"{args.images} PNGs ({result['bytes'] / 1e6:.1f} MB) to moto on loopback:")
    print(f"  sequential boto3 loop : {sequential:8.2f} s  ({args.images / sequential:7.0f} objects/s)")
    print(f"  store.put_many ({settings.s3.upload_threads:2d} th): {concurrent:8.2f} s  ({args.images / concurrent:7.0f} objects/s)")
    print(f"  ratio                 : {result['ratio']:.2f}x (target >= 5x)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
