"""One service, many models: names, routes, one inference thread, per-model limits and
metrics, and reload without downtime (issue #41)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import InputError
from flare_onnx.engine import Limits
from flare_onnx.serve import ModelSet, ServeConfig, create_app
from flare_onnx.serve.models import parse_model_args

from .test_serve import _free_port

httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

TEXTS = ["Mario Rossi vive a Roma.", "Il gatto dorme sul divano.", "Domani pioverà su Milano."]


@pytest.fixture(scope="module")
def three(tiny_bundle, tiny_tagger, tiny_feature_bundle):
    return {"mask": tiny_bundle, "ner": tiny_tagger, "embed": tiny_feature_bundle}


@pytest.fixture(scope="module")
def loaded(three):
    return {name: flare_onnx.load(path, precision="fp32") for name, path in three.items()}


@pytest.fixture(scope="module")
def client(loaded):
    models = ModelSet.of(loaded, Limits.SERVICE)
    with TestClient(create_app(models, ServeConfig())) as c:
        yield c


def test_each_model_answers_what_the_library_answers(client, loaded):
    r = client.post("/v1/models/ner/tag", json={"texts": TEXTS})
    assert r.status_code == 200 and r.json()["model"] == "ner"
    want = [[(w.word, w.label) for w in t.words] for t in loaded["ner"].tag(TEXTS)]
    assert [[(w["word"], w["label"]) for w in res["tags"]["words"]] for res in r.json()["results"]] == want
    r = client.post("/v1/models/ner/ner", json={"texts": TEXTS[:1]})  # the alias, as /v1/ner
    assert r.status_code == 200 and r.json()["task"] == "tag"
    r = client.post("/v1/models/embed/embed", json={"texts": TEXTS})
    np.testing.assert_allclose([x["embedding"] for x in r.json()["results"]], loaded["embed"].embed(TEXTS), atol=1e-5)
    r = client.post("/v1/models/mask/fill-mask", json={"texts": ["Roma è la <mask> d'Italia."], "top_k": 3})
    want_tokens = [p.token for p in loaded["mask"].fill_mask(["Roma è la <mask> d'Italia."], top_k=3)[0][0]]
    assert [p["token"] for p in r.json()["results"][0]["masks"][0]] == want_tokens
    # /v1/{task} is the first model's, and says which model answered
    r = client.post("/v1/fill-mask", json={"texts": ["Roma è la <mask> d'Italia."]})
    assert r.status_code == 200 and r.json()["model"] == "mask"


def test_unknown_models_and_tasks_are_404_naming_what_is_served(client):
    r = client.post("/v1/models/pos/tag", json={"texts": ["ciao"]})
    assert r.status_code == 404 and r.json()["error"] == "no model 'pos' here; this service serves 'mask', 'ner', 'embed'"
    r = client.post("/v1/models/ner/translate", json={"texts": ["ciao"]})
    assert r.status_code == 404 and "no task 'translate'; 'ner' does tag" in r.json()["error"]
    r = client.post("/v1/models/ner/embed", json={"texts": ["ciao"]})
    assert r.status_code == 404 and "offers tag" in r.json()["error"]
    r = client.post("/v1/embeddings", json={"input": "ciao", "model": "text-embedding-3-small"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "'mask', 'ner', 'embed'" in r.json()["error"]["message"]


def test_models_are_listed_as_openai_lists_them_and_info_shows_no_path(client, three):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["mask", "ner", "embed"]
    assert all(m["object"] == "model" and m["created"] > 0 for m in listed["data"])
    assert client.get("/v1/models/ner").json()["tasks"] == ["tag"]
    assert client.get("/v1/models/pos").status_code == 404
    info = client.get("/v1/info").json()
    assert [m["name"] for m in info["models"]] == ["mask", "ner", "embed"] and info["name"] == "mask"
    assert [m["tasks"] for m in info["models"]] == [["fill-mask", "embed"], ["tag"], ["embed"]]
    page = client.get("/v1/info").text
    assert all(str(path) not in page and str(path.parent) not in page for path in three.values())
    assert client.get("/ready").json()["models"] == {"mask": ["fill-mask", "embed"], "ner": ["tag"], "embed": ["embed"]}


def test_metrics_and_the_access_log_name_the_model(client, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="flare_onnx.access"):
        assert client.post("/v1/models/embed/embed", json={"texts": ["Piove."]}).status_code == 200
        assert client.post("/v1/models/nessuno/embed", json={"texts": ["Piove."]}).status_code == 404
    text = client.get("/metrics").text
    assert 'flare_onnx_requests_total{model="embed",route="/v1/models/{name}/{task}",status="200"}' in text
    # an unknown name is not a label value: clients cannot grow the metrics
    assert 'flare_onnx_requests_total{model="",route="/v1/models/{name}/{task}",status="404"}' in text
    assert "nessuno" not in text
    assert 'flare_onnx_model_info{backend="onnxruntime",bundle="tagger",model="ner"' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "flare_onnx.access"]
    assert any('"model": "embed"' in line and '"status": 200' in line for line in lines)


def test_limits_can_differ_per_model(three):
    models = ModelSet.of({n: flare_onnx.load(p, precision="fp32") for n, p in three.items()}, Limits.SERVICE)
    models.served["ner"].limits = Limits(max_texts=2)
    with TestClient(create_app(models, ServeConfig())) as c:
        r = c.post("/v1/models/ner/tag", json={"texts": TEXTS})
        assert r.status_code == 422 and "at most 2" in r.json()["error"]
        assert c.post("/v1/models/embed/embed", json={"texts": TEXTS}).status_code == 200


def test_one_inference_thread_serves_every_model(three):
    """One CPU budget: every model's inference runs on the service's one inference thread,
    never on two at once."""
    models = {n: flare_onnx.load(p, precision="fp32") for n, p in three.items()}
    seen: list[tuple[str, int]] = []
    busy = threading.Semaphore(1)
    overlaps: list[str] = []
    for name, model in models.items():
        run = model.run

        def traced(request, _run=run, _name=name):
            if not busy.acquire(blocking=False):
                overlaps.append(_name)
            try:
                seen.append((_name, threading.get_ident()))
                return _run(request)
            finally:
                busy.release()

        model.run = traced
    with TestClient(create_app(ModelSet.of(models, Limits.SERVICE), ServeConfig())) as c:
        calls = [("mask", "fill-mask", "Roma è la <mask> d'Italia."), ("ner", "tag", TEXTS[0]), ("embed", "embed", TEXTS[1])]
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda a: c.post(f"/v1/models/{a[0]}/{a[1]}", json={"texts": [a[2]] * 4}).status_code,
                                  calls * 4))
    assert codes == [200] * 12 and not overlaps
    assert {name for name, _ in seen} == {"mask", "ner", "embed"} and len({ident for _, ident in seen}) == 1


@pytest.mark.parametrize(
    "args, name, want, named",
    [
        (["./ner"], None, [("ner", "./ner")], False),
        (["./ner"], "entities", [("entities", "./ner")], True),
        (["ner=./a", "pos=./b=c"], None, [("ner", "./a"), ("pos", "./b=c")], True),
        (["./a=b/c"], None, [("c", "./a=b/c")], False),  # not a name before '=': a path
        (["osiria/flare-it"], None, [("flare-it", "osiria/flare-it")], False),
    ],
)
def test_bundle_arguments(args, name, want, named):
    entries, got_named = parse_model_args(args, name)
    assert [(e.name, e.bundle) for e in entries] == want and got_named == named


@pytest.mark.parametrize(
    "args, name, message",
    [
        (["a=./x", "a=./y"], None, "two models are named 'a'"),
        (["a=./x", "b=./y"], "c", "--name names a single bundle"),
        (["a="], None, "give the bundle after '='"),
        (["./x"], "no/slash", "is not a model name"),
    ],
)
def test_bad_bundle_arguments_are_refused(args, name, message):
    with pytest.raises(InputError, match=message):
        parse_model_args(args, name)


# -- a real server: the CLI, the OpenAI client, reload --------------------------------------


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flare_onnx", "serve", *args, "--port", str(port), "--precision", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not become ready: " + proc.stderr.read())


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    err = proc.stderr.read()
    assert "Traceback" not in err
    return err


def test_a_bad_bundle_fails_the_start_naming_it(three, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flare_onnx", "serve", f"ner={three['ner']}", f"pos={tmp_path / 'absent'}",
                           "--port", str(_free_port())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "cannot serve 'pos'" in proc.stderr and "Traceback" not in proc.stderr


def test_three_models_in_one_process_with_the_openai_client(three, loaded):
    openai = pytest.importorskip("openai")
    proc, url = _start(*(f"{n}={p}" for n, p in three.items()), "--limit", "ner.max_texts=2")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        got = client.embeddings.create(model="embed", input=TEXTS)
        assert got.model == "embed"
        np.testing.assert_allclose([d.embedding for d in got.data], loaded["embed"].embed(TEXTS), atol=1e-5)
        with pytest.raises(openai.NotFoundError, match="no model 'gpt' here"):
            client.embeddings.create(model="gpt", input="ciao")
        assert [m.id for m in client.models.list()] == ["mask", "ner", "embed"]
        r = httpx.post(url + "/v1/models/ner/tag", json={"texts": TEXTS})
        assert r.status_code == 422 and "at most 2" in r.json()["error"]
        r = httpx.post(url + "/v1/models/ner/tag", json={"texts": TEXTS[:2]})
        want = [[w.label for w in t.words] for t in loaded["ner"].tag(TEXTS[:2])]
        assert [[w["label"] for w in res["tags"]["words"]] for res in r.json()["results"]] == want
    finally:
        err = _stop(proc)
    assert "as 'ner'" in err and '"model": "embed"' in err


def test_a_single_bundle_keeps_its_urls_and_takes_a_name(three):
    proc, url = _start(str(three["embed"]), "--name", "frasi")
    try:
        assert httpx.post(url + "/v1/embed", json={"texts": ["ciao"]}).json()["model"] == "frasi"
        assert httpx.post(url + "/v1/models/frasi/embed", json={"texts": ["ciao"]}).status_code == 200
        r = httpx.post(url + "/v1/embeddings", json={"input": "ciao", "model": "altro"})
        assert r.status_code == 404  # named: the OpenAI model field must match
    finally:
        _stop(proc)


@pytest.fixture
def other_embedder(tmp_path_factory):
    """A feature-extraction bundle with other weights: what a reload swaps in."""
    from flare_onnx_export import export_bundle, write_reference

    base = tmp_path_factory.mktemp("other")
    ckpt = write_reference(base / "ckpt", tiny=True, seed=7)
    return export_bundle(str(ckpt), base / "embed", task="feature-extraction", log=lambda m: None)


def test_reload_swaps_answers_without_a_failed_request(tiny_feature_bundle, other_embedder, tmp_path):
    live = tmp_path / "embed"
    shutil.copytree(tiny_feature_bundle, live)
    old = flare_onnx.load(tiny_feature_bundle, precision="fp32").embed(TEXTS[:1])[0]
    new = flare_onnx.load(other_embedder, precision="fp32").embed(TEXTS[:1])[0]
    assert float(old @ new) < 0.99  # the two bundles answer apart
    proc, url = _start(f"embed={live}")
    answers: list[tuple[int, list[float] | None]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def client() -> None:
        try:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(url + "/v1/models/embed/embed", json={"texts": TEXTS[:1]})
                    answers.append((r.status_code, r.json()["results"][0]["embedding"] if r.status_code == 200 else None))
        except BaseException as exc:  # noqa: BLE001 - reaches the test below
            failures.append(exc)

    workers = [threading.Thread(target=client) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        while len(answers) < 20 and not failures:  # requests in flight before the swap
            time.sleep(0.01)
        staged = tmp_path / "embed.new"
        shutil.copytree(other_embedder, staged)
        live.rename(tmp_path / "embed.old")
        staged.rename(live)
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while not failures and time.time() < deadline:
            if answers and answers[-1][1] is not None and np.allclose(answers[-1][1], new, atol=1e-5):
                break
            time.sleep(0.02)
        swapped_at = len(answers)
        while len(answers) < swapped_at + 20 and not failures:  # requests in flight after the swap
            time.sleep(0.01)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        err = _stop(proc)
    assert not failures, failures
    assert {status for status, _ in answers} == {200}
    kinds = ["old" if np.allclose(v, old, atol=1e-5) else "new" if np.allclose(v, new, atol=1e-5) else "other"
             for _, v in answers]
    assert "other" not in kinds and kinds[0] == "old" and kinds[-1] == "new"
    assert "reloaded 'embed'" in err


def test_a_reload_that_fails_verification_keeps_the_old_model(tiny_feature_bundle, tmp_path):
    live = tmp_path / "embed"
    shutil.copytree(tiny_feature_bundle, live)
    want = flare_onnx.load(tiny_feature_bundle, precision="fp32").embed(TEXTS[:1])[0]
    proc, url = _start(f"embed={live}")
    try:
        assert httpx.post(url + "/v1/reload").json() == {"models": {"embed": "unchanged"}}
        graph = live / "model.fp32.onnx"
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte changed: the manifest's hash no longer matches
        graph.write_bytes(bytes(data))
        outcome = httpx.post(url + "/v1/reload", json={"models": ["embed"]}, timeout=60).json()["models"]["embed"]
        assert outcome.startswith("kept: ") and "sha256" in outcome
        r = httpx.post(url + "/v1/models/embed/embed", json={"texts": TEXTS[:1]})
        np.testing.assert_allclose(r.json()["results"][0]["embedding"], want, atol=1e-5)
        assert httpx.post(url + "/v1/reload", json={"models": ["nope"]}).status_code == 404
    finally:
        err = _stop(proc)
    assert "reload of 'embed' failed, the old model goes on serving" in err


def test_a_request_for_another_model_goes_before_a_long_requests_next_slice(tiny_bundle, tiny_feature_bundle):
    """Round robin across models: a request that arrives while a long request's slice runs is
    served before that request's next slice (it waits one slice, not two or more)."""
    import asyncio

    from flare_onnx.serve.batcher import MicroBatcher

    a = flare_onnx.load(tiny_bundle, precision="fp32")
    b = flare_onnx.load(tiny_feature_bundle, precision="fp32")
    big = a.request("embed", ["Roma è la capitale d'Italia e una città antica."] * 40, limits=Limits.SERVICE)
    small = b.request("embed", ["Ciao."], limits=Limits.SERVICE)
    cfg = ServeConfig(max_wait_ms=0.0, slice_tokens=64)
    assert len(big.slices(64)) >= 8
    order: list[str] = []

    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(cfg)
        futures: list[asyncio.Future] = []

        async def arrive() -> None:
            futures.append(batcher.submit("b", b, small))

        run_a, run_b = a.run, b.run

        def traced_a(request):
            order.append("a")
            if len(order) == 1:  # B's request arrives while A's first slice runs
                asyncio.run_coroutine_threadsafe(arrive(), loop).result(timeout=30)
            return run_a(request)

        def traced_b(request):
            order.append("b")
            return run_b(request)

        a.run, b.run = traced_a, traced_b
        try:
            big_result = await batcher.submit("a", a, big)
            return [big_result, await futures[0]]
        finally:
            await loop.run_in_executor(None, batcher.stop)

    big_result, small_result = asyncio.run(scenario())
    assert order[:3] == ["a", "b", "a"] and order.count("b") == 1
    np.testing.assert_allclose(small_result[0], flare_onnx.load(tiny_feature_bundle, precision="fp32").embed(["Ciao."])[0], atol=1e-5)
    assert len(big_result) == 40


def test_with_two_lanes_a_small_request_runs_beside_a_long_slice(tiny_bundle, tiny_feature_bundle):
    """--lanes 2: while one lane runs a long request's slice, the other serves a small request
    for another model (the long slice here waits until the small one has run)."""
    import asyncio

    from flare_onnx.serve.batcher import MicroBatcher

    a = flare_onnx.load(tiny_bundle, precision="fp32", threads=1)
    b = flare_onnx.load(tiny_feature_bundle, precision="fp32", threads=1)
    long_request = a.request("embed", ["Roma è la capitale d'Italia e una città antica."] * 4, limits=Limits.SERVICE)
    small = b.request("embed", ["Ciao."], limits=Limits.SERVICE)
    a_started, b_ran = threading.Event(), threading.Event()
    run_a, run_b = a.run, b.run

    def held_a(request):
        a_started.set()
        assert b_ran.wait(timeout=20), "the small request did not run while the long slice held a lane"
        return run_a(request)

    def traced_b(request):
        out = run_b(request)
        b_ran.set()
        return out

    a.run, b.run = held_a, traced_b

    async def scenario() -> tuple[list, list]:
        batcher = MicroBatcher(ServeConfig(max_wait_ms=0.0, lanes=2))
        try:
            first = batcher.submit("a", a, long_request)
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, a_started.wait, 20)  # the long slice holds a lane
            return await batcher.submit("b", b, small), await first
        finally:
            await asyncio.get_running_loop().run_in_executor(None, batcher.stop)

    small_result, long_result = asyncio.run(scenario())
    assert len(small_result) == 1 and len(long_result) == 4
