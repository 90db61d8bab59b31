"""The openai backend: chat completions from an OpenAI-compatible endpoint (a `vllm serve` on GPU nodes).

Requests go out `concurrency` at a time, each with a timeout; a timeout, a refused connection, a 429 or a
5xx is retried after an exponential, jittered backoff (a 429's Retry-After wins); a request that still has
no answer comes back as Completion(None, error), and the stage decides what that costs. The JSON schema
travels as `response_format`, which vLLM turns into structured decoding. Standard library only.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pmg_tasks.keywords.backends import Completion, Request

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class NonRetryableError(Exception):
    pass


class OpenAIGenerator:
    def __init__(
        self, endpoint_url: str, model: str, api_key: str = "", concurrency: int = 8, timeout_s: float = 60.0,
        retries: int = 3, backoff_s: float = 0.5,
    ):
        self.url = endpoint_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="pmg-llm") as pool:
            return list(pool.map(self._complete, requests))

    def close(self) -> None:
        pass

    def body(self, request: Request) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}],
            "temperature": 0,
            "max_tokens": request.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema},
            },
        }

    def _complete(self, request: Request) -> Completion:
        payload = json.dumps(self.body(request)).encode()
        error = ""
        for attempt in range(self.retries + 1):
            try:
                return self._post(payload)
            except RetryableError as failure:
                error = str(failure)
                if attempt == self.retries:
                    break
                delay = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, MAX_RETRY_AFTER_S))
                log.debug("attempt %d failed (%s); retrying in %.2fs", attempt + 1, error, delay)
                time.sleep(delay)
            except NonRetryableError as failure:
                return Completion(None, error=str(failure))
        return Completion(None, error=f"no answer after {self.retries + 1} attempts: {error}")

    def _post(self, payload: bytes) -> Completion:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        http_request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as failure:
            detail = failure.read(300).decode("utf-8", "replace")
            message = f"HTTP {failure.code} from {self.url}: {detail}"
            if failure.code in RETRYABLE_STATUS:
                raise RetryableError(message, _retry_after(failure.headers.get("Retry-After"))) from None
            raise NonRetryableError(message) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as failure:
            raise RetryableError(f"{type(failure).__name__} from {self.url}: {failure}") from None
        try:
            envelope = json.loads(raw)
            choice = envelope["choices"][0]
            text = choice["message"]["content"]
            usage = envelope.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            # A broken envelope is the server's fault, not the model's: ask again.
            raise RetryableError(f"malformed response from {self.url}: {raw[:200]!r}") from None
        # An answer without text is still an answer: it parses as unusable, and the catalog steps in.
        return Completion(
            text if isinstance(text, str) else "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
