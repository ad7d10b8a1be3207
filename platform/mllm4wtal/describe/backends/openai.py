"""The ``openai`` backend: any OpenAI-compatible chat-completions server that accepts images.

A vLLM or SGLang server a lab already runs (``vllm serve Qwen/Qwen2.5-VL-7B-Instruct``), or
any other endpoint speaking ``POST {base}/chat/completions``. Each prompt is one request: a
user message with the video's frames as base64 JPEG ``image_url`` parts, then the prompt
text; greedy (temperature 0) unless told otherwise. The requests of a video run
``concurrency`` at a time (the server batches them); frames are encoded once per video.

- URL: ``api_base`` option (``--api-base``) or ``$OPENAI_BASE_URL``, e.g.
  ``http://gpu-node:8000/v1``. Model: ``--model`` or ``$OPENAI_MODEL``; without either, the
  one model the server lists at ``/models``.
- Key: read from the environment variable ``api_key_env`` names (default
  ``OPENAI_API_KEY``; may be unset for a local server). It is sent in the Authorization
  header only and never logged, recorded or put into an error message.
- Retries with exponential back-off (and the server's Retry-After) on HTTP 408, 409, 429,
  5xx, timeouts and dropped connections; any other HTTP error (401, 404, 400: a wrong key,
  model or request) stops the job at once, since every other video would fail the same way.

Standard library only (urllib); Pillow encodes the JPEGs.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mllm4wtal.describe.backends import Answer, Backend, BackendSpec, FatalBackendError, Query
from mllm4wtal.describe.backends.frames import Frames
from mllm4wtal.errors import UserError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class RequestFailed(RuntimeError):
    """A request that failed after all retries (the job goes on with the next video)."""


def _jpeg_data_url(frame: np.ndarray, quality: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(
        buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend(Backend):
    name = "openai"
    needs_frames = True
    thread_safe = True

    def __init__(self, spec: BackendSpec, vocabulary: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec, vocabulary)
        base = str(spec.option("api_base", "") or os.environ.get("OPENAI_BASE_URL", ""))
        if not base:
            raise UserError("backend 'openai' needs the server URL: --api-base "
                            "http://HOST:PORT/v1 or $OPENAI_BASE_URL")
        if not base.startswith(("http://", "https://")):
            raise UserError(f"--api-base {base!r} must start with http:// or https://")
        self.base = base.rstrip("/")
        self.key_env = str(spec.option("api_key_env", DEFAULT_KEY_ENV))
        self._key = os.environ.get(self.key_env, "")
        self.timeout = float(spec.option("timeout", 120.0))
        self.retries = int(spec.option("retries", 5))
        self.backoff = float(spec.option("backoff", 1.0))
        self.max_backoff = float(spec.option("max_backoff", 60.0))
        self.concurrency = int(spec.option("concurrency", 8))
        self.max_tokens = int(spec.option("max_new_tokens", 256))
        self.temperature = float(spec.option("temperature", 0.0))
        self.jpeg_quality = int(spec.option("jpeg_quality", 90))
        self.detail = spec.option("image_detail")  # "low"/"high"/"auto" where supported
        if self.retries < 0 or self.concurrency < 1 or self.timeout <= 0:
            raise UserError("--retries >= 0, --concurrency >= 1 and --timeout > 0, please")
        # all prompts of a video in one call to answer(), `concurrency` requests at a time
        self.batch_size = 1 << 30
        self.model = spec.model or os.environ.get("OPENAI_MODEL", "") or self._served_model()
        self._images: OrderedDict[str, list[str]] = OrderedDict()  # frames digest -> urls
        self._images_lock = threading.Lock()

    def __repr__(self) -> str:  # no key in here, ever
        return f"OpenAIBackend(base={self.base!r}, model={self.model!r})"

    # ------------------------------------------------------------------ HTTP

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * 2 ** attempt)
        return base * (0.5 + random.random() / 2)  # jitter: many workers, one server

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """JSON over HTTP with retries; returns the decoded response body."""
        url = f"{self.base}{path}"
        data = json.dumps(body).encode("utf-8") if body is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(url, data=data, method=method,
                                             headers=self._headers())
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    last = f"{method} {url}: the answer is not JSON: {raw[:200]!r}"
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
                last = f"{method} {url}: HTTP {e.code} {e.reason}: {detail}".strip()
                if e.code not in RETRY_STATUS:
                    hint = {401: "; check the key in $" + self.key_env,
                            403: "; check the key in $" + self.key_env,
                            404: "; check --api-base (it usually ends in /v1) and --model"
                            }.get(e.code, "")
                    raise FatalBackendError(self._scrub(last) + hint) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except (urllib.error.URLError, TimeoutError, ConnectionError,
                    http.client.HTTPException) as e:  # TimeoutError: also socket.timeout
                reason = getattr(e, "reason", e)
                last = f"{method} {url}: {type(reason).__name__}: {reason}"
            if attempt < self.retries:
                wait = self._delay(attempt, retry_after)
                log.warning("%s; retry %d of %d in %.1f s", self._scrub(last), attempt + 1,
                            self.retries, wait)
                time.sleep(wait)
        raise RequestFailed(self._scrub(f"{last} (after {self.retries + 1} attempts)"))

    def _served_model(self) -> str:
        try:
            listing = self.request("GET", "/models")
        except RequestFailed as e:
            raise FatalBackendError(f"no --model given and the server's model list is out of "
                                    f"reach: {e}") from None
        names = [m.get("id", "") for m in (listing or {}).get("data", [])
                 if isinstance(m, dict)]
        if len(names) != 1:
            raise UserError(f"{self.base}/models lists {len(names)} models "
                            f"({', '.join(names[:5]) or 'none'}); choose one with --model")
        return str(names[0])

    # ------------------------------------------------------------------ chat

    def images(self, frames: Frames) -> list[str]:
        """The frames as JPEG data URLs, encoded once per video (all its prompts share them)."""
        with self._images_lock:
            if frames.digest in self._images:
                return self._images[frames.digest]
        urls = [_jpeg_data_url(f, self.jpeg_quality) for f in frames.array]
        with self._images_lock:
            self._images[frames.digest] = urls
            while len(self._images) > 4:
                self._images.popitem(last=False)
        return urls

    def payload(self, query: Query) -> dict[str, Any]:
        """The chat-completions request of one query."""
        content: list[dict[str, Any]] = []
        if query.frames is not None:
            for url in self.images(query.frames):
                image: dict[str, Any] = {"url": url}
                if self.detail:
                    image["detail"] = self.detail
                content.append({"type": "image_url", "image_url": image})
        content.append({"type": "text", "text": query.prompt})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _one(self, query: Query) -> Answer:
        resp = self.request("POST", "/chat/completions", self.payload(query))
        try:
            choice = resp["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RequestFailed(f"{self.base}/chat/completions: unexpected answer "
                                f"{str(resp)[:200]}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        finish = str(choice.get("finish_reason") or "")
        tokens = (resp.get("usage") or {}).get("completion_tokens")
        return Answer(str(content).strip(), finish, tokens if isinstance(tokens, int) else None)

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        if len(queries) == 1 or self.concurrency == 1:
            return [self._one(q) for q in queries]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries)),
                                thread_name_prefix="openai") as pool:
            return list(pool.map(self._one, queries))
