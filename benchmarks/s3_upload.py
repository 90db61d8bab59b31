"""Uploading a night's creatives to S3: the store's concurrent path against a plain sequential boto3 loop.

    .venv/bin/python -m benchmarks.s3_upload                  # 10,000 PNGs; writes benchmarks/results/s3_upload.json
    .venv/bin/python -m benchmarks.s3_upload --images 2000

A real S3 API server (moto in server mode) on loopback, started here and stopped by its PID. In the same run
the same 10,000 small PNGs (64x64, distinct bytes) go up twice, each time to a freshly started server (moto
keeps every object in its own memory and its cost per put grows with what it holds, so a phase that found
the other's objects there would be measured against a slower server):
- baseline: `for key, data in images: client.put_object(...)`, one boto3 client, one request at a time;
- store: `S3Store.put_many`, what a shard's uploads use (bounded pool of `s3.upload_threads`, adaptive
  retries, content type and cache headers).
Seconds are wall time; the ratio is baseline / store. Also recorded per phase: the CPU seconds the server
process and this client process spent. moto is one Python process, so no client can finish faster than the
server's own CPU time: `server_bound_ratio` (baseline wall / the server's CPU in the store phase) is the
most this server allows on this machine. Target (issue 11): >= 5x. Not a test: nothing asserts.
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(server: subprocess.Popen) -> None:
    os.kill(server.pid, signal.SIGTERM)
    server.wait(timeout=10)


def timed_phase(upload) -> dict:
    """Upload through `upload(url)` to a fresh server: wall, server CPU and client CPU seconds, and how many
    objects the server then holds (counted after the clock stops)."""
    import boto3

    server, url = start_moto()
    try:
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="bench")
        server_cpu, client_cpu, started = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        upload(url)
        wall = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
        pages = client.get_paginator("list_objects_v2").paginate(Bucket="bench")
        return {"seconds": round(wall, 3), "server_cpu_seconds": round(server_cpu, 3),
                "client_cpu_seconds": round(client_cpu, 3), "uploaded": sum(p.get("KeyCount", 0) for p in pages)}
    finally:
        stop(server)


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
    load_before = os.getloadavg()[0]

    def sequential(url: str) -> None:
        client = boto3.client("s3", endpoint_url=url)
        for key, data in images:
            client.put_object(Bucket="bench", Key=f"sequential/{key}", Body=data)

    stats = {}

    def concurrent(url: str) -> None:
        settings = Settings(store_root="s3://bench/store", s3_endpoint_url=url)
        store = open_store(settings)
        store.put_many(images)
        stats.update(store.transfer_stats(), threads=settings.s3.upload_threads)

    baseline = timed_phase(sequential)
    pooled = timed_phase(concurrent)
    result = {
        "benchmark": "s3_upload",
        "command": f"python -m benchmarks.s3_upload --images {args.images}",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "images": args.images,
        "bytes": sum(len(d) for _, d in images),
        "upload_threads": stats["threads"],
        "sequential_boto3": baseline,
        "store_put_many": pooled,
        "ratio": round(baseline["seconds"] / pooled["seconds"], 2),
        "server_bound_ratio": round(baseline["seconds"] / pooled["server_cpu_seconds"], 2),
        "target_ratio": 5.0,
        "store_retries": stats["retries"],
    }  # fmt: skip
    print(f"{args.images} PNGs ({result['bytes'] / 1e6:.1f} MB) to moto on loopback, a fresh server per phase:")
    for name, phase in (("sequential boto3 loop ", baseline), (f"store.put_many ({stats['threads']:2d} th)", pooled)):
        print(f"  {name}: {phase['seconds']:8.2f} s  ({args.images / phase['seconds']:7.0f} objects/s; server CPU "
              f"{phase['server_cpu_seconds']:.2f} s, client CPU {phase['client_cpu_seconds']:.2f} s)")
    print(f"  ratio                 : {result['ratio']:.2f}x (target >= 5x; this server allows at most "
          f"{result['server_bound_ratio']:.2f}x)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
