"""``flare-onnx serve``: the Starlette application and :func:`serve`.

Every task route takes one path: the body is read within its size and time limits, its texts
and options are taken apart (:func:`flare_onnx.engine.payload_parts`, as serverless does),
then the engine builds the request — options parsed once, texts checked against the
service's :class:`~flare_onnx.engine.Limits` (characters first, then tokens) and encoded
once — on the service's own admission thread, never on the event loop and never in the pool
that other work shares. The same request object then waits in the micro-batcher
(:mod:`.batcher`) for the inference thread. Limits answer 413 (work) or 422 (input), a full
queue 503 with Retry-After, a request past its deadline 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # the runtime-only install
    raise ImportError(f'serving needs starlette and uvicorn: pip install ".[serve]" ({exc})') from exc

from ..engine import TASKS, FlareModel, TaskSpec, load, payload_parts
from ..engine import Request as EngineRequest
from ..errors import FlareOnnxError, InputError, RequestTooLarge
from .batcher import MicroBatcher
from .config import LOOPBACK_HOSTS, HTTPError, ServeConfig, api_key_from_env
from .guards import HostGuard, guarded_protocol, is_loopback, read_body
from .metrics import ServiceMetrics, access_log
from .openai import openai_answer, openai_error_body, openai_texts
from .openapi import bundle_info, model_name, openapi_spec, page

__all__ = ["ServeConfig", "create_app", "serve"]

_KEY_HELP = "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)"
Handler = Callable[[Request], Awaitable[Response]]
Fail = Callable[[int, str, "dict[str, str] | None"], Response]


def _json_response_class() -> type[JSONResponse]:
    """Starlette's JSONResponse, rendered by orjson where it is installed (results are mostly
    floats, which the standard library writes several times slower)."""
    try:
        import orjson
    except ImportError:
        return JSONResponse

    class ORJSONResponse(JSONResponse):
        def render(self, content: Any) -> bytes:
            return bytes(orjson.dumps(content))

    return ORJSONResponse


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(openai_error_body(status, message), status_code=status, headers=headers)


class _Service:
    """The handlers of one application and what they share: the models, their batchers, the
    admission thread, the metrics and the configuration."""

    def __init__(self, model: FlareModel, cfg: ServeConfig, reference: FlareModel | None) -> None:
        self.model, self.cfg, self.reference = model, cfg, reference
        self.models: dict[str, FlareModel | None] = {"main": model, "reference": reference}
        self.batchers: dict[str, MicroBatcher | None] = {"main": None, "reference": None}
        self.metrics = ServiceMetrics(model, self._queued)
        self.answer = _json_response_class()
        self.page, self.page_csp = page()
        # requests are checked and encoded here, one at a time: refused work cannot take the
        # threads that accepted work needs, and the event loop never tokenizes
        self.admission = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flare-onnx-admission")

    def _queued(self) -> int:
        batcher = self.batchers["main"]
        return batcher.queued_texts if batcher else 0

    # -- the door ---------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        """The key, as ``X-API-Key`` or ``Authorization: Bearer`` (any case). A header's bytes
        are compared with the key's UTF-8 bytes (curl, httpx, browsers) and with its Latin-1
        bytes where it has them (``requests`` and ``http.client`` send Latin-1)."""
        if not self.cfg.api_key:
            return True
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else ""
        sent = given.encode("latin-1", "replace")  # Starlette decoded the header bytes as Latin-1
        spellings = [self.cfg.api_key.encode("utf-8")]
        with contextlib.suppress(UnicodeEncodeError):
            spellings.append(self.cfg.api_key.encode("latin-1"))
        return any(hmac.compare_digest(sent, key) for key in spellings)

    async def read_json(self, request: Request) -> Any:
        """The request's JSON body, within the size and time limits (HTTPError otherwise)."""
        length = request.headers.get("content-length")
        try:
            too_long = length is not None and int(length) > self.cfg.max_body_bytes
        except ValueError as exc:
            raise HTTPError(400, "invalid Content-Length") from exc
        if too_long:
            raise HTTPError(413, f"the request body is larger than {self.cfg.max_body_bytes} bytes")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            # no simple cross-site form post can send this: a web page cannot drive a local service
            raise HTTPError(415, "send the body as JSON with the header content-type: application/json")
        body = await read_body(request.stream(), self.cfg.max_body_bytes, self.cfg.body_timeout_s)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a number too long to parse
            raise HTTPError(400, "the body is not valid JSON") from exc

    def answered(self, handler: Handler, fail: Fail = _error, *, observed: bool = True) -> Handler:
        """Auth, then the handler; every deliberate failure becomes ``fail(status, message)``;
        the answers of ``observed`` routes (the API's) are counted and logged."""

        async def attempt(request: Request) -> Response:
            if not self.authorized(request):
                return fail(401, _KEY_HELP, None)
            try:
                return await handler(request)
            except ClientDisconnect:  # the client went away mid-body: nothing to answer
                return Response(status_code=499)
            except HTTPError as exc:
                return fail(exc.status, exc.message, exc.headers)
            except FlareOnnxError as exc:
                return fail(exc.http_status, str(exc), None)

        if not observed:
            return attempt

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            response = await attempt(request)
            texts = getattr(request.state, "texts", None)
            self.metrics.observe_request(request.url.path, response.status_code, started, texts)
            return response

        return run

    # -- the request path -------------------------------------------------------------------

    async def infer(
        self, task: str, texts: Any, options: dict[str, Any], which: str = "main"
    ) -> tuple[list[Any], EngineRequest]:
        """Check and encode the request (admission thread), queue it for the inference
        thread, and wait within the deadline; its results and the request."""
        model, batcher = self.models[which], self.batchers[which]
        if model is None or batcher is None:
            raise HTTPError(503, "the model is not ready", {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(
            self.admission, lambda: model.request(task, texts, options, limits=self.cfg.limits)
        )
        self.metrics.tokens.inc(request.tokens)
        future = batcher.submit(request)
        try:
            results: list[Any] = await asyncio.wait_for(future, timeout=self.cfg.deadline_s)
        except asyncio.TimeoutError as exc:
            raise HTTPError(504, f"the request did not finish within {self.cfg.deadline_s} s") from exc
        return results, request

    def task_route(self, spec: TaskSpec, which: str = "main") -> Handler:
        served = self.models[which]
        precision = served.precision if served is not None else None

        async def handle(request: Request) -> Response:
            texts, options = payload_parts(await self.read_json(request))
            request.state.texts = len(texts)
            results, _ = await self.infer(spec.name, texts, options, which)
            return self.answer(
                {"task": spec.name, "precision": precision, "results": [spec.record(r) for r in results]}
            )

        return self.answered(handle)

    async def openai_embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``: the embed task with its defaults, OpenAI's shapes."""
        payload = await self.read_json(request)
        texts, encoding = openai_texts(payload)
        request.state.texts = len(texts)
        try:
            vectors, engine_request = await self.infer("embed", texts, {})
        except InputError as exc:  # OpenAI answers invalid input with 400, too much of it with 413
            raise HTTPError(exc.http_status if isinstance(exc, RequestTooLarge) else 400, str(exc)) from exc
        # the served model's own name: the request's "model" is never echoed back
        return self.answer(openai_answer(vectors, encoding, model_name(self.model), engine_request.tokens))

    # -- the rest ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        batcher = self.batchers["main"]
        if batcher is None:
            return _error(503, "loading")
        return JSONResponse(
            {
                "status": "ready",
                "tasks": list(self.model.tasks),
                "precision": self.model.precision,
                "queued_texts": batcher.queued_texts,
            }
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_spec(self.model, self.cfg, self.reference))

    async def info(self, request: Request) -> Response:
        return JSONResponse(bundle_info(self.model, self.reference))

    async def index(self, request: Request) -> Response:
        return Response(
            self.page,
            media_type="text/html; charset=utf-8",
            headers={
                "content-security-policy": self.page_csp,
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
                "cache-control": "no-cache",
            },
        )

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        self.batchers["main"] = MicroBatcher(self.model, self.cfg, self.metrics)
        if self.reference is not None:
            self.batchers["reference"] = MicroBatcher(self.reference, self.cfg)
        yield
        for which, batcher in list(self.batchers.items()):
            self.batchers[which] = None
            if batcher is not None:
                await asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        self.admission.shutdown(wait=False, cancel_futures=True)

    def routes(self) -> list[Route]:
        # a task answers at its name and at each alias (/v1/ner, /v1/feature-extraction...);
        # /v1/embeddings is OpenAI's route, not the embed task's alias
        routes = [
            Route(f"/v1/{name}", self.task_route(spec), methods=["POST"])
            for spec in TASKS.values()
            for name in dict.fromkeys((spec.name, *spec.aliases))
            if name != "embeddings"
        ]
        routes.append(Route("/v1/embeddings", self.answered(self.openai_embeddings, _openai_error), methods=["POST"]))
        if self.reference is not None:
            routes += [
                Route(f"/v1/reference/{spec.name}", self.task_route(spec, "reference"), methods=["POST"])
                for spec in TASKS.values()
            ]
        # with an API key, everything but /health and the page (which asks for the key) needs it
        private = {
            "/v1/info": self.info,
            "/ready": self.ready,
            "/openapi.json": self.openapi,
            "/metrics": self.prometheus,
        }
        routes += [Route(path, self.answered(handler, observed=False)) for path, handler in private.items()]
        routes += [Route("/", self.index), Route("/health", self.health)]
        return routes


def create_app(model: FlareModel, cfg: ServeConfig | None = None, reference: FlareModel | None = None) -> Any:
    """The Starlette application serving ``model`` (already loaded and verified), and
    ``reference`` — the same bundle's FP32 graph — at ``/v1/reference/{task}`` when given."""
    cfg = cfg or ServeConfig()
    service = _Service(model, cfg, reference)
    middleware = []
    if cfg.allowed_hosts is not None and "*" not in cfg.allowed_hosts:
        middleware.append(Middleware(HostGuard, allowed=cfg.allowed_hosts))
    return Starlette(
        routes=service.routes(),
        lifespan=service.lifespan,
        middleware=middleware,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    tasks = ", ".join(f"/v1/{name}" for name in TASKS)
    return _error(
        404,
        f"no route {request.url.path}; the API is POST {tasks}, POST /v1/embeddings, "
        f"and GET /openapi.json describes it",
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    allowed = getattr(exc, "headers", None) or {}
    return _error(405, f"{request.method} is not allowed on {request.url.path}", dict(allowed))


def _access_log_to_stderr() -> None:
    if not access_log.handlers:  # one JSON line per request on stderr, without texts or keys
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before announcing anything (uvicorn would say so after)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); another program holds it: "
                f"choose another with --port"
            ) from None


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
    ``cfg`` is not changed: a key from ``$FLARE_ONNX_API_KEY`` goes into a copy.
    """
    import uvicorn

    model = load(bundle, **(model_options or {}))
    cfg = cfg or ServeConfig()
    reference = None
    if cfg.reference_fp32 and not (model.precision == "fp32" and model.backend == "onnxruntime"):
        options = {k: v for k, v in (model_options or {}).items() if k not in ("precision", "backend")}
        reference = load(bundle, **options, precision="fp32")
    if cfg.api_key is None and api_key_from_env(os.environ.get("FLARE_ONNX_API_KEY")):
        cfg = dataclasses.replace(cfg, api_key=api_key_from_env(os.environ.get("FLARE_ONNX_API_KEY")))
    if cfg.allowed_hosts is None and is_loopback(host):
        cfg = dataclasses.replace(cfg, allowed_hosts=LOOPBACK_HOSTS)
    _check_port(host, port)
    _access_log_to_stderr()
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(
        f"flare-onnx: serving {bundle} ({model.precision}, tasks: {', '.join(model.tasks)}) at {where}/ "
        f"- API at {where}/v1/..., OpenAPI at {where}/openapi.json"
        + (", API key required" if cfg.api_key else "")
        + (f", FP32 reference at {where}/v1/reference/..." if reference is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        create_app(model, cfg, reference),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=math.ceil(cfg.deadline_s),
        timeout_keep_alive=5,
        limit_concurrency=cfg.max_connections,
        http=guarded_protocol(cfg.header_timeout_s, cfg.max_connections_per_ip, cfg.http),
        loop=cfg.loop,
    )
    _draining_server_class()(config).run()


def _draining_server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, draining on SIGHUP as on SIGTERM (a terminal closing, a supervisor's
        reload) instead of dying at once with requests in flight."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = None
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                with super().capture_signals():
                    yield
            finally:
                if previous is not None:
                    signal.signal(signal.SIGHUP, previous)

    return DrainingServer
