"""Fairness under load: ``python -m benchmarks.fairness BUNDLE``.

Small clients (one Italian sentence per request, kept-alive connections, on 127.0.0.1) measure
their latency twice, in alternating passes: alone, and beside one hostile client that sends
maximal in-limit requests back to back (64 texts, just under the service's token budget). The
service's fairness rule should keep the small clients' p99 within a small multiple of its
value without the hostile client. With ``--other NAME=BUNDLE`` the service serves two models and
the hostile client floods the other one (``/v1/models/NAME/{its task}``) while the small
clients embed with the first (``/v1/models/main/embed``): fairness across models, one CPU
budget for both. Then the cost of a refused request: the server's CPU time
(user + system, from /proc) per request refused by the character budget before tokenization.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .machine import describe
from .serve_load import _client, _free_port, _serve

HOSTILE_TEXT = "ciao " * 160  # ~800 characters, hundreds of tokens: 64 of them fill the token budget


async def _small_clients(port: int, texts: list[str], clients: int, seconds: float, path: str) -> list[float]:
    latencies: list[float] = []
    statuses: list[int] = []
    bodies = [json.dumps({"texts": [t]}, ensure_ascii=False).encode() for t in texts]
    end = time.perf_counter() + seconds

    async def one(k: int) -> None:
        i = k
        while time.perf_counter() < end:
            await _client(port, [bodies[i % len(bodies)]], latencies, statuses, path)
            i += clients

    await asyncio.gather(*(one(k) for k in range(clients)))
    if any(s != 200 for s in statuses):
        raise RuntimeError(f"small clients got {sum(s != 200 for s in statuses)} answers other than 200")
    return latencies


async def _hostile(port: int, body: bytes, stop: asyncio.Event, answered: list[int], path: str) -> None:
    while not stop.is_set():
        statuses: list[int] = []
        await _client(port, [body], [], statuses, path)
        answered.extend(statuses)


async def _pass(
    port: int, texts: list[str], clients: int, seconds: float, hostile_body: bytes | None, paths: tuple[str, str]
) -> dict[str, Any]:
    stop, answered = asyncio.Event(), []
    task = asyncio.create_task(_hostile(port, hostile_body, stop, answered, paths[1])) if hostile_body else None
    if task:
        await asyncio.sleep(0.5)  # the hostile client's first request is in
    latencies = await _small_clients(port, texts, clients, seconds, paths[0])
    stop.set()
    if task:
        await task
    latencies.sort()
    return {
        "requests": len(latencies),
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
        "hostile_answers": answered,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _refusal_cost(port: int, pid: int, n: int) -> dict[str, Any]:
    body = json.dumps({"texts": ["! " * 5000] * 64}).encode()  # 640,000 characters
    statuses: list[int] = []
    before = _cpu_seconds(pid)
    t0 = time.perf_counter()
    asyncio.run(_client(port, [body] * n, [], statuses))
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds(pid) - before
    return {
        "requests": n,
        "statuses": sorted(set(statuses)),
        "cpu_ms_per_request": 1e3 * cpu / n,
        "wall_ms_per_request": 1e3 * wall / n,
    }


def main(argv: list[str] | None = None) -> int:
    from flare_onnx_export import italian_sentences

    p = argparse.ArgumentParser(prog="python -m benchmarks.fairness", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--clients", type=int, default=8, help="small clients")
    p.add_argument("--seconds", type=float, default=15.0, help="length of one pass")
    p.add_argument("--repeats", type=int, default=3, help="passes of each kind, alternating")
    p.add_argument("--other", metavar="NAME=BUNDLE", help="a second model, the one the hostile client floods")
    p.add_argument("--serve-args", default="", help="more flags for flare-onnx serve, e.g. '--slice-tokens 512'")
    p.add_argument("--json")
    args = p.parse_args(argv)
    texts = [t for t in italian_sentences() if t.strip()]
    hostile_body = json.dumps({"texts": [HOSTILE_TEXT] * 64}).encode()
    port = _free_port()
    bundles, paths = [args.bundle], ("/v1/embed", "/v1/embed")
    if args.other:
        from flare_onnx.engine import read_manifest

        name, _, other = args.other.partition("=")
        bundles = [f"main={args.bundle}", f"{name}={other}"]
        paths = ("/v1/models/main/embed", f"/v1/models/{name}/{read_manifest(other).tasks[0]}")
    proc = _serve(bundles, port, ["--max-body-bytes", "2000000", *args.serve_args.split()])
    try:
        asyncio.run(_pass(port, texts, args.clients, 2.0, None, paths))  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {"alone": [], "with hostile client": []}
        for rep in range(args.repeats):
            order = ["alone", "with hostile client"] if rep % 2 == 0 else ["with hostile client", "alone"]
            for kind in order:
                body = hostile_body if kind != "alone" else None
                runs[kind].append(asyncio.run(_pass(port, texts, args.clients, args.seconds, body, paths)))
        refusal = _refusal_cost(port, proc.pid, 50)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result: dict[str, Any] = {
        "machine": describe(),
        "bundles": bundles,
        "paths": paths,
        "serve_args": args.serve_args,
        "clients": args.clients,
        "seconds": args.seconds,
        "runs": runs,
        "refused": refusal,
    }
    for kind, passes in runs.items():
        p99 = statistics.median(r["p99_ms"] for r in passes)
        p50 = statistics.median(r["p50_ms"] for r in passes)
        result[kind] = {"p50_ms": p50, "p99_ms": p99}
        hostile = [s for r in passes for s in r["hostile_answers"]]
        extra = f"; hostile requests answered: {len(hostile)} (statuses {sorted(set(hostile))})" if hostile else ""
        each = ", ".join(f"{r['p99_ms']:.0f}" for r in passes)
        print(f"{kind}: small clients p50 {p50:.0f} ms, p99 {p99:.0f} ms (passes p99 {each}){extra}")
    ratio = result["with hostile client"]["p99_ms"] / result["alone"]["p99_ms"]
    result["p99_ratio"] = ratio
    print(f"p99 with the hostile client / alone: {ratio:.2f}x (target <= 5x)")
    print(
        f"refused requests (640,000 characters, over the character budget): statuses {refusal['statuses']}, "
        f"{refusal['cpu_ms_per_request']:.2f} ms of server CPU each (target < 50 ms)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
