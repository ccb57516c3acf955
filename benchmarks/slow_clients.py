"""Slow clients against ``flare-onnx serve``: ``python -m benchmarks.slow_clients BUNDLE``.

A slowloris attacker (``--attackers`` connections from 127.0.0.2, each sending a request head a
byte per second and reopening whenever the server closes it) runs beside a real client
(127.0.0.1, one small embed request every 100 ms, 5 s timeout each). Measured twice in one
run: with the service's guards (header timeout, connections per address: the defaults) and
with them off (what uvicorn alone does). Reports the real client's success rate and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HEAD = b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Padding: "


def _attack(port: int, connections: int, seconds: float, opened: Any) -> None:
    async def one(stop: float) -> None:
        while time.time() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            with opened.get_lock():
                opened.value += 1
            try:
                writer.write(HEAD)
                while time.time() < stop:  # one byte a second, the head never ends
                    await asyncio.sleep(1.0)
                    if reader.at_eof():
                        break
                    writer.write(b"a")
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            writer.close()

    async def main() -> None:
        stop = time.time() + seconds
        await asyncio.gather(*(one(stop) for _ in range(connections)))

    asyncio.run(main())


def _victim(url: str, seconds: float) -> dict[str, Any]:
    import httpx

    latencies, failures = [], 0
    stop = time.time() + seconds
    with httpx.Client(timeout=5) as client:
        while time.time() < stop:
            t0 = time.perf_counter()
            try:
                ok = client.post(url + "/v1/embed", json={"texts": ["Il gatto dorme sul divano."]}).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(1000 * (time.perf_counter() - t0))
            else:
                failures += 1
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))
    total = len(latencies) + failures
    return {
        "requests": total,
        "answered": len(latencies),
        "success_rate": len(latencies) / total if total else 0.0,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else None,
    }


def measure(bundle: str, guarded: bool, attackers: int, seconds: float) -> dict[str, Any]:
    from .serve_load import _free_port, _serve

    flags = [] if guarded else ["--header-timeout", "86000", "--max-connections-per-ip", "0"]
    port = _free_port()
    proc, url = _serve(bundle, port, flags), f"http://127.0.0.1:{port}"
    opened = mp.Value("i", 0)
    attacker = mp.Process(target=_attack, args=(int(url.rsplit(":", 1)[1]), attackers, seconds + 5, opened))
    try:
        attacker.start()
        while opened.value < min(attackers, 400) and attacker.is_alive():  # the attack is under way
            time.sleep(0.05)
        result = _victim(url, seconds)
        result["attacker_connections_opened"] = opened.value
    finally:
        attacker.terminate()
        attacker.join()
        proc.terminate()
        proc.wait(timeout=60)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slow_clients", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--attackers", type=int, default=1100)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--json", default="benchmarks/results/slow_clients.json")
    args = p.parse_args(argv)
    results = {
        "bundle": args.bundle,
        "attackers": args.attackers,
        "seconds": args.seconds,
        "guarded": measure(args.bundle, True, args.attackers, args.seconds),
        "unguarded": measure(args.bundle, False, args.attackers, args.seconds),
    }
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for key in ("guarded", "unguarded"):
        r = results[key]
        print(
            f"{key:>9}: {r['answered']}/{r['requests']} answered ({100 * r['success_rate']:.0f}%), "
            f"p50 {r['p50_ms'] or float('nan'):.0f} ms, p99 {r['p99_ms'] or float('nan'):.0f} ms, "
            f"attacker opened {r['attacker_connections_opened']} connections"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
