"""The serverless entry points."""

from __future__ import annotations

import base64
import json

import pytest

import flare_onnx.serverless as sl


@pytest.fixture(autouse=True)
def bundle_env(tiny_bundle, monkeypatch):
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(tiny_bundle))


def test_handle_and_model_loaded_once():
    out = sl.handle({"task": "embed", "texts": ["ciao", "buongiorno"], "normalize": False})
    assert out["task"] == "embed" and len(out["results"]) == 2 and len(out["results"][0]["embedding"]) == 32
    first = sl.get_model()
    sl.handle({"task": "fill-mask", "texts": ["Roma è la <mask>."], "top_k": 2})
    assert sl.get_model() is first


def test_lambda_events():
    body = json.dumps({"task": "fill-mask", "texts": ["Roma è la <mask>."]})
    r = sl.handler({"body": body})
    assert r["statusCode"] == 200 and len(json.loads(r["body"])["results"][0]["masks"][0]) == 5
    r = sl.handler({"body": base64.b64encode(body.encode()).decode(), "isBase64Encoded": True})
    assert r["statusCode"] == 200
    assert sl.handler({"task": "embed", "texts": ["diretto"]})["statusCode"] == 200


@pytest.mark.parametrize(
    "event, status, message",
    [
        ({"task": "dance", "texts": ["x"]}, 422, "task must be one of"),
        ({"task": "embed", "texts": []}, 422, "empty list"),
        ({"task": "embed"}, 422, '"texts" must be a non-empty list of strings'),
        ({"task": "embed", "texts": ["x"], "colour": "red"}, 422, "embed has no option 'colour'"),
        ({"task": "embed", "texts": ["x"], "normalize": "no"}, 422, "option normalize must be true or false"),
        ({"task": "fill-mask", "texts": ["<mask>"], "top_k": 100000}, 422, "top_k must be at most 100"),
        ({"body": "{not json"}, 400, "not valid JSON"),
        ({"body": "[" * 100000 + "]" * 100000}, 400, "not valid JSON"),
        ({"task": "tag", "texts": ["x"]}, 404, "token-classification"),
    ],
)
def test_errors_carry_the_status_of_their_kind(event, status, message):
    r = sl.handler(event)
    assert r["statusCode"] == status and message in json.loads(r["body"])["error"]


def test_missing_bundle_env(monkeypatch):
    monkeypatch.delenv("FLARE_ONNX_BUNDLE")
    r = sl.handler({"task": "embed", "texts": ["x"]})
    assert r["statusCode"] == 500 and "FLARE_ONNX_BUNDLE" in json.loads(r["body"])["error"]


def test_model_options_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLARE_ONNX_THREADS", "1")
    monkeypatch.setenv("FLARE_ONNX_PRECISION", "fp32")
    monkeypatch.setenv("FLARE_ONNX_MAX_BATCH_TOKENS", "512")
    assert sl.model_options_from_env() == {"spin": False, "threads": 1, "precision": "fp32", "max_batch_tokens": 512}
    assert sl.get_model().precision == "fp32" and sl.get_model().max_batch_tokens == 512
    monkeypatch.setenv("FLARE_ONNX_SPIN", "perhaps")
    r = sl.handler({"task": "embed", "texts": ["x"]})
    assert (
        r["statusCode"] == 500
        and "FLARE_ONNX_SPIN: option spin must be true or false, not 'perhaps'" in json.loads(r["body"])["error"]
    )


def test_a_checkpoint_with_a_cache_it_cannot_write_answers_500_naming_it(tiny_checkpoint, tmp_path, monkeypatch):
    blocked = tmp_path / "ro"
    blocked.write_text("a file where the cache's folder should be")
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(tiny_checkpoint))
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(blocked / "cache"))
    r = sl.handler({"body": json.dumps({"task": "embed", "texts": ["ciao"]})})
    assert r["statusCode"] == 500 and "FLARE_ONNX_CACHE" in json.loads(r["body"])["error"]


def test_a_backend_the_bundle_lacks_is_the_deployments_error_500(monkeypatch):
    monkeypatch.setenv("FLARE_ONNX_BACKEND", "openvino")  # the tiny bundle has no OpenVINO IR
    r = sl.handler({"task": "embed", "texts": ["ciao"]})
    assert r["statusCode"] == 500 and "FLARE_ONNX_BUNDLE=" in json.loads(r["body"])["error"]
    assert "no OpenVINO IR" in json.loads(r["body"])["error"]


#: one request of each kind, and the status the HTTP service gives it
CLOUD_REQUESTS = [
    (json.dumps({"task": "fill-mask", "texts": ["Roma è la <mask>."], "top_k": 3}), 200),
    ("{not json", 400),
    (json.dumps({"task": "embed", "texts": ["x"], "pooling": "nessuno"}), 422),
    (json.dumps({"task": "embed", "texts": ["ciao " * 500] * 64}), 413),
]


def _service(tiny_bundle, body: str, name: str = "bundle") -> tuple[int, dict]:
    """The service's answer, the model served under ``name`` (a package's function serves its
    bundle folder, "bundle", under that name unless FLARE_ONNX_NAME says otherwise)."""
    from starlette.testclient import TestClient

    import flare_onnx
    from flare_onnx.engine import Limits
    from flare_onnx.serve import ModelSet, create_app

    payload = json.loads(body)
    task = payload.pop("task")  # the service takes the task from the path
    models = ModelSet.of({name: flare_onnx.load(tiny_bundle, threads=1)}, Limits.SERVICE, strict=False)
    with TestClient(create_app(models)) as client:
        r = client.post(f"/v1/{task}", json=payload)
        return r.status_code, r.json()


def _same(got: dict, want: dict) -> None:
    if "error" in want:
        assert "error" in got
    else:
        assert got == want


@pytest.fixture()
def cloud_folder(tiny_bundle, tmp_path, request, monkeypatch):
    from flare_onnx.cli import main

    folder = tmp_path / request.param
    assert main(["package", str(tiny_bundle), "-o", str(folder), "--target", request.param]) == 0
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("FLARE_ONNX_BUNDLE")  # the entry point finds the bundle beside itself
    sl._load.cache_clear()
    return folder


@pytest.mark.parametrize("cloud_folder", ["gcp"], indirect=True)
def test_cloud_run_functions_answer_as_the_service(cloud_folder, tiny_bundle):
    from functions_framework import create_app

    assert "functions-framework" in (cloud_folder / "requirements.txt").read_text()
    client = create_app(
        target="gcp_function", source=str(cloud_folder / "main.py"), signature_type="http"
    ).test_client()
    for body, status in CLOUD_REQUESTS:
        r = client.post("/", data=body, content_type="application/json")
        want_status, want = _service(tiny_bundle, body) if status != 400 else (400, {"error": ""})
        assert r.status_code == status == want_status, (body[:40], r.status_code)
        _same(r.get_json(), want)


@pytest.mark.parametrize("cloud_folder", ["azure"], indirect=True)
def test_azure_functions_answer_as_the_service(cloud_folder, tiny_bundle):
    import importlib

    import azure.functions as func

    assert json.loads((cloud_folder / "host.json").read_text())["version"] == "2.0"
    app = importlib.import_module("function_app").app
    (function,) = app.get_functions()
    assert function.get_function_name() == "flare"
    for body, status in CLOUD_REQUESTS:
        r = function.get_user_function()(func.HttpRequest(method="POST", url="/api/flare", body=body.encode()))
        want_status, want = _service(tiny_bundle, body) if status != 400 else (400, {"error": ""})
        assert r.status_code == status == want_status, (body[:40], r.status_code)
        _same(json.loads(r.get_body()), want)
