"""Memory of several models in one service against one service per model:
``python -m benchmarks.serve_memory NAME=BUNDLE NAME=BUNDLE ...``.

Starts ``flare-onnx serve`` once with every bundle, then once per bundle (all at the same
time, as three services on one box would run), sends each model the same requests (64 Italian
sentences, 8 per request, through ``/v1/models/{name}/{task}``), and reads each process's peak
RSS (``VmHWM``), RSS and PSS (``/proc/PID/smaps_rollup``: shared pages counted once across
processes, so the per-process sum is fair to the separate services) after the requests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .machine import describe, summary
from .serve_load import _free_port, _serve


def _memory(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmHWM", "VmRSS"))}
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    return {"peak_rss_mb": kib["VmHWM"] / 1024, "rss_mb": kib["VmRSS"] / 1024, "pss_mb": pss / 1024}


def _exercise(port: int, name: str, task: str, texts: list[str]) -> None:
    import httpx

    for i in range(0, len(texts), 8):
        body: dict[str, Any] = {"texts": [t.replace("[MASK]", "<mask>") for t in texts[i : i + 8]]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}/{task}", json=body, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{name}/{task}: {r.status_code} {r.text[:200]}")


def _run(pairs: list[tuple[str, str]], texts: list[str], masked: list[str]) -> dict[str, Any]:
    from flare_onnx.engine import read_manifest

    tasks = {name: read_manifest(bundle).tasks[0] for name, bundle in pairs}
    one_port = _free_port()
    one = _serve([f"{n}={b}" for n, b in pairs], one_port, [])
    separate = []
    for name, bundle in pairs:
        port = _free_port()
        separate.append((name, port, _serve([f"{name}={bundle}"], port, [])))
    try:
        for name, _ in pairs:
            words = masked if tasks[name] == "fill-mask" else texts
            _exercise(one_port, name, tasks[name], words)
        for name, port, _ in separate:
            words = masked if tasks[name] == "fill-mask" else texts
            _exercise(port, name, tasks[name], words)
        time.sleep(0.5)  # the last answers' buffers released
        together = _memory(one.pid)
        apart = {name: _memory(proc.pid) for name, _, proc in separate}
    finally:
        for proc in [one] + [p for _, _, p in separate]:
            proc.terminate()
            proc.wait(timeout=30)
    total = {k: sum(m[k] for m in apart.values()) for k in together}
    return {"tasks": tasks, "one_process": together, "one_per_model": apart, "one_per_model_total": total}


def main(argv: list[str] | None = None) -> int:
    from flare_onnx_export import italian_sentences

    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_memory", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="NAME=BUNDLE")
    p.add_argument("--json")
    args = p.parse_args(argv)
    pairs = [tuple(m.split("=", 1)) for m in args.models]
    texts = [t for t in italian_sentences() if t.strip()][:64]
    masked = [" ".join(t.split()[:-1] + ["<mask>"]) for t in texts]
    result = {"machine": describe(), "models": dict(pairs), **_run(pairs, texts, masked)}  # type: ignore[arg-type]
    print(summary(result["machine"]))
    one, total = result["one_process"], result["one_per_model_total"]
    for key, label in (("peak_rss_mb", "peak RSS"), ("rss_mb", "RSS"), ("pss_mb", "PSS")):
        print(
            f"{label}: one process {one[key]:.0f} MB; one process per model {total[key]:.0f} MB "
            f"({', '.join(f'{n} {m[key]:.0f}' for n, m in result['one_per_model'].items())}); "
            f"ratio {one[key] / total[key]:.2f} (target <= 0.5)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
