"""Serverless entry points: a plain function for any FaaS and an AWS-Lambda-style handler.

The bundle is loaded once per container (on first use) from ``FLARE_ONNX_BUNDLE`` and kept
for later invocations. Threads default to the CPUs the container is granted (its cgroup
quota), not the host's. Import cost is the runtime's: onnxruntime, tokenizers, numpy.

    # handler.py of a function whose package holds the bundle in ./bundle
    from flare_onnx.serverless import handler  # noqa: F401  (set FLARE_ONNX_BUNDLE=bundle)
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from ._json import to_jsonable
from .errors import FlareOnnxError, InputError
from .model import FlareModel, load

__all__ = ["handle", "handler", "get_model"]

_MODEL: FlareModel | None = None
VERBS = {"fill-mask": "fill_mask", "fill_mask": "fill_mask", "embed": "embed", "tag": "tag", "classify": "classify"}
OPTIONS = {"fill_mask": {"top_k"}, "embed": {"pooling", "normalize", "window"}, "tag": {"aggregation", "window"}, "classify": {"top_k"}}


def get_model() -> FlareModel:
    """The container's model, loaded on first call from ``$FLARE_ONNX_BUNDLE``."""
    global _MODEL
    if _MODEL is None:
        path = os.environ.get("FLARE_ONNX_BUNDLE")
        if not path:
            raise InputError("set FLARE_ONNX_BUNDLE to the bundle directory shipped with the function")
        _MODEL = load(path, precision=os.environ.get("FLARE_ONNX_PRECISION") or None)
    return _MODEL


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    """``{"task": "embed", "texts": [...], ...options}`` -> ``{"results": [...]}``.

    Raises:
        InputError: an unknown task or option, or texts the model refuses.
    """
    if not isinstance(payload, dict):
        raise InputError('the payload must be an object like {"task": "embed", "texts": ["..."]}')
    task = payload.get("task")
    verb = VERBS.get(task) if isinstance(task, str) else None
    if verb is None:
        raise InputError(f"task must be one of fill-mask, embed, tag, classify, not {task!r}")
    options = {k: v for k, v in payload.items() if k not in ("task", "texts")}
    unknown = set(options) - OPTIONS[verb]
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(sorted(unknown))} for {task}")
    results = getattr(get_model(), verb)(payload.get("texts"), **options)
    return {"task": task, "results": to_jsonable(results)}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """AWS-Lambda-style handler: API Gateway/function-URL events (JSON body) or a direct payload."""
    try:
        if isinstance(event, dict) and "body" in event:
            body = event["body"] or ""
            if event.get("isBase64Encoded"):
                body = base64.b64decode(body).decode("utf-8")
            payload = json.loads(body)
        else:
            payload = event
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(handle(payload), ensure_ascii=False)}
    except (InputError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        return {"statusCode": 400, "headers": {"content-type": "application/json"}, "body": json.dumps({"error": str(exc)})}
    except FlareOnnxError as exc:
        return {"statusCode": 500, "headers": {"content-type": "application/json"}, "body": json.dumps({"error": str(exc)})}
