"""``flare-onnx package``: the Lambda package runs under AWS's own runtime interface client.

The package is built for this machine's Python and C library (as a container image would be)
and run by ``awslambdaric`` — what Lambda's Python base images run — in an interpreter that
sees nothing but the package, awslambdaric and the standard library (``-I -S``). The Lambda
Runtime API it talks to is a small local implementation written for this test (next
invocation, response, error). The arm64 package is built too and holds only aarch64 code.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flare_onnx.cli import main
from flare_onnx.package import ELF_MACHINE

pytestmark = pytest.mark.slow  # pip resolves wheels for other platforms (from its cache once warm)

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
GLIBC = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # this machine's, e.g. 2.36
TEXTS = ["Il gatto dorme sul divano.", "Roma è la capitale d'Italia."]
RUNTIME = "/2018-06-01/runtime"


class RuntimeAPI:
    """The Lambda Runtime API, as far as a function sees it: events handed out one at a time by
    ``GET invocation/next``, answers taken by ``POST invocation/{id}/response`` or ``/error``."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.answers: dict[str, queue.Queue[tuple[str, Any]]] = {}
        self.init_errors: list[Any] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                assert self.path == f"{RUNTIME}/invocation/next", self.path
                request_id, event = api.events.get()
                body = json.dumps(event).encode()
                self.send_response(200)
                for key, value in {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 60_000),
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:eu-south-1:123456789012:function:flare",
                    "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                }.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.removeprefix(RUNTIME + "/").split("/")
                if parts[:2] == ["init", "error"]:
                    api.init_errors.append(json.loads(data or b"null"))
                else:
                    kind = parts[2]  # invocation/{id}/response | error
                    api.answers[parts[1]].put((kind, json.loads(data or b"null")))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def invoke(self, event: Any, timeout: float = 60) -> tuple[str, Any]:
        request_id = str(uuid.uuid4())
        answer: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.answers[request_id] = answer
        self.events.put((request_id, event))
        try:
            return answer.get(timeout=timeout)
        finally:
            del self.answers[request_id]

    def close(self) -> None:
        self.server.shutdown()


def _http_event(body: str, *, base64: bool = False) -> dict[str, Any]:
    """An API Gateway HTTP API (v2) / function-URL event."""
    import base64 as b64

    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/"}},
        "body": b64.b64encode(body.encode()).decode() if base64 else body,
        "isBase64Encoded": base64,
    }


@pytest.fixture(scope="module")
def ric(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """awslambdaric in a folder of its own (pip, for this interpreter)."""
    folder = tmp_path_factory.mktemp("ric")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--target", str(folder), "awslambdaric>=3"], check=True)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def package(tiny_feature_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "function.zip"
    assert main(["package", str(tiny_feature_bundle), "-o", str(out), "--python", PY, "--glibc", GLIBC]) == 0
    folder = out.with_suffix("")
    with zipfile.ZipFile(out) as zf:
        zf.extractall(folder)
    return folder


@pytest.fixture()
def function(package: Path, ric: Path):
    """The package under awslambdaric, in a clean interpreter, against a local Runtime API."""
    api = RuntimeAPI()
    boot = (
        f"import sys; sys.path[:0] = [{str(package)!r}, {str(ric)!r}]; sys.argv = ['awslambdaric', 'handler.handler']; "
        "import runpy; runpy.run_module('awslambdaric', run_name='__main__')"
    )
    env = {"AWS_LAMBDA_RUNTIME_API": api.address, "LAMBDA_TASK_ROOT": str(package), "_HANDLER": "handler.handler",
           "FLARE_ONNX_THREADS": "1", "PATH": os.environ.get("PATH", ""), "HOME": str(package)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot], cwd=package, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        yield api, proc
    finally:
        proc.kill()
        out = proc.communicate()[0]
        api.close()
        assert not api.init_errors, (api.init_errors, out[-3000:])


def _service_answer(bundle: Path, texts: list[str]) -> dict[str, Any]:
    """What the HTTP service answers for the same request (its app, in process)."""
    from starlette.testclient import TestClient

    import flare_onnx
    from flare_onnx.serve import create_app

    with TestClient(create_app(flare_onnx.load(bundle, threads=1))) as client:
        response = client.post("/v1/embed", json={"texts": texts})
        assert response.status_code == 200
        return response.json()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def test_the_package_holds_the_runtime_and_the_bundle_only(package):
    names = {p.name for p in package.iterdir()}
    assert {"handler.py", "bundle", "flare_onnx", "numpy", "onnxruntime", "tokenizers"} <= names
    assert not names & {"torch", "transformers", "optimum", "onnx", "tqdm", "huggingface_hub", "starlette"}
    assert not (package / "flare_onnx" / "serve").exists() and not list(package.rglob("tests"))
    assert not list(package.glob("onnxruntime/capi/libonnxruntime.so*"))  # the C-API copy the binding never loads
    manifest = json.loads((package / "bundle" / "manifest.json").read_text())
    assert list(manifest["graphs"]) == ["int8"] and "model.fp32.onnx" not in manifest["files"]
    assert not (package / "bundle" / "model.fp32.onnx").exists()
    assert list(package.rglob("LICENSE*")) or list(package.rglob("*.dist-info/licenses/*"))  # licences kept
    assert list((package / "flare_onnx" / "__pycache__").glob(f"*.cpython-{PY.replace('.', '')}.pyc"))


def test_the_handler_imports_from_the_package_and_the_standard_library_only(package):
    """In an interpreter without site-packages (-I -S), importing the handler loads the bundle
    and every module it loads comes from the package or the standard library."""
    stdlib = os.path.dirname(os.__file__)
    probe = (
        f"import sys; sys.path[:0] = [{str(package)!r}]; import handler, json; "
        "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))"
    )
    env = {"PATH": os.environ.get("PATH", ""), "LAMBDA_TASK_ROOT": str(package)}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, env=env, cwd=package
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [f for f in json.loads(proc.stdout) if f]
    assert any(f.startswith(str(package / "onnxruntime")) for f in files)
    outside = [f for f in files if not f.startswith((str(package), stdlib))]
    assert outside == []


def test_answers_under_awslambdaric_as_the_service_does(function, tiny_feature_bundle):
    api, proc = function
    want = _service_answer(tiny_feature_bundle, TEXTS)
    kind, got = api.invoke(_http_event(json.dumps({"task": "embed", "texts": TEXTS})))
    assert kind == "response" and got["statusCode"] == 200, got
    body = json.loads(got["body"])
    assert body["task"] == want["task"] == "embed" and len(body["results"]) == len(TEXTS)
    for mine, theirs in zip(body["results"], want["results"]):
        assert mine["embedding"] == pytest.approx(theirs["embedding"], abs=1e-6)
    kind, got = api.invoke(_http_event(json.dumps({"task": "embed", "texts": TEXTS}), base64=True))
    assert kind == "response" and json.loads(got["body"])["results"] == body["results"]
    kind, got = api.invoke({"task": "embed", "texts": TEXTS})  # a direct invocation: the payload itself
    assert kind == "response" and json.loads(got["body"])["results"] == body["results"]


def test_bad_requests_get_their_status_and_the_next_one_is_served(function):
    api, proc = function
    kind, got = api.invoke(_http_event("{not json"))
    assert kind == "response" and got["statusCode"] == 400 and "not valid JSON" in json.loads(got["body"])["error"]
    kind, got = api.invoke(_http_event(json.dumps({"task": "explode", "texts": ["x"]})))
    assert kind == "response" and got["statusCode"] == 422
    huge = json.dumps({"task": "embed", "texts": ["ciao " * 500] * 64})  # 160,000 characters: over 131,072
    before = _cpu_seconds(proc.pid)
    kind, got = api.invoke(_http_event(huge))
    spent = _cpu_seconds(proc.pid) - before
    assert kind == "response" and got["statusCode"] == 413, got
    assert spent < 0.05, f"a refused request cost {spent * 1e3:.0f} ms of CPU"
    kind, got = api.invoke(_http_event(json.dumps({"task": "embed", "texts": ["ancora qui"]})))
    assert kind == "response" and got["statusCode"] == 200


def test_memory_stays_flat_over_200_invocations(function):
    api, proc = function
    event = _http_event(json.dumps({"task": "embed", "texts": TEXTS * 4}))
    for i in range(200):
        kind, got = api.invoke(event)
        assert kind == "response" and got["statusCode"] == 200
        if i == 19:
            after_20 = _rss_kb(proc.pid)
    growth = (_rss_kb(proc.pid) - after_20) / 1024
    assert growth <= 5, f"RSS grew {growth:.1f} MB from invocation 20 to 200"


def test_the_arm64_package_holds_aarch64_code_only(tiny_feature_bundle, tmp_path):
    out = tmp_path / "arm"
    assert main(["package", str(tiny_feature_bundle), "-o", str(out), "--arch", "arm64", "--python", PY,
                 "--glibc", GLIBC, "--dir"]) == 0  # fmt: skip
    native = [p for p in out.rglob("*.so*") if p.is_file()]
    assert len(native) >= 3  # numpy, onnxruntime, tokenizers at least
    for path in native:
        head = path.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == ELF_MACHINE["aarch64"], path


def test_limits_and_runtimes_are_refused_before_anything_is_written(tiny_feature_bundle, tmp_path, capsys):
    out = tmp_path / "x.zip"
    # python3.11's Lambda runtime is Amazon Linux 2 (glibc 2.26): today's onnxruntime wheels need 2.28
    assert main(["package", str(tiny_feature_bundle), "-o", str(out), "--python", "3.11"]) == 2
    assert "Amazon Linux 2 (glibc 2.26)" in capsys.readouterr().err and not out.exists()
    assert main(["package", str(tmp_path), "-o", str(out)]) != 0  # not a bundle
    assert "manifest" in capsys.readouterr().err and not out.exists()


def test_each_lambda_limit_is_named_with_its_excess(tmp_path):
    from flare_onnx.package import DIRECT_UPLOAD_LIMIT, UNZIPPED_LIMIT, PackageError, _check_limits

    zips = [tmp_path / "function.zip"]
    with pytest.raises(PackageError, match=r"over Lambda's 250 MiB limit .* by 1\.0 MB"):
        _check_limits(zips, [1], [UNZIPPED_LIMIT + 1_000_000], via_s3=True)
    with pytest.raises(
        PackageError, match=r"over Lambda's 50 MiB direct-upload limit by 2\.0 MB: upload it through S3"
    ):
        _check_limits(zips, [DIRECT_UPLOAD_LIMIT + 2_000_000], [1], via_s3=False)
    _check_limits(zips, [DIRECT_UPLOAD_LIMIT + 2_000_000], [UNZIPPED_LIMIT], via_s3=True)  # S3 takes it


def test_a_layer_and_a_function_with_their_sam_template(tiny_feature_bundle, tmp_path, package, monkeypatch, capsys):
    import yaml

    out = tmp_path / "pkg"
    assert main(["package", str(tiny_feature_bundle), "-o", str(out), "--layer", "--python", PY, "--glibc", GLIBC]) == 0
    with zipfile.ZipFile(out / "layer.zip") as zf:
        layer = zf.namelist()
    with zipfile.ZipFile(out / "function.zip") as zf:
        function = zf.namelist()
    assert all(n.startswith("python/") for n in layer) and "python/flare_onnx/serverless.py" in layer
    assert any(n.startswith("python/onnxruntime/") for n in layer)
    assert "handler.py" in function and "bundle/manifest.json" in function
    assert not any(n.startswith(("numpy/", "onnxruntime/", "flare_onnx/")) for n in function)
    template = yaml.safe_load((out / "template.yaml").read_text().replace("!Ref ", ""))
    fn = template["Resources"]["FlareFunction"]["Properties"]
    assert fn["Handler"] == "handler.handler" and fn["CodeUri"] == "function.zip" and fn["Runtime"] == f"python{PY}"
    assert template["Resources"]["FlareOnnxRuntime"]["Properties"]["ContentUri"] == "layer.zip"
    # the zip form wrote its template beside the zip; an existing output is refused before pip runs
    assert yaml.safe_load((package.parent / "template.yaml").read_text())["Resources"]["FlareFunction"]
    before = (out / "layer.zip").stat()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran for an output that exists"))
    capsys.readouterr()
    assert main(["package", str(tiny_feature_bundle), "-o", str(out), "--layer"]) == 2
    assert "exists" in capsys.readouterr().err and (out / "layer.zip").stat() == before
