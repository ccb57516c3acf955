"""The serverless entry points."""

from __future__ import annotations

import base64
import json

import pytest

import flare_onnx.serverless as sl


@pytest.fixture(autouse=True)
def bundle_env(tiny_bundle, monkeypatch):
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(tiny_bundle))
    monkeypatch.setattr(sl, "_MODEL", None)


def test_handle_and_model_loaded_once():
    out = sl.handle({"task": "embed", "texts": ["ciao", "buongiorno"], "normalize": False})
    assert len(out["results"]) == 2 and len(out["results"][0]) == 32
    first = sl.get_model()
    sl.handle({"task": "fill-mask", "texts": ["Roma è la <mask>."], "top_k": 2})
    assert sl.get_model() is first


def test_lambda_events():
    body = json.dumps({"task": "fill-mask", "texts": ["Roma è la <mask>."]})
    r = sl.handler({"body": body})
    assert r["statusCode"] == 200 and len(json.loads(r["body"])["results"][0][0]) == 5
    r = sl.handler({"body": base64.b64encode(body.encode()).decode(), "isBase64Encoded": True})
    assert r["statusCode"] == 200
    assert sl.handler({"task": "embed", "texts": ["diretto"]})["statusCode"] == 200


@pytest.mark.parametrize(
    "event, message",
    [
        ({"task": "dance", "texts": ["x"]}, "task must be one of"),
        ({"task": "embed", "texts": []}, "empty list"),
        ({"task": "embed", "texts": ["x"], "colour": "red"}, "unknown option"),
        ({"body": "{not json"}, "Expecting"),
        ({"task": "tag", "texts": ["x"]}, "token-classification"),
    ],
)
def test_errors_are_400_or_500_with_a_message(event, message):
    r = sl.handler(event)
    assert r["statusCode"] in (400, 500) and message in json.loads(r["body"])["error"]


def test_missing_bundle_env(monkeypatch):
    monkeypatch.delenv("FLARE_ONNX_BUNDLE")
    r = sl.handler({"task": "embed", "texts": ["x"]})
    assert r["statusCode"] == 400 and "FLARE_ONNX_BUNDLE" in json.loads(r["body"])["error"]
