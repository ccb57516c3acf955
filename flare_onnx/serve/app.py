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
from .models import ModelEntry, ModelSet, Served, default_name
from .openai import openai_answer, openai_error_body, openai_texts
from .openapi import bundle_info, openapi_spec, page

__all__ = ["ServeConfig", "create_app", "serve"]

log = logging.getLogger("flare_onnx.serve")
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
    """The handlers of one application and what they share: the models, the one batcher and
    inference thread, the admission thread, the metrics and the configuration."""

    def __init__(self, models: ModelSet, cfg: ServeConfig, reference: FlareModel | None) -> None:
        self.models, self.cfg = models, cfg
        # the default model's FP32 graph (--reference-fp32), served at /v1/reference/{task}
        self.reference = None
        if reference is not None:
            self.reference = Served(ModelEntry("reference", "fp32"), reference, cfg.limits, "")
        self.batcher: MicroBatcher | None = None
        self.metrics = ServiceMetrics(self._queued)
        for name, served in models.served.items():
            self.metrics.describe(name, served.model)
        self.answer = _json_response_class()
        self.page, self.page_csp = page()
        # requests are checked and encoded here, one at a time: refused work cannot take the
        # threads that accepted work needs, and the event loop never tokenizes
        self.admission = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flare-onnx-admission")

    def _queued(self) -> int:
        return self.batcher.queued_texts if self.batcher else 0

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

    def answered(
        self, handler: Handler, fail: Fail = _error, *, observed: bool = True, route: str | None = None
    ) -> Handler:
        """Auth, then the handler; every deliberate failure becomes ``fail(status, message)``;
        the answers of ``observed`` routes (the API's) are counted and logged, under ``route``
        (a path template, so that no client can make up label values) or the request's path."""

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
            state = request.state
            model = getattr(state, "model", "")  # "" until the request named a model served here
            self.metrics.observe_request(
                route or request.url.path, response.status_code, started, getattr(state, "texts", None), model
            )
            return response

        return run

    # -- the request path -------------------------------------------------------------------

    async def infer(
        self, served: Served, task: str, texts: Any, options: dict[str, Any]
    ) -> tuple[list[Any], EngineRequest, FlareModel]:
        """Check and encode the request (admission thread), queue it for the inference
        thread, and wait within the deadline; its results, the request, and the model that
        answered (a reload meanwhile swaps what later requests get, not this one's)."""
        batcher = self.batcher
        if batcher is None:
            raise HTTPError(503, "the model is not ready", {"Retry-After": "1"})
        model, name = served.model, served.entry.name  # a reload from here on does not change this request's model
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(
            self.admission, lambda: model.request(task, texts, options, limits=served.limits)
        )
        self.metrics.tokens.labels(model=name).inc(request.tokens)
        future = batcher.submit(name, model, request)
        try:
            results: list[Any] = await asyncio.wait_for(future, timeout=self.cfg.deadline_s)
        except asyncio.TimeoutError as exc:
            raise HTTPError(504, f"the request did not finish within {self.cfg.deadline_s} s") from exc
        return results, request, model

    async def _task_answer(self, request: Request, served: Served, spec: TaskSpec) -> Response:
        request.state.model = served.entry.name
        texts, options = payload_parts(await self.read_json(request))
        request.state.texts = len(texts)
        results, _, model = await self.infer(served, spec.name, texts, options)
        return self.answer(
            {
                "task": spec.name,
                "model": served.entry.name,
                "precision": model.precision,
                "results": [spec.record(r) for r in results],
            }
        )

    def task_route(self, spec: TaskSpec) -> Handler:
        """``POST /v1/{task}``: the default model."""

        async def handle(request: Request) -> Response:
            return await self._task_answer(request, self.models.default, spec)

        return self.answered(handle)

    def reference_route(self, spec: TaskSpec) -> Handler:
        async def handle(request: Request) -> Response:
            assert self.reference is not None
            return await self._task_answer(request, self.reference, spec)

        return self.answered(handle)

    async def model_task(self, request: Request) -> Response:
        """``POST /v1/models/{name}/{task}``: the named model."""
        served = self.models.get(request.path_params["name"])
        task = request.path_params["task"]
        spec = next((s for s in TASKS.values() if task == s.name or task in s.aliases), None)
        if spec is None:
            raise HTTPError(404, f"no task {task!r}; {served.entry.name!r} does {', '.join(served.model.tasks)}")
        return await self._task_answer(request, served, spec)

    async def openai_embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``: the embed task with its defaults, OpenAI's shapes; the
        request's ``model`` picks the model."""
        payload = await self.read_json(request)
        texts, encoding = openai_texts(payload)
        served = self.models.for_openai(payload.get("model"))
        request.state.model = served.entry.name
        request.state.texts = len(texts)
        try:
            vectors, engine_request, _ = await self.infer(served, "embed", texts, {})
        except InputError as exc:  # OpenAI answers invalid input with 400, too much of it with 413
            raise HTTPError(exc.http_status if isinstance(exc, RequestTooLarge) else 400, str(exc)) from exc
        return self.answer(openai_answer(vectors, encoding, served.entry.name, engine_request.tokens))

    # -- models -----------------------------------------------------------------------------

    def _model_card(self, served: Served) -> dict[str, Any]:
        # OpenAI's model object, with what this service knows of it
        model = served.model
        return {
            "id": served.entry.name,
            "object": "model",
            "created": served.created,
            "owned_by": "flare-onnx",
            "tasks": list(model.tasks),
            "precision": model.precision,
        }

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``, as OpenAI lists its models."""
        return self.answer({"object": "list", "data": [self._model_card(s) for s in self.models.served.values()]})

    async def one_model(self, request: Request) -> Response:
        return self.answer(self._model_card(self.models.get(request.path_params["name"])))

    async def reload(self, request: Request) -> Response:
        """``POST /v1/reload``: reload the bundles that changed on disk (all, or ``{"models": [...]}``)."""
        payload = await self.read_json(request) if request.headers.get("content-length", "0") != "0" else {}
        names = payload.get("models") if isinstance(payload, dict) else None
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise HTTPError(422, 'send {"models": ["name", ...]} or no body (every model)')
        for name in names or []:
            self.models.get(name)
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(None, lambda: self.reload_models(names))
        return self.answer({"models": outcome})

    def reload_models(self, names: list[str] | None = None) -> dict[str, str]:
        """Reload (on the caller's thread); each new model is warmed up and measured first."""
        outcome = self.models.reload(names, warm=self._warm)
        for name, what in outcome.items():
            if what == "reloaded":
                self.metrics.describe(name, self.models.get(name).model)
        return outcome

    def _warm(self, name: str, model: FlareModel) -> None:
        """One small request through ``model``: its first-call costs paid before it serves, and
        its speed measured for the batcher's time slices."""
        if self.batcher is None:
            return
        task = model.tasks[0]
        mask = model.manifest.special.mask_token
        texts = [f"Roma è la {mask} d'Italia." if task == "fill-mask" and mask else s for s in _WARM_TEXTS]
        self.batcher.measure(model, model.request(task, texts, {}))

    # -- the rest ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        batcher = self.batcher
        if batcher is None:
            return _error(503, "loading")
        default = self.models.default.model
        return JSONResponse(
            {
                "status": "ready",
                "tasks": list(default.tasks),
                "precision": default.precision,
                "models": {name: list(s.model.tasks) for name, s in self.models.served.items()},
                "queued_texts": batcher.queued_texts,
            }
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_spec(self.models, self.cfg, self.reference is not None))

    async def info(self, request: Request) -> Response:
        reference = self.reference.model if self.reference else None
        default = self.models.default
        facts = {"name": default.entry.name, **bundle_info(default.model, reference)}
        facts["models"] = [{"name": n, **bundle_info(s.model)} for n, s in self.models.served.items()]
        return JSONResponse(facts)

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
        self.batcher = MicroBatcher(self.cfg, self.metrics)
        loop = asyncio.get_running_loop()
        for name, served in self.models.served.items():  # first calls paid, speeds measured
            try:
                await loop.run_in_executor(None, self._warm, name, served.model)
            except FlareOnnxError as exc:  # verified at load: requests will say what is wrong
                log.warning("flare-onnx: the warm-up request of %r failed: %s", name, exc)
        yield
        batcher, self.batcher = self.batcher, None
        await loop.run_in_executor(None, batcher.stop)
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
        per_model = "/v1/models/{name}/{task}"
        routes.append(Route(per_model, self.answered(self.model_task, route=per_model), methods=["POST"]))
        routes.append(Route("/v1/reload", self.answered(self.reload, observed=False), methods=["POST"]))
        if self.reference is not None:
            routes += [
                Route(f"/v1/reference/{spec.name}", self.reference_route(spec), methods=["POST"])
                for spec in TASKS.values()
            ]
        # with an API key, everything but /health and the page (which asks for the key) needs it
        private = {
            "/v1/info": self.info,
            "/v1/models": self.list_models,
            "/v1/models/{name}": self.one_model,
            "/ready": self.ready,
            "/openapi.json": self.openapi,
            "/metrics": self.prometheus,
        }
        routes += [Route(path, self.answered(handler, observed=False)) for path, handler in private.items()]
        routes += [Route("/", self.index), Route("/health", self.health)]
        return routes


#: the warm-up request's texts (short Italian sentences, as most requests are)
_WARM_TEXTS = [
    "Il gatto dorme sul divano.",
    "Domani pioverà su Milano, Bologna e Firenze.",
    "Mario Rossi lavora alla Fiat di Torino dal 2019.",
    "La Divina Commedia fu scritta da Dante Alighieri nel Trecento.",
] * 4


def create_app(
    models: FlareModel | ModelSet, cfg: ServeConfig | None = None, reference: FlareModel | None = None
) -> Any:
    """The Starlette application serving ``models`` (already loaded and verified: a
    :class:`ModelSet`, or one model, served unnamed as ``flare-onnx serve BUNDLE`` serves it),
    and ``reference`` — the default model's FP32 graph — at ``/v1/reference/{task}`` when given."""
    cfg = cfg or ServeConfig()
    if isinstance(models, FlareModel):
        models = ModelSet.of({default_name(str(models.path)): models}, cfg.limits, strict=False)
    service = _Service(models, cfg, reference)
    middleware = []
    if cfg.allowed_hosts is not None and "*" not in cfg.allowed_hosts:
        middleware.append(Middleware(HostGuard, allowed=cfg.allowed_hosts))
    app = Starlette(
        routes=service.routes(),
        lifespan=service.lifespan,
        middleware=middleware,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.service = service
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    tasks = ", ".join(f"/v1/{name}" for name in TASKS)
    return _error(
        404,
        f"no route {request.url.path}; the API is POST {tasks} (the default model), "
        f"POST /v1/models/{{name}}/{{task}} (GET /v1/models lists the names), POST /v1/embeddings, "
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
    bundle: str | list[ModelEntry],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    cfg: ServeConfig | None = None,
    model_options: dict[str, Any] | None = None,
    strict: bool | None = None,
) -> None:
    """Load the bundles, then serve them with uvicorn until SIGTERM/SIGINT (graceful); SIGHUP
    reloads the bundles that changed on disk.

    ``bundle``: one bundle (served unnamed, as before: any OpenAI ``model`` gets it), or
    :class:`ModelEntry` items, each a name, a bundle and its limits (the first is the default,
    served at ``/v1/{task}`` too). ``strict``: the OpenAI ``model`` field must name a model
    (default: when entries are given). ``model_options`` are :func:`flare_onnx.load`'s
    (precision, threads, spin, batch budgets), the same for every model. ``cfg`` is not
    changed: a key from ``$FLARE_ONNX_API_KEY`` goes into a copy.
    """
    import uvicorn

    entries = [ModelEntry(default_name(bundle), bundle)] if isinstance(bundle, str) else list(bundle)
    cfg, model_options = _lanes(cfg or ServeConfig(), len(entries), dict(model_options or {}))
    strict = not isinstance(bundle, str) if strict is None else strict
    models = ModelSet.load(entries, strict=strict, options=model_options, limits=cfg.limits)
    default = models.default.model
    reference = None
    if cfg.reference_fp32 and not (default.precision == "fp32" and default.backend == "onnxruntime"):
        options = {k: v for k, v in (model_options or {}).items() if k not in ("precision", "backend")}
        reference = load(models.default.entry.bundle, **options, precision="fp32")
    if cfg.api_key is None and api_key_from_env(os.environ.get("FLARE_ONNX_API_KEY")):
        cfg = dataclasses.replace(cfg, api_key=api_key_from_env(os.environ.get("FLARE_ONNX_API_KEY")))
    if cfg.allowed_hosts is None and is_loopback(host):
        cfg = dataclasses.replace(cfg, allowed_hosts=LOOPBACK_HOSTS)
    _check_port(host, port)
    _access_log_to_stderr()
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(_banner(models, cfg, where, reference is not None), file=sys.stderr, flush=True)
    app = create_app(models, cfg, reference)
    config = uvicorn.Config(
        app,
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
    _reloading_server_class(app.state.service)(config).run()


def _lanes(cfg: ServeConfig, models: int, model_options: dict[str, Any]) -> tuple[ServeConfig, dict[str, Any]]:
    """The lanes (2 for several models on 2+ CPUs unless set) and each model's threads: one CPU
    budget, shared by the lanes."""
    cpus = len(os.sched_getaffinity(0))
    if cfg.lanes is None:
        cfg = dataclasses.replace(cfg, lanes=2 if models > 1 and cpus >= 2 else 1)
    lanes = cfg.lanes or 1
    if lanes > 1 and model_options.get("threads") is None:
        model_options["threads"] = max(1, cpus // lanes)
    return cfg, model_options


def _banner(models: ModelSet, cfg: ServeConfig, where: str, reference: bool) -> str:
    served = "; ".join(
        f"{s.entry.bundle} ({s.model.precision}, tasks: {', '.join(s.model.tasks)}) as {name!r}"
        for name, s in models.served.items()
    ) + (f"; {cfg.lanes} inference lanes" if (cfg.lanes or 1) > 1 else "")
    return (
        f"flare-onnx: serving {served} at {where}/ - API at {where}/v1/..., models at {where}/v1/models, "
        f"OpenAPI at {where}/openapi.json"
        + (", API key required" if cfg.api_key else "")
        + (f", FP32 reference at {where}/v1/reference/..." if reference else "")
    )


def _reloading_server_class(service: _Service) -> type:
    import uvicorn

    class ReloadingServer(uvicorn.Server):
        """uvicorn's server; SIGHUP reloads the bundles that changed (on a thread of its own,
        the service answering meanwhile), as nginx and most daemons take it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = None
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGHUP, self.reload)
            try:
                with super().capture_signals():
                    yield
            finally:
                if previous is not None:
                    signal.signal(signal.SIGHUP, previous)

        def reload(self, signum: int, frame: Any) -> None:
            def run() -> None:
                try:
                    outcome = service.reload_models()
                except HTTPError as exc:  # a reload already running
                    outcome = {"*": exc.message}
                print(f"flare-onnx: reload: {json.dumps(outcome)}", file=sys.stderr, flush=True)

            threading.Thread(target=run, name="flare-onnx-reload", daemon=True).start()

    return ReloadingServer
