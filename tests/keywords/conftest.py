"""A small shop staged in the object store, as the keyword stage finds it: items, histories, campaigns."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest
import yaml

from pmg_tasks.histories import build_histories
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame, write_table

DS = "2026-11-20"
TARGETS = ["m00000", "m00001", "m00002"]


def stage_shop(
    settings, ds: str = DS, users: int = 30, items: int = 20, seed: int = 0, edit_catalog=None, extra_events=None
):
    """Catalog and valid events for `ds` in the store, histories built from them; returns the histories.
    The same seed gives the same shop on any date, so a second night differs only by what the edits add."""
    from pmg_tasks.demo.seed import make_catalog, make_events

    rng = np.random.default_rng(seed)
    catalog = make_catalog(items, rng)
    if edit_catalog is not None:
        catalog = edit_catalog(catalog)
    events, _ = make_events(catalog, users, dt.date.fromisoformat(ds), 2, rng, bad_fraction=0.0)
    if extra_events is not None:
        events = extra_events(events)
    store = open_store(settings)
    write_table(store, run_key(ds, "items.parquet"), catalog)
    write_table(store, run_key(ds, "events_valid.parquet"), events)
    build_histories(settings, ds)
    return read_frame(store, run_key(ds, "histories.parquet"))


def write_campaigns(settings, denylist=(), targets=TARGETS) -> None:
    campaign = {
        "campaign_id": "test", "start_date": "2026-01-01", "end_date": "2026-12-31",
        "target_items": list(targets), "denylist": list(denylist),
    }
    with open(settings.campaigns_file, "w") as out:
        yaml.safe_dump({"campaigns": [campaign]}, out)


@pytest.fixture(scope="session")
def lm(test_size_models):
    """The test-size causal LM behind the transformers backend, loaded once."""
    from pmg_tasks.keywords.backends.transformers_backend import TransformersGenerator

    return TransformersGenerator(test_size_models.llm, batch_size=8)


def transformers_settings(settings, llm_path: str, max_new_tokens: int = 12):
    return settings.model_copy(update={
        "keyword_backend": "transformers",
        "models": settings.models.model_copy(update={"llm": llm_path}),
        "keywords": settings.keywords.model_copy(update={"max_new_tokens": max_new_tokens}),
    })


@pytest.fixture
def shop(settings):
    """Settings with a staged shop and one campaign targeting three items."""
    settings.home.mkdir(parents=True, exist_ok=True)
    stage_shop(settings)
    write_campaigns(settings)
    return settings


class ChatServer:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 with canned answers (no model behind it).

    `answer(body, attempt)` decides each response: (status, content or raw body, delay in seconds). The
    default answers every request in the declared JSON shape. `attempt` counts earlier requests with the
    same body, so a test can fail the first try and succeed on the retry.
    """

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.answer = well_formed
        self.max_in_flight = 0
        self._in_flight = 0
        self._attempts: dict[bytes, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                with server._lock:
                    attempt = server._attempts.get(raw, 0)
                    server._attempts[raw] = attempt + 1
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    status, content, delay = server.answer(body, attempt)
                    time.sleep(delay)
                    if isinstance(content, bytes):
                        payload = content
                    else:
                        payload = json.dumps({
                            "id": "cmpl-test", "object": "chat.completion", "model": body["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                        }).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server._lock:
                        server._in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def calls(self, schema_name: str | None = None) -> int:
        return sum(1 for r in self.requests
                   if schema_name in (None, r["response_format"]["json_schema"]["name"]))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def schema_fields(body: dict) -> list[str]:
    return list(body["response_format"]["json_schema"]["schema"]["properties"])


def data_lines(body: dict) -> list[str]:
    user = body["messages"][-1]["content"]
    return user.split("<data>\n", 1)[1].split("\n</data>", 1)[0].splitlines()


def well_formed(body: dict, attempt: int):
    """Keywords a careful model would give: per attribute, integrated, or for an item."""
    import json

    fields = schema_fields(body)
    if fields == ["keywords"]:
        name = body["response_format"]["json_schema"]["name"]
        words = ["moody neon", "retro poster"] if name == "integrated_keywords" else ["lone astronaut", "space"]
        return 200, json.dumps({"keywords": words}), 0.0
    return 200, json.dumps({f: [f"{f} pick"] for f in fields}), 0.0


@pytest.fixture
def chat_server():
    server = ChatServer()
    try:
        yield server
    finally:
        server.close()


def openai_settings(settings, server: ChatServer, **keywords):
    options = {"endpoint_url": server.url, "model": "test-model", "timeout_s": 2.0, "retries": 2,
               "backoff_s": 0.01, "concurrency": 4, **keywords}
    return settings.model_copy(
        update={"keyword_backend": "openai", "keywords": settings.keywords.model_copy(update=options)}
    )
