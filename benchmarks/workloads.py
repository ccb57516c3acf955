"""Timed workloads: interleaved batch-1 latency, throughput, and fresh-process measurements."""

from __future__ import annotations

import compileall
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .contenders import BASELINE, Artifacts, Contender

Outputs = Any


def call(contender: Contender, task: str, texts: list[str]) -> Outputs:
    return contender.fill_mask(texts) if task == "fill-mask" else contender.embed(texts)


def _rotations(keys: list[str], i: int) -> list[str]:
    k = i % len(keys)
    return keys[k:] + keys[:k]


def latency(contenders: dict[str, Contender], task: str, texts: list[str], *, block: int = 20) -> dict[str, Any]:
    """Batch-1 calls. Contenders take turns in blocks of ``block`` sentences (the order of the
    turns rotates); each block starts with an untimed call, so thread pools still spinning
    from the previous contender do not count against the next one."""
    keys = list(contenders)
    times: dict[str, list[float]] = {k: [0.0] * len(texts) for k in keys}
    for b, start in enumerate(range(0, len(texts), block)):
        chunk = range(start, min(start + block, len(texts)))
        for key in _rotations(keys, b):
            c = contenders[key]
            call(c, task, [texts[chunk[0]]])
            for i in chunk:
                t0 = time.perf_counter()
                call(c, task, [texts[i]])
                times[key][i] = time.perf_counter() - t0
    out: dict[str, Any] = {}
    base = np.array(times[BASELINE]) if BASELINE in times else None
    for key, values in times.items():
        arr = np.array(values)
        out[key] = {
            "p50_ms": float(np.percentile(arr, 50) * 1e3),
            "p95_ms": float(np.percentile(arr, 95) * 1e3),
            "n": len(values),
            # ratio sentence by sentence, then the median
            "speedup_vs_baseline": float(np.median(base / arr)) if base is not None else None,
        }
    return out


def sorted_batches(texts: list[str], lengths: list[int], batch_size: int) -> list[list[str]]:
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [[texts[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def throughput(
    contenders: dict[str, Contender], task: str, batches: list[list[str]], tokens: int, *, repeats: int
) -> tuple[dict[str, Any], dict[str, list[Outputs]]]:
    """Whole passes over length-sorted batches, contenders interleaved pass by pass."""
    keys = list(contenders)
    call_outputs: dict[str, list[Outputs]] = {}
    for key in keys:  # warm-up pass on a few batches, keeping nothing
        for batch in batches[:2]:
            call(contenders[key], task, batch)
    rates: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for key in _rotations(keys, r):
            t0 = time.perf_counter()
            outs = [call(contenders[key], task, batch) for batch in batches]
            rates[key].append(tokens / (time.perf_counter() - t0))
            if r == 0:
                call_outputs[key] = outs
    out: dict[str, Any] = {}
    for key, values in rates.items():
        ratios = [v / b for v, b in zip(values, rates[BASELINE])] if BASELINE in rates else []
        out[key] = {
            "tokens_per_s": float(statistics.median(values)),
            "runs": values,
            "speedup_vs_baseline": float(statistics.median(ratios)) if ratios else None,
        }
    return out, call_outputs


def fidelity(task: str, outputs: dict[str, list[Outputs]], batches: list[list[str]]) -> dict[str, Any]:
    """Agreement of every contender with the PyTorch FP32 baseline on the same batches.

    Embedding figures use each distinct text once: a repeated text would be its own nearest
    neighbour and make the agreement trivially perfect."""
    if BASELINE not in outputs:
        return {}
    res: dict[str, Any] = {}
    if task == "fill-mask":
        base = [m for batch in outputs[BASELINE] for text in batch for m in text]
        for key, outs in outputs.items():
            got = [m for batch in outs for text in batch for m in text]
            top1 = np.mean([g[0] == b[0] for g, b in zip(got, base)])
            in5 = np.mean([b[0] in g for g, b in zip(got, base)])
            overlap = np.mean([len(set(g) & set(b)) / len(b) for g, b in zip(got, base)])
            res[key] = {
                "masks": len(base),
                "top1_agreement": float(top1),
                "top1_in_top5": float(in5),
                "top5_overlap": float(overlap),
            }
    else:
        flat = [t for batch in batches for t in batch]
        first = sorted({t: i for i, t in reversed(list(enumerate(flat)))}.values())
        base = np.concatenate(outputs[BASELINE])[first]
        sim_base = base @ base.T
        np.fill_diagonal(sim_base, -np.inf)
        nn_base = sim_base.argmax(1)
        for key, outs in outputs.items():
            got = np.concatenate(outs)[first]
            cos = (got * base).sum(1)
            sim = got @ got.T
            np.fill_diagonal(sim, -np.inf)
            res[key] = {
                "sentences": len(base),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "nn_agreement": float((sim.argmax(1) == nn_base).mean()),
            }
    return res


@functools.cache
def compile_bytecode() -> None:
    """Compile flare-onnx's and the benchmarks' modules to bytecode once, as pip does when it
    installs a package: a fresh process then starts from ``.pyc`` files as an installed package
    does, and as the peers' installed packages do. Without it, a checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set compiles every module on every start (~30 ms for flare-onnx)."""
    root = Path(__file__).parents[1]
    for package in ("flare_onnx", "benchmarks"):
        compileall.compile_dir(root / package, quiet=1)


def fresh_process(
    key: str, task: str, art: Artifacts, texts_file: Path, *, mode: str, threads: int, batch: int, timeout: float = 900
) -> dict[str, Any]:
    """Run one contender in a new interpreter: ``cold`` (start to first result) or ``rss``."""
    compile_bytecode()
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        key,
        task,
        art.dump(),
        str(texts_file),
        mode,
        str(threads),
        str(batch),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    rest, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or not first.startswith("READY"):
        raise RuntimeError(f"{key} worker failed ({proc.returncode}): {err[-2000:]}")
    result = json.loads(rest.strip().splitlines()[-1]) if mode == "rss" else {}
    result["cold_start_s"] = elapsed
    return result
