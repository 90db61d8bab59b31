"""What the fault drills share: a PostgreSQL warehouse with a password, an OpenAI-compatible LLM on loopback
that needs an API key and times out for some requests, a StatsD listener, and one night's settings."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.keywords.conftest import ChatServer, well_formed
from tests.warehouse.pg_fixtures import _admin_connection, postgres_server  # noqa: F401

DS = "2026-11-20"
# Tonight's keyword requests that never get an answer in time: one in SLOW_SHARE, chosen by content.
SLOW_SHARE = 8
LLM_TIMEOUT_S = 0.5


class StatsdListener:
    """A UDP socket on loopback that keeps every StatsD line it receives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.extend(data.decode(errors="replace").splitlines())

    def counters(self, since: int = 0) -> dict[str, int]:
        """Counter name -> the sum of what arrived (from line `since` on)."""
        totals: dict[str, int] = {}
        for line in self.lines[since:]:
            name, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            if kind.startswith("c"):
                totals[name] = totals.get(name, 0) + int(float(value))
        return totals

    def close(self):
        self._stop.set()
        self.sock.close()
        self.thread.join(timeout=2)


class FlakyLLM:
    """ChatServer answers: keyword requests of one user in SLOW_SHARE take longer than the client waits;
    `down` makes every keyword request time out."""

    def __init__(self, server: ChatServer):
        self.server = server
        self.down = False
        server.answer = self.answer

    def answer(self, body, attempt):
        name = body["response_format"]["json_schema"]["name"]
        if name == "headline":
            return 200, json.dumps({"headline": "Made for your evenings"}), 0.0
        content = body["messages"][-1]["content"].encode()
        slow = int(hashlib.sha256(content).hexdigest(), 16) % SLOW_SHARE == 0 and name != "item_keywords"
        if self.down or slow:
            return 200, json.dumps({"keywords": []}), LLM_TIMEOUT_S * 3
        return well_formed(body, attempt)


@dataclass
class Drills:
    """The shared night: its settings, servers and secrets, and the figures each drill reports."""

    settings: object
    database: str
    role: str
    password: str
    api_key: str
    llm: FlakyLLM
    statsd: StatsdListener
    figures: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def drills(postgres_server, test_size_models, tmp_path_factory):  # noqa: F811
    """A seeded PostgreSQL warehouse reached with a password, the flaky LLM behind an API key, StatsD on,
    test-size models, one retry a second apart; everything stopped and dropped afterwards."""
    from pmg_tasks.cli import seed_demo
    from pmg_tasks.settings import Settings

    token = secrets.token_hex(5)
    database = role = f"pmg_drill_{token}"
    password = f"pw-{secrets.token_hex(8)}"
    api_key = f"sk-drill-{secrets.token_hex(12)}"
    admin, url = _admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        cursor.execute(f'CREATE DATABASE "{database}" OWNER "{role}" ENCODING \'UTF8\' TEMPLATE template0')
    server, statsd = ChatServer(), StatsdListener()
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("PMG_DRILL_LLM_KEY", api_key)
        for name, value in {"STATSD_ON": "True", "STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(statsd.port),
                            "STATSD_PREFIX": "airflow"}.items():  # fmt: skip
            patch.setenv(f"AIRFLOW__METRICS__{name}", value)
        home = tmp_path_factory.mktemp("drills") / "pmg"
        settings = Settings(
            home=home,
            warehouse_url=f"postgresql+psycopg2://{role}:{password}@{url.host}:{url.port or 5432}/{database}",
            models=test_size_models,
            keyword_backend="openai",
            keywords={"endpoint_url": server.url, "model": "drill-llm", "api_key_env": "PMG_DRILL_LLM_KEY",
                      "timeout_s": LLM_TIMEOUT_S, "retries": 0, "concurrency": 4, "max_failed_fraction": 0.3},
            retries={"per_task": 1, "delay_s": 1},
            generation={"checkpoint_requests": 1, "requests_per_shard": 8},
        )  # fmt: skip
        seed_demo(settings, DS, users=40, items=24, days=7, overwrite_campaigns=True)
        yield Drills(settings, database, role, password, api_key, FlakyLLM(server), statsd)
    finally:
        patch.undo()
        server.close()
        statsd.close()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


class ConnectionDropper(threading.Thread):
    """Holds a lock on the events table, and terminates the first warehouse session of `role` that waits on
    it (the extract task's query), then lets go: the warehouse connection drops mid-extraction."""

    def __init__(self, database: str, role: str, timeout_s: float = 300):
        super().__init__(daemon=True)
        self.database, self.role, self.timeout_s = database, role, timeout_s
        self.terminated: list[int] = []
        self.locked = threading.Event()

    def run(self):
        import psycopg2

        admin, url = _admin_connection()
        holder = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                                  dbname=self.database)  # fmt: skip
        try:
            with holder.cursor() as cursor:
                cursor.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                self.locked.set()
                deadline = time.monotonic() + self.timeout_s
                while not self.terminated and time.monotonic() < deadline:
                    with admin.cursor() as look:
                        look.execute(
                            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s "
                            "AND wait_event_type = 'Lock'", (self.database, self.role),
                        )  # fmt: skip
                        for (pid,) in look.fetchall():
                            look.execute("SELECT pg_terminate_backend(%s)", (pid,))
                            self.terminated.append(pid)
                    time.sleep(0.1)
        finally:
            holder.rollback()
            holder.close()
            admin.close()


def store_files(root: Path) -> dict[str, str]:
    """Every file below a local store, as key -> sha256 of its bytes."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }  # fmt: skip


def write_figures(figures: dict) -> None:
    """Where benchmarks/drills.py asked for the drills' figures (PMG_DRILLS_RESULTS), written as JSON."""
    target = os.environ.get("PMG_DRILLS_RESULTS")
    if target:
        # Each drill module adds its own figures to what the modules before it wrote.
        earlier = json.loads(Path(target).read_text()) if Path(target).exists() else {}
        Path(target).write_text(json.dumps({**earlier, **figures}, indent=2, sort_keys=True))
