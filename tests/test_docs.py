"""The README and docs/ as a newcomer uses them: every Python block runs as written against
the bundle the demo writes (``artifacts/flare-it-reference-onnx``), every shell line of the
README's quick start runs, and its curl call is accepted by the service. A block that cannot
run here says why in a ``<!-- not run: … -->`` line above it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- not run: (?P<why>[^>]*)-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)

pytestmark = pytest.mark.slow


def _blocks(lang: str) -> list[tuple[str, str, str | None]]:
    out = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text(encoding="utf-8")):
            if m.group("lang") == lang:
                out.append((page.relative_to(ROOT).as_posix(), m.group("body"), m.group("why")))
    return out


@pytest.fixture(scope="module")
def workdir(reference_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as after `bash scripts/demo.sh`."""
    work = tmp_path_factory.mktemp("newcomer")
    (work / "artifacts").mkdir()
    (work / "artifacts" / "flare-it-reference-onnx").symlink_to(reference_bundle)
    return work


def test_every_python_block_runs_or_says_why_not(workdir: Path):
    blocks = _blocks("python")
    assert len(blocks) >= 4
    for where, body, why in blocks:
        if why is not None:
            assert why.strip(), f"a block in {where} is marked not run without a reason"
            continue
        done = subprocess.run([sys.executable, "-c", body], cwd=workdir, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"a Python block in {where} fails as written:\n{body}\n{done.stderr[-2000:]}"


def test_the_readmes_shell_quick_start_runs(workdir: Path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in _blocks("bash") if "flare-onnx fill-mask artifacts/" in b[1])[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith(("flare-onnx serve", "curl", "until", "kill")):
            continue  # the service: the next tests
        done = subprocess.run(command, shell=True, cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, f"README line fails as written: {command}\n{done.stderr[-2000:]}"
    assert (workdir / "texts.emb.jsonl").read_text().count("\n") == 2
    assert "flare-onnx serve artifacts/flare-it-reference-onnx" in readme


def test_the_readmes_curl_call_is_answered(reference_bundle: Path):
    from starlette.testclient import TestClient

    import flare_onnx
    from flare_onnx.serve import create_app

    line = next(ln for _, body, _ in _blocks("bash") for ln in body.splitlines() if ln.startswith("curl"))
    words = shlex.split(line.split("  #")[0])
    headers = dict(h.split(": ", 1) for h in (words[i + 1] for i, w in enumerate(words) if w == "-H"))
    body = words[words.index("-d") + 1]
    path = "/" + words[2].split("/", 1)[1]
    with TestClient(create_app(flare_onnx.load(reference_bundle))) as client:
        answer = client.post(path, content=body.encode(), headers=headers)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"][0]["embedding"]) == 384 and json.loads(body)["texts"] == ["Ciao"]


def test_the_readmes_http_quick_start_prints_an_answer(workdir: Path):
    """The README's service lines as a newcomer pastes them into one shell (on a free port):
    the loop waits for /ready, so the curl call prints an answer rather than nothing."""
    import socket

    block = next(b for b in _blocks("bash") if "flare-onnx fill-mask artifacts/" in b[1])[1]
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines()]
    service = [ln for ln in lines if ln.startswith(("flare-onnx serve", "until", "curl", "kill"))]
    assert [ln.split()[0] for ln in service] == ["flare-onnx", "until", "curl", "kill"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = "\n".join(ln.replace("8080", str(port)) for ln in service)
    script = script.replace("flare-onnx serve artifacts/flare-it-reference-onnx",
                            f"flare-onnx serve artifacts/flare-it-reference-onnx --port {port}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", "set -m\n" + script + "\nwait"], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env=env)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answer["results"][0]["embedding"]) == 384, done.stderr[-2000:]
