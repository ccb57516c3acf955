"""``flare-onnx serve``: a JSON HTTP service on Starlette + uvicorn, with dynamic micro-batching.

Requests wait in a bounded queue; one inference thread takes everything queued for the same
task and options (up to ``max_batch_texts`` texts, after at most ``max_wait_ms``), runs it as
one call (the model sorts it into length batches under its token budget) and answers each
request with its own slice. The event loop never runs inference. Limits are checked before
any tokenization: body size (413, from Content-Length or while reading, before buffering the
whole body), texts per request and characters per text (422), a full queue (503 with
Retry-After), and a per-request deadline (504). Needs ``pip install "flare-onnx[serve]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ._json import to_jsonable
from .errors import FlareOnnxError, InferenceError, InputError, TaskNotAvailableError
from .model import FlareModel, load

__all__ = ["ServeConfig", "create_app", "serve"]

ROUTES = {"fill-mask": "fill_mask", "embed": "embed", "tag": "tag", "classify": "classify"}
#: options each verb accepts from the JSON body, with their types
OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "fill_mask": {"top_k": int},
    "embed": {"pooling": str, "normalize": bool, "window": str},
    "tag": {"aggregation": str, "window": str},
    "classify": {"top_k": (int, type(None))},
}


@dataclass
class ServeConfig:
    max_body_bytes: int = 1_000_000
    max_texts: int = 64
    max_chars: int = 10_000
    queue_size: int = 256  # texts waiting, across requests
    max_batch_texts: int = 64
    max_wait_ms: float = 5.0
    deadline_s: float = 30.0
    api_key: str | None = None


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _Job:
    verb: str
    options: dict[str, Any]
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float


class MicroBatcher:
    """A bounded queue and one inference thread that merges compatible requests."""

    def __init__(self, model: FlareModel, cfg: ServeConfig) -> None:
        self.model, self.cfg = model, cfg
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="flare-onnx-inference", daemon=True)
        self.batches = 0
        self._thread.start()

    def submit(self, verb: str, options: dict[str, Any], texts: list[str]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if self._stop:
                raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"})
            if self._queued_texts + len(texts) > self.cfg.queue_size:
                raise HTTPError(503, "the queue is full; retry shortly", {"Retry-After": "1"})
            self._queue.append(_Job(verb, options, texts, fut, loop, time.monotonic()))
            self._queued_texts += len(texts)
            self._cond.notify()
        return fut

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                self._cond.wait()
            first = self._queue[0]
            # a short wait lets concurrent requests join the batch
            deadline = first.enqueued + self.cfg.max_wait_ms / 1000
            while time.monotonic() < deadline and self._count(first) < self.cfg.max_batch_texts and not self._stop:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            batch, n, rest = [], 0, deque()
            while self._queue:
                job = self._queue.popleft()
                same = job.verb == first.verb and job.options == first.options
                if same and (not batch or n + len(job.texts) <= self.cfg.max_batch_texts):
                    batch.append(job)
                    n += len(job.texts)
                else:
                    rest.append(job)
            self._queue = rest
            self._queued_texts -= n
            return batch

    def _count(self, first: _Job) -> int:
        return sum(len(j.texts) for j in self._queue if j.verb == first.verb and j.options == first.options)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.future.done()]  # cancelled or timed out meanwhile
            if not live:
                continue
            texts = [t for j in live for t in j.texts]
            try:
                results = getattr(self.model, live[0].verb)(texts, **live[0].options)
                errors: list[BaseException | None] = [None] * len(live)
            except InputError:
                # one request's text was refused: run each request alone so the others succeed
                results, errors = [], []
                for j in live:
                    try:
                        results.extend(getattr(self.model, j.verb)(j.texts, **j.options))
                        errors.append(None)
                    except BaseException as exc:  # noqa: BLE001 - handed to the request
                        results.extend([None] * len(j.texts))
                        errors.append(exc)
            except BaseException as exc:  # noqa: BLE001
                results, errors = [None] * len(texts), [exc] * len(live)
            self.batches += 1
            pos = 0
            for job, err in zip(live, errors):
                part = results[pos : pos + len(job.texts)]
                pos += len(job.texts)
                job.loop.call_soon_threadsafe(_resolve, job.future, part, err)


def _resolve(fut: asyncio.Future, value: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)


async def _read_body(receive_stream: Any, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in receive_stream:
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(verb: str, payload: Any, cfg: ServeConfig) -> tuple[list[str], dict[str, Any]]:
    if not isinstance(payload, dict):
        raise HTTPError(422, 'the body must be a JSON object like {"texts": ["..."]}')
    texts = payload.get("texts")
    if not isinstance(texts, list) or not texts:
        raise HTTPError(422, '"texts" must be a non-empty list of strings')
    if len(texts) > cfg.max_texts:
        raise HTTPError(422, f'"texts" has {len(texts)} items; at most {cfg.max_texts} per request')
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise HTTPError(422, f"texts[{i}] is {type(t).__name__}, not a string")
        if len(t) > cfg.max_chars:
            raise HTTPError(422, f"texts[{i}] has {len(t)} characters; at most {cfg.max_chars}")
        if not t.strip():
            raise HTTPError(422, f"texts[{i}] is empty")
    allowed = OPTIONS[verb]
    options = {}
    for key, value in payload.items():
        if key == "texts":
            continue
        if key not in allowed:
            raise HTTPError(422, f"unknown option {key!r}; {verb} takes {', '.join(allowed) or 'no options'}")
        kind = allowed[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise HTTPError(422, f"option {key!r} has the wrong type")
        options[key] = value
    return texts, options


def create_app(model: FlareModel, cfg: ServeConfig | None = None) -> Any:
    """The Starlette application serving ``model`` (already loaded and verified)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    cfg = cfg or ServeConfig()
    state: dict[str, Any] = {"batcher": None}

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if not cfg.api_key:
            return True
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        import hmac

        return hmac.compare_digest(given.encode(), cfg.api_key.encode())

    def endpoint(route: str) -> Callable[[Request], Awaitable[JSONResponse]]:
        verb = ROUTES[route]

        async def handle(request: Request) -> JSONResponse:
            if not authorized(request):
                return error(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)")
            if verb not in model.tasks:
                return error(404, f"this bundle does not offer {route}; it offers {', '.join(model.tasks)}")
            length = request.headers.get("content-length")
            try:
                if length is not None and int(length) > cfg.max_body_bytes:
                    return error(413, f"the request body is larger than {cfg.max_body_bytes} bytes")
                if "json" not in request.headers.get("content-type", "application/json"):
                    return error(415, "send the body as application/json")
                body = await _read_body(request.stream(), cfg.max_body_bytes)
                try:
                    payload = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    return error(400, "the body is not valid JSON")
                texts, options = _validate(verb, payload, cfg)
                batcher = state["batcher"]
                if batcher is None:
                    return error(503, "the model is not ready", {"Retry-After": "1"})
                fut = batcher.submit(verb, options, texts)
                try:
                    results = await asyncio.wait_for(fut, timeout=cfg.deadline_s)
                except asyncio.TimeoutError:
                    return error(504, f"the request did not finish within {cfg.deadline_s} s")
            except HTTPError as exc:
                return error(exc.status, exc.message, exc.headers)
            except (InputError, TaskNotAvailableError) as exc:
                return error(422, str(exc))
            except InferenceError as exc:
                return error(500, str(exc))
            except ValueError:
                return error(400, "invalid Content-Length")
            key = {"fill_mask": "masks", "embed": "embeddings", "tag": "results", "classify": "labels"}[verb]
            return JSONResponse({key: to_jsonable(results), "model": model.manifest.task, "precision": model.precision})

        return handle

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        if state["batcher"] is None:
            return error(503, "loading")
        return JSONResponse({"status": "ready", "tasks": list(model.tasks), "precision": model.precision})

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_spec(model, cfg))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(model, cfg)
        yield
        batcher, state["batcher"] = state["batcher"], None
        await asyncio.get_running_loop().run_in_executor(None, batcher.stop)

    routes = [Route(f"/v1/{r}", endpoint(r), methods=["POST"]) for r in ROUTES]
    routes += [Route("/health", health), Route("/ready", ready), Route("/openapi.json", openapi)]
    return Starlette(routes=routes, lifespan=lifespan)


def openapi_spec(model: FlareModel, cfg: ServeConfig) -> dict[str, Any]:
    def op(verb: str) -> dict[str, Any]:
        props: dict[str, Any] = {
            "texts": {"type": "array", "items": {"type": "string", "maxLength": cfg.max_chars}, "minItems": 1, "maxItems": cfg.max_texts}
        }
        kinds = {int: "integer", str: "string", bool: "boolean"}
        for name, kind in OPTIONS[verb].items():
            props[name] = {"type": kinds.get(kind, "integer") if not isinstance(kind, tuple) else "integer", "nullable": isinstance(kind, tuple)}
        return {
            "post": {
                "summary": verb.replace("_", "-"),
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["texts"], "properties": props}}}},
                "responses": {str(c): {"description": d} for c, d in [(200, "results"), (401, "API key"), (404, "task not in bundle"), (413, "body too large"), (422, "invalid input"), (503, "queue full, retry after"), (504, "deadline")]},
            }
        }

    paths = {f"/v1/{r}": op(v) for r, v in ROUTES.items() if v in model.tasks}
    paths["/health"] = {"get": {"summary": "process alive", "responses": {"200": {"description": "ok"}}}}
    paths["/ready"] = {"get": {"summary": "model loaded", "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}}}}
    return {"openapi": "3.0.3", "info": {"title": "flare-onnx", "version": "1"}, "paths": paths}


def serve(
    bundle: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    precision: str | None = None,
    threads: int | None = None,
    cfg: ServeConfig | None = None,
) -> None:
    """Load the bundle, then serve it with uvicorn until SIGTERM/SIGINT (graceful)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError('serving needs uvicorn and starlette: pip install "flare-onnx[serve]"') from exc
    model = load(bundle, precision=precision, threads=threads)
    cfg = cfg or ServeConfig()
    if cfg.api_key is None:
        cfg.api_key = os.environ.get("FLARE_ONNX_API_KEY") or None
    uvicorn.run(create_app(model, cfg), host=host, port=port, log_level="warning", timeout_graceful_shutdown=math.ceil(cfg.deadline_s), access_log=False)
