"""The same bundles on aarch64, under user-mode emulation (qemu-user 10, Debian's arm64
Python 3.11, the runtime's aarch64 wheels: ``scripts/aarch64.sh``), against this machine's
results: every task through the Python API, the CLI and the serverless handler; a file job
killed and resumed; ``import flare_onnx`` torch-free. Emulation is exact arithmetic (it is
slow, not approximate), so the INT8 kernels onnxruntime picks for each emulated CPU are the
ones a real board runs: Cortex-A72 (Raspberry Pi 4: NEON, no dot product), Neoverse-N1
(Graviton 2, Ampere Altra: ``sdot``) and Neoverse-V1 (Graviton 3: ``sdot`` and ``i8mm``).

Skipped, saying why, where the emulator cannot be set up (no apt-get, no registry).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import aarch64_probe

ROOT = Path(__file__).resolve().parents[1]
CPUS = ("cortex-a72", "neoverse-n1", "neoverse-v1")
#: the CPU that also runs the full-size Flare-IT-shaped bundle (Graviton 3, Lambda's arm64),
#: through the Python API; the tiny bundles run the same kernels, and every surface, on every CPU
FULL_SIZE_ON = "neoverse-v1"
FULL_SIZE = "flare-it-shaped"
FP32_TOLERANCE = 1e-5
INT8_MIN_COSINE = 0.9999

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                                   reason="emulates aarch64 from an x86_64 Linux host")]


class Emulator:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def command(self, args: list[str], cpu: str = "max") -> list[str]:
        """The emulated interpreter: bytecode cached beside the emulator (the sysroot's
        standard library ships no .pyc; compiling it under emulation took ~5 s per process),
        never in the checkout; the libraries' thread pools at one thread (numpy's and
        tokenizers' idle threads spinning under emulation doubled the CPU time of a probe,
        32 -> 67 CPU-s for the full-size bundle, at the same wall time)."""
        env = {"PYTHONPATH": f"{self.dir / 'site'}{os.pathsep}{ROOT}", "PYTHONPYCACHEPREFIX": str(self.dir / "pycache"),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
        return [str(self.dir / "qemu/usr/bin/qemu-aarch64"), "-cpu", cpu, "-L", str(self.dir / "sysroot"),
                "-U", "PYTHONDONTWRITEBYTECODE", *(x for k, v in env.items() for x in ("-E", f"{k}={v}")),
                str(self.dir / "sysroot/usr/bin/python3.11"), *args]

    def run(self, args: list[str], cpu: str = "max", timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args, cpu), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


#: what setting up the emulator may take (a first set-up downloads ~60 MB of Debian packages
#: and wheels: ~1-2 min here); past it the tests skip, saying so
SETUP_BUDGET_S = 300


@pytest.fixture(scope="session")
def emulator() -> Emulator:
    # kept outside the checkout, so a fresh clone on the same machine (CI) reuses it
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flare-onnx" / "aarch64"
    directory = Path(os.environ.get("FLARE_AARCH64_DIR") or default)
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "aarch64.sh"), str(directory)], capture_output=True,
                              text=True, timeout=SETUP_BUDGET_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip(f"setting up the aarch64 emulator took over {SETUP_BUDGET_S} s (a slow package registry?)")
    if proc.returncode != 0:
        pytest.skip(f"no aarch64 emulator here: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return Emulator(Path(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tiny_feature_bundle: Path, tiny_tagger: Path, tiny_classifier: Path,
            reference_bundle: Path) -> dict[str, str]:
    return {"fill-mask": str(tiny_bundle), "embed": str(tiny_feature_bundle), "tag": str(tiny_tagger),
            "classify": str(tiny_classifier), FULL_SIZE: str(reference_bundle)}


@pytest.fixture(scope="module")
def x86(bundles: dict[str, str]) -> dict[str, Any]:
    # as the emulated run's file reads back
    return json.loads(json.dumps(aarch64_probe.probe(bundles, api_only=frozenset({FULL_SIZE}))))


@pytest.fixture(scope="module")
def arm_runs(emulator: Emulator, bundles: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The probe on every emulated CPU, the three started at once (each emulator is one
    process, mostly one thread: together they keep both CPUs busy)."""
    folder = tmp_path_factory.mktemp("arm")

    def args(cpu: str) -> list[str]:  # the full-size bundle on FULL_SIZE_ON only: emulating it is most of the time
        return [f"{k}={v}" for k, v in bundles.items() if k != FULL_SIZE or cpu == FULL_SIZE_ON] + ["--api-only", FULL_SIZE]

    procs = {cpu: subprocess.Popen(emulator.command([str(ROOT / "tests" / "aarch64_probe.py"), str(folder / f"{cpu}.json"),
                                                     *args(cpu)], cpu), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True) for cpu in CPUS}
    runs: dict[str, Any] = {}
    for cpu, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        runs[cpu] = (proc.returncode, err)
    return {cpu: dict(json.loads((folder / f"{cpu}.json").read_text(encoding="utf-8")), cpu=cpu) if code == 0
            else {"cpu": cpu, "failed": err[-3000:]} for cpu, (code, err) in runs.items()}


@pytest.fixture(params=CPUS)
def arm(request: pytest.FixtureRequest, arm_runs: dict[str, Any]) -> dict[str, Any]:
    run = arm_runs[request.param]
    assert "failed" not in run, run.get("failed")
    return run


def _cosines(a: Any, b: Any) -> np.ndarray:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def test_the_runtime_imports_torch_free_on_aarch64(arm, x86):
    assert arm["machine"] == "aarch64" and x86["machine"] == "x86_64"
    assert (FULL_SIZE in arm["bundles"]) == (arm["cpu"] == FULL_SIZE_ON) and len(arm["bundles"]) >= 4
    assert arm["heavy_imports"] == []


def test_fp32_matches_x86(arm, x86):
    for name, theirs in arm["bundles"].items():
        mine = x86["bundles"][name]
        for key in (k for k in mine if k.endswith("/fp32")):
            if key.startswith("embed"):
                assert np.abs(np.subtract(theirs[key], mine[key])).max() <= FP32_TOLERANCE, (arm["cpu"], name, key)
            elif key.startswith("fill-mask"):
                assert [[[t for t, _ in m] for m in text] for text in theirs[key]] == \
                       [[[t for t, _ in m] for m in text] for text in mine[key]], (arm["cpu"], name, key)
                scores = lambda r: [s for text in r for m in text for _, s in m]  # noqa: E731
                assert np.allclose(scores(theirs[key]), scores(mine[key]), atol=FP32_TOLERANCE)
            else:  # tag, classify: the same labels, the same scores
                flat = lambda r: [x for row in r for x in row]  # noqa: E731
                assert [x[:-1] for x in flat(theirs[key])] == [x[:-1] for x in flat(mine[key])], (arm["cpu"], name, key)
                assert np.allclose([x[-1] for x in flat(theirs[key])], [x[-1] for x in flat(mine[key])], atol=FP32_TOLERANCE)


def test_int8_matches_x86(arm, x86):
    """INT8 runs other kernels on ARM (and x86's are built for AVX2 or VNNI): not bit-equal,
    but the same answers: embeddings at cosine >= 0.9999, the same labels and top tokens."""
    for name, theirs in arm["bundles"].items():
        mine = x86["bundles"][name]
        for key in (k for k in mine if k.endswith("/int8")):
            if key.startswith("embed"):
                assert _cosines(theirs[key], mine[key]).min() >= INT8_MIN_COSINE, (arm["cpu"], name, key)
            elif key.startswith("fill-mask"):
                top1 = lambda r: [m[0][0] for text in r for m in text]  # noqa: E731
                assert top1(theirs[key]) == top1(mine[key]), (arm["cpu"], name, key)
            else:
                labels = lambda r: [x[:-1] for row in r for x in row]  # noqa: E731
                assert labels(theirs[key]) == labels(mine[key]), (arm["cpu"], name, key)


def test_the_cli_and_the_serverless_handler_answer_as_on_x86(arm, x86):
    assert all(("cli" in b) == (name != FULL_SIZE) for name, b in arm["bundles"].items())
    for name, theirs in ((n, b) for n, b in arm["bundles"].items() if n != FULL_SIZE):
        mine = x86["bundles"][name]
        assert theirs["cli"]["code"] == mine["cli"]["code"] == 0
        assert theirs["serverless"]["status"] == mine["serverless"]["status"] == 200
        for got, want in ((theirs["cli"]["out"], mine["cli"]["out"]),
                          (theirs["serverless"]["body"]["results"], mine["serverless"]["body"]["results"])):
            _same_answer(got, want, name)


def _same_answer(got: Any, want: Any, where: str) -> None:
    """JSON answers equal but for INT8 rounding: numbers within 2e-2, vectors at cosine >= 0.9999."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _same_answer(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list) and want and all(isinstance(x, float) for x in want):
        assert _cosines(got, want) >= INT8_MIN_COSINE, where
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same_answer(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert abs(got - want) <= 2e-2, where
    else:
        assert got == want, where


def test_a_killed_file_job_resumes_on_aarch64(emulator, tiny_feature_bundle, tmp_path):
    """The job killed (SIGKILL) after its first checkpoint, run again: it resumes, and the
    output equals an uninterrupted x86 run of the same job."""
    from flare_onnx.cli import main

    texts = tmp_path / "in.txt"
    texts.write_text("".join(f"{aarch64_probe.SENTENCES[i % 6]} ({i})\n" for i in range(240)), encoding="utf-8")
    want = tmp_path / "x86.jsonl"
    assert main(["run", "embed", str(tiny_feature_bundle), "-i", str(texts), "-o", str(want), "--no-progress",
                 "--precision", "fp32"]) == 0
    out = tmp_path / "arm.jsonl"
    args = ["-m", "flare_onnx.cli", "run", "embed", str(tiny_feature_bundle), "-i", str(texts), "-o", str(out),
            "--no-progress", "--precision", "fp32", "--chunk", "8", "--threads", "1"]
    job = subprocess.Popen(emulator.command(args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = Path(f"{out}.state")
    deadline = time.monotonic() + 600
    while job.poll() is None and time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("line", 0) > 0:
            break
        time.sleep(0.05)  # polling for the checkpoint file: the event this test waits for
    assert job.poll() is None, f"the job ended before it could be killed: {job.stderr.read() if job.stderr else ''}"
    line = json.loads(state.read_text())["line"]
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert 0 < line < 240
    resumed = emulator.run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out} after input line" in resumed.stderr
    got = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    ref = [json.loads(x) for x in want.read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(ref) == 240
    assert np.abs(np.array([r["embedding"] for r in got]) - np.array([r["embedding"] for r in ref])).max() <= FP32_TOLERANCE


def test_the_arm64_lambda_package_answers_as_the_x86_64_one(emulator, tiny_feature_bundle, tmp_path):
    """`flare-onnx package --arch arm64` (for the emulated Debian's Python and glibc, as a
    container image would be) run by its own handler in an interpreter that sees only the
    package (-I -S) on a Graviton-3 CPU: the same embeddings as the x86_64 package's."""
    from flare_onnx.cli import main

    event = {"body": json.dumps({"task": "embed", "texts": aarch64_probe.SENTENCES})}
    answers = {}
    for arch in ("x86_64", "arm64"):
        folder = tmp_path / arch
        assert main(["package", str(tiny_feature_bundle), "-o", str(folder), "--arch", arch, "--python", "3.11",
                     "--glibc", "2.36", "--dir"]) == 0  # fmt: skip
        probe = (f"import sys, json; sys.path[:0] = [{str(folder)!r}]; import handler; "
                 f"print(json.dumps(handler.handler(json.loads({json.dumps(event)!r}))))")  # fmt: skip
        if arch == "x86_64":
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=120
            )
        else:
            command = emulator.command(["-I", "-S", "-c", probe], FULL_SIZE_ON)
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=folder)
        assert proc.returncode == 0, proc.stderr[-2000:]
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        assert answer["statusCode"] == 200, answer
        answers[arch] = [r["embedding"] for r in json.loads(answer["body"])["results"]]
    assert len(answers["arm64"]) == len(aarch64_probe.SENTENCES)
    assert _cosines(answers["arm64"], answers["x86_64"]).min() >= INT8_MIN_COSINE
