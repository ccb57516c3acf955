"""Serverless entry points: a plain function for any FaaS, an AWS-Lambda-style handler, and
adapters for Google Cloud Run functions and Azure Functions, all answering as the HTTP service.

The bundle is loaded once per container (on first use) from ``FLARE_ONNX_BUNDLE`` and kept
for later invocations. A request takes the engine's one request path with the HTTP service's
limits (:attr:`flare_onnx.engine.Limits.SERVICE`): a function answers the network too.
Threads default to the CPUs the container is granted (its cgroup quota), not the host's.
Import cost is the runtime's: onnxruntime, tokenizers, numpy.

    # handler.py of a function whose package holds the bundle in ./bundle
    from flare_onnx.serverless import handler  # noqa: F401  (set FLARE_ONNX_BUNDLE=bundle)
"""

from __future__ import annotations

import base64
import functools
import json
import os
from typing import Any

from .engine import LOAD_OPTIONS, FlareModel, Limits, bundle_name, get_task, load, payload_parts
from .errors import BundleError, FlareOnnxError, InputError

__all__ = ["azure_function", "gcp_function", "get_model", "handle", "handler", "model_options_from_env", "respond"]


def model_options_from_env() -> dict[str, Any]:
    """The model options of the registry from ``FLARE_ONNX_<OPTION>`` variables
    (``FLARE_ONNX_THREADS=1``, ``FLARE_ONNX_PRECISION=fp32``...). ``spin`` defaults to false
    here: a function shares its host, and idle threads must not spin between invocations."""
    options: dict[str, Any] = {"spin": False}
    for opt in LOAD_OPTIONS:
        raw = os.environ.get(f"FLARE_ONNX_{opt.name.upper()}")
        if raw is None or not raw.strip():
            continue
        try:
            options[opt.name] = opt.parse_text(raw)
        except InputError as exc:  # the deployment is misconfigured, not the request
            raise FlareOnnxError(f"FLARE_ONNX_{opt.name.upper()}: {exc}") from exc
    return options


def get_model() -> FlareModel:
    """The container's model, loaded on first call from ``$FLARE_ONNX_BUNDLE`` (and again
    only if the variables change)."""
    path = os.environ.get("FLARE_ONNX_BUNDLE")
    if not path:
        raise BundleError("set FLARE_ONNX_BUNDLE to the bundle directory shipped with the function")
    try:
        return _load(path, tuple(sorted(model_options_from_env().items())))
    except InputError as exc:  # an option the deployment set that its bundle cannot take: not the request's fault
        raise FlareOnnxError(f"the function's model cannot be loaded from FLARE_ONNX_BUNDLE={path}: {exc}") from exc
    except OSError as exc:  # a bundle or cache the function cannot read or write
        raise FlareOnnxError(
            f"the function's model cannot be loaded from FLARE_ONNX_BUNDLE={path}: {exc.strerror or exc}"
            f"{': ' + str(exc.filename) if exc.filename else ''}"
        ) from exc


@functools.lru_cache(maxsize=1)  # one model per container, kept between invocations on purpose
def _load(path: str, options: tuple[tuple[str, Any], ...]) -> FlareModel:
    return load(path, **dict(options))


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    """``{"task": "embed", "texts": [...], ...options}`` -> the same answer as the HTTP
    service: ``{"task", "model", "precision", "results": [{"embedding": [...]}, ...]}`` (``model``:
    ``$FLARE_ONNX_NAME``, or the bundle folder's name).

    Raises:
        InputError: an unknown task or option, texts the model refuses, or a request over
            the service limits (:class:`~flare_onnx.errors.RequestTooLarge`).
        TaskNotAvailableError: the bundle does not offer the task.
    """
    if not isinstance(payload, dict):
        raise InputError('the payload must be an object like {"task": "embed", "texts": ["..."]}')
    spec = get_task(payload.get("task"))
    texts, options = payload_parts(payload, reserved=("task",))
    model = get_model()
    results = model.predict(spec.name, texts, options, limits=Limits.SERVICE)
    name = os.environ.get("FLARE_ONNX_NAME") or bundle_name(os.environ.get("FLARE_ONNX_BUNDLE") or model.path)
    return {
        "task": spec.name,
        "model": name,
        "precision": model.precision,
        "results": [spec.record(r) for r in results],
    }


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """AWS-Lambda-style handler: API Gateway/function-URL events (JSON body) or a direct payload."""
    if isinstance(event, dict) and "body" in event:
        body = event["body"] or ""
        if event.get("isBase64Encoded"):
            try:
                body = base64.b64decode(body)
            except (ValueError, TypeError) as exc:
                return _answer(*_bad_body(exc))
        status, answer = respond(body)
    else:
        status, answer = _run(event)
    return _answer(status, answer)


def respond(body: str | bytes) -> tuple[int, dict[str, Any]]:
    """The service's answer to a request body, with its status: what every cloud's adapter
    returns (``handler`` for Lambda, ``gcp_function``, ``azure_function``)."""
    try:
        payload = json.loads(body)
    except (ValueError, TypeError, RecursionError) as exc:  # bad JSON or UTF-8
        return _bad_body(exc)
    return _run(payload)


def _bad_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    return 400, {"error": f"the request body is not valid JSON: {exc}"}


def _run(payload: Any) -> tuple[int, dict[str, Any]]:
    try:
        return 200, handle(payload)
    except FlareOnnxError as exc:
        return exc.http_status, {"error": str(exc)}
    except RecursionError:
        return 400, {"error": "the request is nested too deeply"}


def gcp_function(request: Any) -> tuple[str, int, dict[str, str]]:
    """Google Cloud Run functions (``functions-framework``; the request is Flask's): deploy with
    ``--entry-point gcp_function`` from a ``main.py`` that imports it."""
    status, answer = respond(request.get_data())
    return json.dumps(answer, ensure_ascii=False), status, {"content-type": "application/json"}


def azure_function(req: Any) -> Any:
    """Azure Functions (``azure-functions``' ``HttpRequest`` in, ``HttpResponse`` out)."""
    import azure.functions as func  # the platform's own package, present where this runs

    status, answer = respond(req.get_body())
    return func.HttpResponse(json.dumps(answer, ensure_ascii=False), status_code=status, mimetype="application/json")


def _answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body, ensure_ascii=False),
    }
