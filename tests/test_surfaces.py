"""Every task through every surface — Python, CLI verb, file job, HTTP, serverless, Ray Data —
with the same texts and options: the same results under the same key, and the same answer
to the same bad input. One registry defines the tasks; this test holds the surfaces to it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import flare_onnx
import flare_onnx.serverless as sl
from flare_onnx import InputError, TaskNotAvailableError
from flare_onnx.cli import main
from flare_onnx.job import JobConfig, run_job
from flare_onnx.serve import create_app
from flare_onnx.engine.tasks import TASKS, get_task

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

TEXTS = ["Roma è la <mask> d'Italia.", "Mario Rossi vive a <mask>, vicino al Colosseo."]
PLAIN = ["Mario Rossi vive a Roma.", "L'Università di Bologna è dell'XI secolo."]

# task -> (bundle fixture, texts, options that differ from the defaults)
CASES = {
    "fill-mask": ("tiny_bundle", TEXTS, {"top_k": 3}),
    "embed": ("tiny_bundle", PLAIN, {"pooling": "cls", "normalize": False}),
    "tag": ("tiny_tagger", PLAIN, {"aggregation": "average"}),
    "classify": ("tiny_classifier", PLAIN, {"top_k": 2}),
}


def test_every_registry_task_is_covered():
    assert set(CASES) == set(TASKS)


def _close(a: Any, b: Any) -> None:
    """Results equal, floats within the INT8 batch-composition tolerance."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, float):
        assert abs(a - b) < 2e-3
    else:
        assert a == b


def _cli(argv: list[str], capsys) -> list[dict[str, Any]]:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _flags(options: dict[str, Any]) -> list[str]:
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag.replace("--", "--no-")] if value is False else [flag, str(value)]
    return out


@pytest.mark.parametrize("task", list(CASES))
def test_same_results_under_the_same_key_on_every_surface(task, request, tmp_path, capsys, monkeypatch):
    fixture, texts, options = CASES[task]
    bundle = request.getfixturevalue(fixture)
    spec = get_task(task)
    model = flare_onnx.load(bundle, precision="fp32")
    expected = [spec.record(r) for r in model.predict(task, texts, options)]
    assert all(set(r) == {spec.result_key} for r in expected)

    # CLI verb, options placed before the texts
    got = _cli([task, str(bundle), *_flags(options), "--precision", "fp32", *texts], capsys)
    _close([{k: v for k, v in r.items() if k != "text"} for r in got], expected)

    # file job
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert run_job(JobConfig(task=task, bundle=str(bundle), input=str(src), output=str(out), options=options,
                             model_options={"precision": "fp32"}, progress=False)) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    _close([{spec.result_key: r[spec.result_key]} for r in rows], expected)

    # HTTP
    with TestClient(create_app(model)) as client:
        r = client.post(f"/v1/{task}", json={"texts": texts, **options})
        assert r.status_code == 200
        _close(r.json()["results"], expected)
        assert r.json()["task"] == task

    # serverless
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(bundle))
    monkeypatch.setenv("FLARE_ONNX_PRECISION", "fp32")
    answer = sl.handle({"task": task, "texts": texts, **options})
    _close(answer["results"], expected)

    # Ray Data (a numpy batch, as map_batches hands it)
    import flare_onnx.ray_data as frd

    predictor = frd.PREDICTORS[task](str(bundle), options=options, model_options={"precision": "fp32"})
    column = predictor({"text": np.array(texts, dtype=object)})[spec.result_key]
    values = [row.tolist() for row in column] if task == "embed" else [json.loads(v) for v in column]
    _close([{spec.result_key: v} for v in values], expected)


BAD = [
    # (options, the message every surface must give)
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"top_k": 10_000}, "top_k must be at most 100"),
    ({"pooling": "max"}, "fill-mask has no option 'pooling'"),
]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize("options, message", BAD)
def test_the_same_bad_option_gets_the_same_answer_everywhere(tiny_bundle, tmp_path, capsys, monkeypatch, options, message):
    model = flare_onnx.load(tiny_bundle, precision="fp32")
    with pytest.raises(InputError, match=message):
        model.predict("fill-mask", TEXTS, options)
    assert _exit_code(["fill-mask", str(tiny_bundle), *_flags(options), *TEXTS]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err or "unrecognized arguments: --pooling" in err  # argparse knows the flags
    src = tmp_path / "in.txt"
    src.write_text(TEXTS[0] + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        run_job(JobConfig(task="fill-mask", bundle=str(tiny_bundle), input=str(src), output=str(tmp_path / "o.jsonl"), options=options))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # nothing left behind
    with TestClient(create_app(model)) as client:
        r = client.post("/v1/fill-mask", json={"texts": TEXTS, **options})
        assert r.status_code == 422 and message in r.json()["error"]
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(tiny_bundle))
    r = sl.handler({"task": "fill-mask", "texts": TEXTS, **options})
    assert r["statusCode"] == 422 and message in json.loads(r["body"])["error"]
    import flare_onnx.ray_data as frd

    with pytest.raises(InputError, match=message):
        frd.FillMask(str(tiny_bundle), options=options)


def test_a_task_the_bundle_lacks_is_the_same_error_everywhere(tiny_bundle, tmp_path, capsys, monkeypatch):
    model = flare_onnx.load(tiny_bundle)
    with pytest.raises(TaskNotAvailableError, match="tag needs a bundle exported with --task token-classification"):
        model.predict("tag", PLAIN)
    assert main(["tag", str(tiny_bundle), "testo"]) == TaskNotAvailableError.exit_code
    with TestClient(create_app(model)) as client:
        assert client.post("/v1/tag", json={"texts": PLAIN}).status_code == TaskNotAvailableError.http_status
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(tiny_bundle))
    assert sl.handler({"task": "tag", "texts": PLAIN})["statusCode"] == TaskNotAvailableError.http_status


def test_cli_takes_options_anywhere_and_has_a_version(tiny_bundle, capsys):
    before = _cli(["fill-mask", str(tiny_bundle), "--top-k", "2", "--precision", "fp32", TEXTS[0]], capsys)
    after = _cli(["fill-mask", str(tiny_bundle), TEXTS[0], "--top-k", "2", "--precision", "fp32"], capsys)
    assert before == after and len(before[0]["masks"][0]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"flare-onnx {flare_onnx.__version__}"


def test_manifest_task_must_match_the_graph(tiny_feature_bundle, tmp_path):
    """A manifest that says fill-mask over a feature-extraction graph fails at load, not at the first call."""
    import shutil

    bundle = tmp_path / "lying"
    shutil.copytree(tiny_feature_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["task"] = "fill-mask"
    manifest["model"]["special_tokens"]["mask"] = ["<mask>", 4]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(flare_onnx.BundleError, match="offers fill-mask, but its graph has no mask_logits output"):
        flare_onnx.load(bundle)


def test_a_text_over_the_token_cap_is_refused_everywhere_and_only_that_text(tiny_bundle, tmp_path, capsys, monkeypatch):
    """max_text_tokens bounds the sliding-window work of one text, on every surface; a file job
    sends the one long record to its errors file and finishes the others; None lifts the cap."""
    long = " ".join(PLAIN * 40)  # a few hundred tokens
    message = "sliding windows read at most 64 per text"
    model = flare_onnx.load(tiny_bundle, max_text_tokens=64)
    with pytest.raises(InputError, match=message):
        model.embed([PLAIN[0], long], window="sliding")
    assert model.embed([long]).shape[0] == 1  # truncation reads max_length tokens: no cap needed
    assert flare_onnx.load(tiny_bundle, max_text_tokens=None).embed([long], window="sliding").shape[0] == 1
    argv = ["embed", str(tiny_bundle), "--window", "sliding", "--max-text-tokens", "64"]
    assert _exit_code([*argv, long]) == 2 and message in capsys.readouterr().err
    src = tmp_path / "in.txt"
    src.write_text(f"{PLAIN[0]}\n{long}\n{PLAIN[1]}\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert _exit_code(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(out), "--window", "sliding",
                       "--max-text-tokens", "64", "--no-progress"]) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 3] and all(len(r["embedding"]) == 32 for r in rows)
    assert len(errors) == 1 and errors[0]["line"] == 2 and message in errors[0]["error"]
    monkeypatch.setenv("FLARE_ONNX_BUNDLE", str(tiny_bundle))
    monkeypatch.setenv("FLARE_ONNX_MAX_TEXT_TOKENS", "64")
    r = sl.handler({"task": "embed", "texts": [long], "window": "sliding"})
    assert r["statusCode"] == 422 and message in json.loads(r["body"])["error"]
    with TestClient(create_app(model)) as client:
        r = client.post("/v1/embed", json={"texts": [long], "window": "sliding"})
        assert r.status_code == 422 and message in r.json()["error"]
