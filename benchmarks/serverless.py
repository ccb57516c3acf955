"""The cold start of a Lambda package, as a function on one vCPU meets it:
``python -m benchmarks.serverless BUNDLE [BUNDLE ...] [--runs 7] [--json OUT]``.

Each bundle is packaged by ``flare-onnx package`` for this machine's Python (bytecode
included, as on Lambda), unzipped, and started in fresh interpreters pinned to one CPU
(``taskset -c 0``: the one-vCPU share of a 1,769 MB function) that see nothing but the
package and the standard library (``-I -S``). Per run: **init** (interpreter start → ``import
handler`` done: Lambda's init phase; the handler ``flare-onnx package`` writes loads the bundle
there), split into the interpreter and the runtime's imports (numpy, tokenizers, onnxruntime,
flare_onnx) and ``load()``; **first answer** (the first invocation); then 50 warm invocations of one
sentence (p50), and the peak RSS (VmHWM). Medians over the runs; sizes from the zip.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from .machine import describe

EVENT = {"body": json.dumps({"task": "embed", "texts": ["Il treno per Firenze parte dal binario sette."]})}

CHILD = """
import json, sys, time
started = float(sys.argv[1])
sys.path[:0] = [sys.argv[2]]
import flare_onnx.serverless
imported = time.time()
import handler
ready = time.time()
event = json.loads(sys.argv[3])
answer = handler.handler(event)
first = time.time()
assert answer["statusCode"] == 200, answer
warm = []
for _ in range(50):
    t = time.perf_counter()
    handler.handler(event)
    warm.append(time.perf_counter() - t)
warm.sort()
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"init_s": ready - started, "imports_s": imported - started, "load_s": ready - imported,
                  "first_answer_s": first - ready, "warm_p50_ms": warm[25] * 1e3, "peak_rss_mb": hwm / 1024}))
"""


def package(bundle: str, folder: Path) -> dict[str, Any]:
    from flare_onnx.package import build_package

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    major, minor = (int(x) for x in (os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.28").split()[-1].split(".")[:2])
    made = build_package(
        bundle, folder / "function.zip", python=python, glibc=(major, minor), via_s3=True, log=lambda m: None
    )
    with zipfile.ZipFile(made.paths[0]) as zf:
        zf.extractall(folder / "function")
    return {"zipped_mb": made.zipped[0] / 1e6, "unzipped_mb": made.unzipped[0] / 1e6, "wheels": list(made.wheels)}


def run_once(function: Path) -> dict[str, float]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {"PATH": os.environ.get("PATH", ""), "LAMBDA_TASK_ROOT": str(function), "FLARE_ONNX_THREADS": "1"}
    started = time.time()
    command = [*pin, sys.executable, "-I", "-S", "-c", CHILD, repr(started), str(function), json.dumps(EVENT)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=function)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    result: dict[str, float] = json.loads(proc.stdout)
    result["init_plus_first_s"] = result["init_s"] + result["first_answer_s"]
    return result


def measure(bundles: list[str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": describe(), "runs": runs, "bundles": {}}
    with tempfile.TemporaryDirectory(prefix="flare-serverless-") as tmp:
        folders = {}
        for i, bundle in enumerate(bundles):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            out["bundles"][bundle] = {"package": package(bundle, folder), "runs": []}
            folders[bundle] = folder / "function"
        for _ in range(runs):  # interleaved: each round runs every bundle once
            for bundle, function in folders.items():
                out["bundles"][bundle]["runs"].append(run_once(function))
    for record in out["bundles"].values():
        record["median"] = {k: statistics.median(r[k] for r in record["runs"]) for k in record["runs"][0]}
    return out


def table(result: dict[str, Any]) -> str:
    rows = [
        "| bundle | zipped | unzipped | start + imports | load() | init | first answer | init + first | warm p50 "
        "| peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bundle, record in result["bundles"].items():
        p, m = record["package"], record["median"]
        rows.append(
            f"| {Path(bundle).name} | {p['zipped_mb']:.1f} MB | {p['unzipped_mb']:.1f} MB | {m['imports_s']:.3f} s "
            f"| {m['load_s']:.3f} s | {m['init_s']:.3f} s "
            f"| {m['first_answer_s']:.3f} s | **{m['init_plus_first_s']:.3f} s** | {m['warm_p50_ms']:.1f} ms "
            f"| {m['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = measure(args.bundles, args.runs)
    print(f"{result['machine']['cpu']}, one CPU (taskset -c 0), medians of {args.runs} fresh processes")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
