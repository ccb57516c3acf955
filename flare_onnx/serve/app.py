"""``flare-onnx serve``: a JSON HTTP service on Starlette + uvicorn, with dynamic micro-batching.

Requests wait in a bounded queue; one inference thread takes everything queued for the same
task and options (up to ``max_batch_texts`` texts, after at most ``max_wait_ms``), runs it as
one call (the model sorts it into length batches under its token budget) and answers each
request with its own slice. The event loop never runs inference. Limits are checked before
any tokenization: body size (413, from Content-Length or while reading, before buffering the
whole body), texts per request and characters per text (422), a full queue (503 with
Retry-After), and a per-request deadline (504). Needs ``pip install ".[serve]"`` (from a clone).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import importlib.util
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import FlareOnnxError, InputError
from .metrics import ServiceMetrics, access_log
from ..engine import FlareModel, load
from ..engine import TASKS, TaskSpec

__all__ = ["ServeConfig", "create_app", "serve"]


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
    max_connections: int = 512  # open connections before uvicorn answers 503
    max_tokens: int = 32_768  # tokens one request may hold (all its texts, whole texts for sliding windows)
    max_candidates: int = 10_000  # fill-mask: masks x top_k one request may ask for
    http: str = "auto"  # uvicorn's HTTP parser: "httptools" (C, where installed), "h11", or "auto"
    loop: str = "auto"  # event loop: "uvloop" (where installed), "asyncio", or "auto"
    max_connections_per_ip: int = 128  # open connections from one client address (0: no cap, e.g. behind a proxy)
    header_timeout_s: float = 10.0  # a request head (line and headers) must arrive within this
    body_timeout_s: float = 10.0  # and its body within this, once the head is in
    reference_fp32: bool = False  # also serve the bundle's FP32 graph at /v1/reference/... (the page compares)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _Job:
    task: str
    options: dict[str, Any]
    texts: list[str]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float


class MicroBatcher:
    """A bounded queue and one inference thread that merges compatible requests."""

    def __init__(self, model: FlareModel, cfg: ServeConfig, metrics: ServiceMetrics | None = None) -> None:
        self.model, self.cfg, self.metrics = model, cfg, metrics
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="flare-onnx-inference", daemon=True)
        self.batches = 0
        self._thread.start()

    def submit(self, task: str, options: dict[str, Any], texts: list[str]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if self._stop:
                raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"})
            if self._queued_texts + len(texts) > self.cfg.queue_size:
                raise HTTPError(503, "the queue is full; retry shortly", {"Retry-After": "1"})
            self._queue.append(_Job(task, options, texts, fut, loop, time.monotonic()))
            self._queued_texts += len(texts)
            self._cond.notify()
        return fut

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

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
            batch: list[_Job] = []
            rest: deque[_Job] = deque()
            n = 0
            while self._queue:
                job = self._queue.popleft()
                same = job.task == first.task and job.options == first.options
                if same and (not batch or n + len(job.texts) <= self.cfg.max_batch_texts):
                    batch.append(job)
                    n += len(job.texts)
                else:
                    rest.append(job)
            self._queue = rest
            self._queued_texts -= n
            return batch

    def _count(self, first: _Job) -> int:
        return sum(len(j.texts) for j in self._queue if j.task == first.task and j.options == first.options)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.future.done()]  # cancelled or timed out meanwhile
            if not live:
                continue
            texts = [t for j in live for t in j.texts]
            started = time.monotonic()
            if self.metrics is not None:
                self.metrics.batch_texts.observe(len(texts))
                for j in live:
                    self.metrics.queue_wait.observe(started - j.enqueued)
            try:
                results = self.model.predict(live[0].task, texts, live[0].options)
                errors: list[BaseException | None] = [None] * len(live)
            except InputError:
                # one request's text was refused: run each request alone so the others succeed
                results, errors = [], []
                for j in live:
                    try:
                        results.extend(self.model.predict(j.task, j.texts, j.options))
                        errors.append(None)
                    except BaseException as exc:  # noqa: BLE001 - handed to the request
                        results.extend([None] * len(j.texts))
                        errors.append(exc)
            except BaseException as exc:  # noqa: BLE001
                results, errors = [None] * len(texts), [exc] * len(live)
            self.batches += 1
            if self.metrics is not None:
                self.metrics.inference.observe(time.monotonic() - started)
            pos = 0
            for job, err in zip(live, errors):
                part = results[pos : pos + len(job.texts)]
                pos += len(job.texts)
                job.loop.call_soon_threadsafe(_resolve, job.future, part, err)


def _resolve(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)


async def _read_body(receive_stream: Any, limit: int, timeout_s: float) -> bytes:
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in receive_stream:
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the request body is larger than {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout=timeout_s)
    except asyncio.TimeoutError as exc:  # a slow body holds a connection and a concurrency slot
        raise HTTPError(408, f"the request body did not arrive within {timeout_s:g} s") from exc
    return b"".join(chunks)


_BUSY_BODY = b"too many connections from this address\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


def _guarded_protocol(header_timeout_s: float, max_per_ip: int, http: str = "auto") -> type:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with a deadline on every
    request head and a cap per client address.

    uvicorn only times connections out between requests, after a response, so a client that
    opens a connection and sends its head a byte at a time (slowloris) holds it, and a slot
    of ``limit_concurrency``, for ever. Here the head of each request — the first on a
    connection, and each next one on a kept-alive connection — must be complete within
    ``header_timeout_s`` or the connection is closed; and one client address may hold at most
    ``max_per_ip`` connections (0: no cap), so one slow client cannot take every slot.
    """
    from collections import Counter

    base: type[Any]
    if http == "httptools" or (http == "auto" and importlib.util.find_spec("httptools") is not None):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    per_ip: Counter[str] = Counter()

    class GuardedProtocol(base):  # type: ignore[misc]
        _head_timer: asyncio.TimerHandle | None = None
        _seen_cycle: Any = None
        _ip: str | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            in_flight = self.cycle is not None and not self.cycle.response_complete
            if not in_flight and not self.transport.is_closing():
                self.transport.close()

        def _note_head(self) -> None:
            # both parsers start a new request cycle the moment a request head is complete
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._seen_cycle = self.cycle
                self._disarm()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if self.client:
                self._ip = str(self.client[0])
                per_ip[self._ip] += 1
                if max_per_ip and per_ip[self._ip] > max_per_ip:
                    transport.write(_BUSY)
                    transport.close()
                    return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._note_head()

        def on_response_complete(self) -> None:
            self._arm()  # the next request's head on a kept-alive connection (before a pipelined one is read)
            super().on_response_complete()
            self._note_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._ip is not None:
                per_ip[self._ip] -= 1
                if per_ip[self._ip] <= 0:
                    del per_ip[self._ip]
                self._ip = None
            super().connection_lost(exc)

    return GuardedProtocol


def _openai_input(payload: Any, cfg: ServeConfig) -> tuple[list[str], str]:
    """Texts and encoding of an OpenAI embeddings request, within the service's limits."""
    if not isinstance(payload, dict):
        raise HTTPError(400, 'the body must be a JSON object like {"input": "...", "model": "..."}')
    unknown = set(payload) - {"input", "model", "encoding_format", "user", "dimensions"}
    if unknown:
        raise HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
    if payload.get("dimensions") is not None:
        raise HTTPError(400, "dimensions is not supported: this model's embeddings have a fixed size")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise HTTPError(400, f"encoding_format must be 'float' or 'base64', not {encoding!r}")
    raw = payload.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise HTTPError(400, "input must be a string or a non-empty list of strings (token arrays are not supported)")
    if len(texts) > cfg.max_texts:
        raise HTTPError(400, f"input has {len(texts)} items; at most {cfg.max_texts} per request")
    for i, t in enumerate(texts):
        if len(t) > cfg.max_chars:
            raise HTTPError(400, f"input[{i}] has {len(t)} characters; at most {cfg.max_chars}")
        if not t.strip():
            raise HTTPError(400, f"input[{i}] is empty")
    return texts, encoding


def _validate(spec: TaskSpec, payload: Any, cfg: ServeConfig) -> tuple[list[str], dict[str, Any]]:
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
    options = spec.parse_options({k: v for k, v in payload.items() if k != "texts"})
    return texts, options


def _check_work(model: FlareModel, spec: TaskSpec, texts: list[str], options: dict[str, Any], cfg: ServeConfig) -> int:
    """The request's tokens; refuse it when its work (tokens, fill-mask candidates) is over the limits (413)."""
    encodings = model.tokenizer.encode(texts)
    tokens = sum(len(e.ids) + 2 for e in encodings)
    if tokens > cfg.max_tokens:
        raise HTTPError(413, f"the request holds {tokens} tokens; at most {cfg.max_tokens} per request: split it")
    if spec.name == "fill-mask":
        mask_id = model.manifest.special.mask_id
        masks = sum(e.ids.count(mask_id) for e in encodings)
        asked = masks * int(options.get("top_k", spec.defaults()["top_k"]))
        if asked > cfg.max_candidates:
            raise HTTPError(
                413, f"the request asks for {asked} candidates ({masks} masks x top_k); at most {cfg.max_candidates}"
            )
    return tokens


_R = TypeVar("_R")


def _json_response_class(base: type[_R]) -> type[_R]:
    """Starlette's JSONResponse, rendered by orjson where it is installed (results are mostly
    floats, which the standard library writes several times slower)."""
    try:
        import orjson
    except ImportError:
        return base

    class ORJSONResponse(base):  # type: ignore[valid-type,misc]
        def render(self, content: Any) -> bytes:
            return orjson.dumps(content)

    return ORJSONResponse


def create_app(model: FlareModel, cfg: ServeConfig | None = None, reference: FlareModel | None = None) -> Any:
    """The Starlette application serving ``model`` (already loaded and verified), and
    ``reference`` — the same bundle's FP32 graph — at ``/v1/reference/{task}`` when given."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    cfg = cfg or ServeConfig()
    state: dict[str, Any] = {"batcher": None, "reference": None}
    models = {"batcher": model, "reference": reference}
    Answer = _json_response_class(JSONResponse)
    metrics = ServiceMetrics(model, lambda: state["batcher"].queued_texts if state["batcher"] else 0)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if not cfg.api_key:
            return True
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        # Starlette decodes header bytes as latin-1: take the bytes back, so a key with any
        # characters (sent as UTF-8) compares equal to the configured one
        return hmac.compare_digest(given.encode("latin-1", "replace"), cfg.api_key.encode("utf-8"))

    async def read_json(request: Request) -> Any:
        """The request's JSON body, within the size limit (HTTPError otherwise)."""
        length = request.headers.get("content-length")
        try:
            too_long = length is not None and int(length) > cfg.max_body_bytes
        except ValueError as exc:
            raise HTTPError(400, "invalid Content-Length") from exc
        if too_long:
            raise HTTPError(413, f"the request body is larger than {cfg.max_body_bytes} bytes")
        if "json" not in request.headers.get("content-type", "application/json"):
            raise HTTPError(415, "send the body as application/json")
        body = await _read_body(request.stream(), cfg.max_body_bytes, cfg.body_timeout_s)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise HTTPError(400, "the body is not valid JSON") from exc

    async def infer(
        spec: TaskSpec, texts: list[str], options: dict[str, Any], which: str = "batcher"
    ) -> tuple[list[Any], int]:
        """Check the work, queue it for the inference thread, and wait within the deadline;
        the results, and the request's tokens (counted once, for the limits, metrics and usage)."""
        if spec.name not in model.tasks:
            raise HTTPError(404, f"this bundle does not offer {spec.name}; it offers {', '.join(model.tasks)}")
        # work is measured in tokens, off the event loop, before anything is queued
        tokens = await asyncio.get_running_loop().run_in_executor(None, _check_work, model, spec, texts, options, cfg)
        metrics.tokens.inc(tokens)
        batcher = state[which]
        if batcher is None:
            raise HTTPError(503, "the model is not ready", {"Retry-After": "1"})
        fut = batcher.submit(spec.name, options, texts)
        try:
            results: list[Any] = await asyncio.wait_for(fut, timeout=cfg.deadline_s)
        except asyncio.TimeoutError as exc:
            raise HTTPError(504, f"the request did not finish within {cfg.deadline_s} s") from exc
        return results, tokens

    def answered(handler: Callable[[Request], Awaitable[Response]], fail: Callable[[int, str, dict[str, str] | None], Response]) -> Callable[[Request], Awaitable[Response]]:
        """Auth, then the handler; every deliberate failure becomes ``fail(status, message)``."""

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            response = await attempt(request)
            metrics.observe_request(request.url.path, response.status_code, started, getattr(request.state, "texts", None))
            return response

        async def attempt(request: Request) -> Response:
            if not authorized(request):
                return fail(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)", None)
            try:
                return await handler(request)
            except ClientDisconnect:  # the client went away mid-body: nothing to answer
                return Response(status_code=499)
            except HTTPError as exc:
                return fail(exc.status, exc.message, exc.headers)
            except FlareOnnxError as exc:
                return fail(exc.http_status, str(exc), None)

        return run

    def endpoint(spec: TaskSpec, which: str = "batcher") -> Callable[[Request], Awaitable[Response]]:
        served = models[which]
        assert served is not None  # routes exist only for the models given

        async def handle(request: Request) -> Response:
            texts, options = _validate(spec, await read_json(request), cfg)
            request.state.texts = len(texts)
            results, _ = await infer(spec, texts, options, which)
            return Answer(
                {"task": spec.name, "precision": served.precision, "results": [spec.record(r) for r in results]}
            )

        return answered(handle, error)

    def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}.get(status)
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                            status_code=status, headers=headers)

    async def openai_embeddings(request: Request) -> Response:
        """``POST /v1/embeddings`` as OpenAI, TEI and vLLM answer it: the embed task with its
        defaults (mean pooling, unit length), float or base64 encoding, usage in tokens."""
        spec = TASKS["embed"]
        payload = await read_json(request)
        texts, encoding = _openai_input(payload, cfg)
        request.state.texts = len(texts)
        results, tokens = await infer(spec, texts, {})
        data = []
        for i, vector in enumerate(results):
            array = np.asarray(vector, dtype="<f4")
            value: Any = base64.b64encode(array.tobytes()).decode("ascii") if encoding == "base64" else array.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        name = payload.get("model") if isinstance(payload.get("model"), str) else str(model.path.name)
        return Answer({"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        if state["batcher"] is None:
            return error(503, "loading")
        batcher = state["batcher"]
        return JSONResponse(
            {"status": "ready", "tasks": list(model.tasks), "precision": model.precision, "queued_texts": batcher.queued_texts}
        )

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_spec(model, cfg, reference))

    async def info(request: Request) -> JSONResponse:
        # what the page shows; with an API key it needs the key, like every /v1 route
        if not authorized(request):
            return error(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)")
        return JSONResponse(bundle_info(model, reference))

    page, page_csp = _page()

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": page_csp, "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer", "cache-control": "no-cache",
        })

    async def prometheus(request: Request) -> Response:
        # with an API key, the metrics need it too (they tell what the service does)
        if not authorized(request):
            return error(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)")
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(model, cfg, metrics)
        if reference is not None:
            state["reference"] = MicroBatcher(reference, cfg)
        yield
        for which in ("batcher", "reference"):
            batcher, state[which] = state[which], None
            if batcher is not None:
                await asyncio.get_running_loop().run_in_executor(None, batcher.stop)

    routes = [Route(f"/v1/{spec.name}", endpoint(spec), methods=["POST"]) for spec in TASKS.values()]
    routes.append(Route("/v1/embeddings", answered(openai_embeddings, openai_error), methods=["POST"]))
    if reference is not None:
        routes += [Route(f"/v1/reference/{spec.name}", endpoint(spec, "reference"), methods=["POST"]) for spec in TASKS.values()]
    routes += [Route("/", index), Route("/v1/info", info)]
    routes += [Route("/health", health), Route("/ready", ready), Route("/openapi.json", openapi), Route("/metrics", prometheus)]
    return Starlette(routes=routes, lifespan=lifespan)


def bundle_info(model: FlareModel, reference: FlareModel | None = None) -> dict[str, Any]:
    """The bundle's facts for people: model, tasks, precision, graph size, the export's checks."""
    from .. import __version__

    manifest = model.manifest
    graphs = manifest.openvino if model.backend == "openvino" else manifest.graphs
    graph = graphs[model.precision]
    files = [graph.file] + ([graph.weights] if graph.weights else [])
    verification = manifest.raw.get("verification") or {}
    fidelity = verification.get(model.precision) if isinstance(verification, dict) else None
    return {
        "model": str((manifest.raw.get("source") or {}).get("model") or model.path.name),
        "bundle": model.path.name,
        "task": manifest.task,
        "tasks": list(manifest.tasks),
        "precision": model.precision,
        "backend": model.backend,
        "graph_bytes": sum(int(manifest.files[f]["size"]) for f in files if f in manifest.files),
        "max_length": manifest.max_length,
        "hidden_size": manifest.hidden_size,
        "labels": list(manifest.labels) if manifest.labels else None,
        "mask_token": manifest.special.mask_token,
        "fidelity": {k: v for k, v in fidelity.items() if isinstance(v, (int, float, str))} if isinstance(fidelity, dict) else {},
        "reference": reference.precision if reference is not None else None,
        "flare_onnx": __version__,
    }


def _page() -> tuple[bytes, str]:
    """The try-it page, and a Content-Security-Policy that allows its own inline script and
    style (by hash) and requests to this origin, nothing else."""
    import hashlib
    import re
    from importlib.resources import files

    html = files("flare_onnx.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        if body is None:
            raise RuntimeError(f"flare_onnx/serve/static/index.html has no <{tag}>: the installed package is broken")
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.group(1).encode("utf-8")).digest()).decode() + "'"

    csp = (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), csp


def openapi_spec(model: FlareModel, cfg: ServeConfig, reference: FlareModel | None = None) -> dict[str, Any]:
    def op(spec: TaskSpec) -> dict[str, Any]:
        props: dict[str, Any] = {
            "texts": {"type": "array", "items": {"type": "string", "maxLength": cfg.max_chars}, "minItems": 1, "maxItems": cfg.max_texts}
        }
        for opt in spec.options:
            props[opt.name] = opt.json_schema()
        return {
            "post": {
                "summary": spec.summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["texts"], "properties": props}}}},
                "responses": {str(c): {"description": d} for c, d in [(200, "results"), (401, "API key"), (404, "task not in bundle"), (413, "body too large"), (422, "invalid input"), (503, "queue full, retry after"), (504, "deadline")]},
            }
        }

    paths = {f"/v1/{spec.name}": op(spec) for spec in TASKS.values() if spec.name in model.tasks}
    if reference is not None:  # the same routes on the bundle's FP32 graph (--reference-fp32)
        paths.update({f"/v1/reference/{spec.name}": op(spec) for spec in TASKS.values() if spec.name in model.tasks})
    if "embed" in model.tasks:
        paths["/v1/embeddings"] = {"post": {
            "summary": "OpenAI-compatible embeddings",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["input"],
                "properties": {"input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": cfg.max_texts}]},
                               "model": {"type": "string"}, "encoding_format": {"type": "string", "enum": ["float", "base64"]}},
            }}}},
            "responses": {"200": {"description": "{object: list, data: [{object: embedding, index, embedding}], model, usage}"},
                          "400": {"description": "invalid input (OpenAI error shape)"}, "401": {"description": "API key"}},
        }}
    paths["/v1/info"] = {"get": {"summary": "the bundle's facts (model, tasks, precision, graph size, export checks)",
                                 "responses": {"200": {"description": "facts"}, "401": {"description": "API key"}}}}
    paths["/"] = {"get": {"summary": "a page to try the bundle in a browser", "responses": {"200": {"description": "HTML"}}}}
    paths["/health"] = {"get": {"summary": "process alive", "responses": {"200": {"description": "ok"}}}}
    paths["/ready"] = {"get": {"summary": "model loaded", "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}}}}
    return {"openapi": "3.0.3", "info": {"title": "flare-onnx", "version": "1"}, "paths": paths}


def serve(
    bundle: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    cfg: ServeConfig | None = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Load the bundle, then serve it with uvicorn until SIGTERM/SIGINT (graceful).

    ``model_options`` are :func:`flare_onnx.load`'s (precision, threads, spin, batch budgets).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError('serving needs uvicorn and starlette: pip install ".[serve]"') from exc
    model = load(bundle, **(model_options or {}))
    cfg = cfg or ServeConfig()
    reference = None
    if cfg.reference_fp32 and not (model.precision == "fp32" and model.backend == "onnxruntime"):
        options = {k: v for k, v in (model_options or {}).items() if k not in ("precision", "backend")}
        reference = load(bundle, **options, precision="fp32")
    if cfg.api_key is None:
        cfg.api_key = os.environ.get("FLARE_ONNX_API_KEY") or None
    if not access_log.handlers:  # one JSON line per request on stderr, without texts or keys
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(
        f"flare-onnx: serving {bundle} ({model.precision}, tasks: {', '.join(model.tasks)}) at {where}/ "
        f"- API at {where}/v1/..., OpenAPI at {where}/openapi.json"
        + (", API key required" if cfg.api_key else "")
        + (f", FP32 reference at {where}/v1/reference/..." if reference is not None else ""),
        file=sys.stderr, flush=True,
    )
    uvicorn.run(
        create_app(model, cfg, reference), host=host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=math.ceil(cfg.deadline_s),
        timeout_keep_alive=5, limit_concurrency=cfg.max_connections,
        http=_guarded_protocol(cfg.header_timeout_s, cfg.max_connections_per_ip, cfg.http), loop=cfg.loop,
    )
