"""What the service says about itself: the OpenAPI document, the bundle's facts for the page
(``GET /v1/info``), and the try-it page at ``/`` with its Content-Security-Policy."""

from __future__ import annotations

import base64
from pathlib import PurePath
from typing import Any

from ..engine import TASKS, FlareModel, TaskSpec
from .config import ServeConfig
from .models import ModelSet

__all__ = ["bundle_info", "model_name", "openapi_spec", "page"]


def model_name(model: FlareModel) -> str:
    """The served model's name for people: the Hub id it was exported from, or the last part of
    a local path (a machine's folders are nobody else's business), or the bundle's name."""
    source = model.manifest.source.get("model")
    if not isinstance(source, str) or not source.strip():
        return model.path.name
    looks_like_path = source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
    return PurePath(source).name if looks_like_path else source


def bundle_info(model: FlareModel, reference: FlareModel | None = None) -> dict[str, Any]:
    """The bundle's facts for people: model, tasks, precision, graph size, the export's checks."""
    from .. import __version__

    manifest = model.manifest
    graphs = manifest.openvino if model.backend == "openvino" else manifest.graphs
    graph = graphs[model.precision]
    files = [graph.file] + ([graph.weights] if graph.weights else [])
    verification = manifest.verification
    fidelity = verification.get(model.precision) if isinstance(verification, dict) else None
    return {
        "model": model_name(model),
        "bundle": model.path.name,
        "task": manifest.task,
        "tasks": list(manifest.tasks),
        "precision": model.precision,
        "backend": model.backend,
        "backend_choice": model.backend_choice,
        "graph_bytes": sum(int(manifest.files[f]["size"]) for f in files if f in manifest.files),
        "max_length": manifest.max_length,
        "hidden_size": manifest.hidden_size,
        "labels": list(manifest.labels) if manifest.labels else None,
        "mask_token": manifest.special.mask_token,
        "fidelity": {k: v for k, v in fidelity.items() if isinstance(v, (int, float, str))}
        if isinstance(fidelity, dict)
        else {},
        "reference": reference.precision if reference is not None else None,
        "random_weights": bool(manifest.source.get("random_weights")),
        "prompts": model.prompts,
        "embedding": {"pooling": manifest.pooling, "normalize": manifest.normalize}
        if "embed" in manifest.tasks
        else None,
        "flare_onnx": __version__,
    }


def page() -> tuple[bytes, str]:
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


def _bounded(schema: dict[str, Any], key: str, limit: int | None) -> dict[str, Any]:
    """``schema`` with ``key: limit``, or as it is when the limit is lifted (``None``)."""
    return schema if limit is None else {**schema, key: limit}


def openapi_spec(models: ModelSet, cfg: ServeConfig, reference: bool = False) -> dict[str, Any]:
    """The OpenAPI description of a service: the default model's routes, ``/v1/models/{name}/{task}``
    for every model, the OpenAI routes and the rest."""
    model = models.default.model
    limits = cfg.limits
    text_schema = _bounded({"type": "string"}, "maxLength", limits.max_chars)
    texts_schema = _bounded({"type": "array", "items": text_schema, "minItems": 1}, "maxItems", limits.max_texts)

    def op(spec: TaskSpec) -> dict[str, Any]:
        props: dict[str, Any] = {"texts": texts_schema}
        for opt in spec.options:
            props[opt.name] = opt.json_schema()
        return {
            "post": {
                "summary": spec.summary,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "object", "required": ["texts"], "properties": props}}
                    },
                },
                "responses": {
                    str(c): {"description": d}
                    for c, d in [
                        (200, "results"),
                        (401, "API key"),
                        (404, "task not in bundle"),
                        (413, "body too large"),
                        (422, "invalid input"),
                        (503, "queue full, retry after"),
                        (504, "deadline"),
                    ]
                },
            }
        }

    paths = {f"/v1/{spec.name}": op(spec) for spec in TASKS.values() if spec.name in model.tasks}
    if reference:  # the same routes on the bundle's FP32 graph (--reference-fp32)
        paths.update({f"/v1/reference/{spec.name}": op(spec) for spec in TASKS.values() if spec.name in model.tasks})
    paths.update(_model_paths(models, op(TASKS["embed"])["post"]))
    if any("embed" in served.model.tasks for served in models.served.values()):
        paths["/v1/embeddings"] = _openai_embeddings_path(models, texts_schema)
    paths["/v1/info"] = {
        "get": {
            "summary": "the bundle's facts (model, tasks, precision, graph size, export checks)",
            "responses": {"200": {"description": "facts"}, "401": {"description": "API key"}},
        }
    }
    paths["/"] = {
        "get": {"summary": "a page to try the bundle in a browser", "responses": {"200": {"description": "HTML"}}}
    }
    paths["/health"] = {"get": {"summary": "process alive", "responses": {"200": {"description": "ok"}}}}
    paths["/ready"] = {
        "get": {
            "summary": "model loaded",
            "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}},
        }
    }
    return {"openapi": "3.0.3", "info": {"title": "flare-onnx", "version": "1"}, "paths": paths}


def _model_paths(models: ModelSet, task_op: dict[str, Any]) -> dict[str, Any]:
    """The routes of several models: one model's task, the list of models, the reload."""
    paths: dict[str, Any] = {}
    every_task = sorted({t for served in models.served.values() for t in served.model.tasks})
    paths["/v1/models/{name}/{task}"] = {
        "post": {
            **task_op,
            "summary": "a task of the model called name (GET /v1/models lists them); the body is the task's, "
            "as at /v1/{task}",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": models.names}},
                {"name": "task", "in": "path", "required": True, "schema": {"type": "string", "enum": every_task}},
            ],
        }
    }
    paths["/v1/models"] = {
        "get": {
            "summary": "the models served (OpenAI's list shape: {object: list, data: [{id, object: model, ...}]})",
            "responses": {"200": {"description": "models"}, "401": {"description": "API key"}},
        }
    }
    paths["/v1/reload"] = {
        "post": {
            "summary": 'reload the bundles changed on disk, verified first (body: none, or {"models": [...]})',
            "responses": {
                "200": {"description": "{models: {name: unchanged | reloaded | kept: reason}}"},
                "401": {"description": "API key"},
                "409": {"description": "a reload is running"},
            },
        }
    }
    return paths


def _openai_embeddings_path(models: ModelSet, texts_schema: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/embeddings`` in OpenAI's shapes."""
    return {
        "post": {
            "summary": "OpenAI-compatible embeddings",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["input"],
                            "properties": {
                                "input": {"oneOf": [{"type": "string"}, {**texts_schema, "items": {"type": "string"}}]},
                                "model": {"type": "string", **({"enum": models.names} if models.strict else {})},
                                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "{object: list, data: [{object: embedding, index, embedding}], model, usage}"},
                "400": {"description": "invalid input (OpenAI error shape)"},
                "401": {"description": "API key"},
            },
        }
    }
