"""A one-sentence client's latency alone and beside a client that sends the red team's requests
back to back: 64 one-letter texts with a 400 KB prefix, and five 10,000-character texts read in
sliding windows with a stride of ``max_length - 3`` (one window per token).

    python -m benchmarks.hostile_requests BUNDLE [--requests 300] [--json out.json]

Both hostile requests are refused (422: a text with its prefix over the character limit; 413:
the windows' tokens over the token limit) before any inference; what is measured is what their
refusal costs everyone else. The service runs in its own process (``flare-onnx serve``).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _small(url: str, n: int) -> tuple[float, float]:
    """p99 and p50 (ms) of ``n`` one-sentence requests, one at a time."""
    latencies = []
    with httpx.Client(timeout=120) as client:
        for i in range(n):
            t0 = time.perf_counter()
            r = client.post(url + "/v1/embed", json={"texts": [f"Il gatto dorme {i}."]})
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
    latencies.sort()
    return latencies[int(0.99 * n) - 1] * 1e3, statistics.median(latencies) * 1e3


def _hostile(url: str, max_length: int, stop: threading.Event, statuses: list[int]) -> None:
    bodies = [
        {"texts": ["a"] * 64, "prefix": "ciao " * 80_000},
        {"texts": ["ciao " * 2_000] * 5, "window": "sliding", "stride": max_length - 3},
    ]
    with httpx.Client(timeout=300) as client:
        i = 0
        while not stop.is_set():
            statuses.append(client.post(url + "/v1/embed", json=bodies[i % 2]).status_code)
            i += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--requests", type=int, default=300, help="one-sentence requests in each phase")
    p.add_argument("--json")
    args = p.parse_args(argv)
    from flare_onnx.engine import read_manifest

    max_length = read_manifest(args.bundle).max_length
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flare_onnx.cli", "serve", args.bundle, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # the access log: a pipe nobody reads would fill and stall the service
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        _small(url, 20)  # warm up
        alone = _small(url, args.requests)
        stop, statuses = threading.Event(), list[int]()
        hostile = threading.Thread(target=_hostile, args=(url, max_length, stop, statuses))
        hostile.start()
        beside = _small(url, args.requests)
        stop.set()
        hostile.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
    result: dict[str, Any] = {
        "bundle": args.bundle,
        "alone": {"p99_ms": round(alone[0], 1), "p50_ms": round(alone[1], 1)},
        "beside_hostile": {"p99_ms": round(beside[0], 1), "p50_ms": round(beside[1], 1)},
        "p99_ratio": round(beside[0] / alone[0], 2),
        "hostile_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
