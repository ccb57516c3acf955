"""The HTTP service under load: ``python -m benchmarks.serve_load BUNDLE [--corpus FILE]``.

64 concurrent clients on 127.0.0.1, each sending one text per request over a kept-alive
connection (a raw asyncio HTTP/1.1 client, light enough to leave the CPUs to the server), for
each micro-batching setting; tokens/s served as a fraction of the same model's offline batch
throughput on the same texts, and p50/p99 request latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _client(
    port: int, bodies: list[bytes], latencies: list[float], statuses: list[int], path: str = "/v1/embed"
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body in bodies:
            head = (
                f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses.append(int(status_line.split()[1]))
    finally:
        writer.close()


async def _load(port: int, texts: list[str], clients: int) -> tuple[float, list[float], list[int]]:
    bodies = [json.dumps({"texts": [t]}, ensure_ascii=False).encode() for t in texts]
    shares = [bodies[i::clients] for i in range(clients)]
    latencies: list[float] = []
    statuses: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, share, latencies, statuses) for share in shares))
    return time.perf_counter() - t0, latencies, statuses


def _serve(bundle: str | list[str], port: int, extra: list[str]) -> subprocess.Popen[str]:
    bundles = [bundle] if isinstance(bundle, str) else bundle
    proc = subprocess.Popen(
        [sys.executable, "-m", "flare_onnx", "serve", *bundles, "--port", str(port), "--queue-size", "4096", *extra],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    proc.stderr.readline()  # the start-up line: the model is loaded
    # then keep draining the access log, or the server blocks once the pipe is full
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def main(argv: list[str] | None = None) -> int:
    import flare_onnx
    from flare_onnx_export import italian_sentences, read_corpus

    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--corpus")
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="passes over the settings, in alternating order")
    p.add_argument("--json")
    args = p.parse_args(argv)
    texts = [t for t in (read_corpus(args.corpus) if args.corpus else italian_sentences()) if t.strip()]
    texts = (texts * (args.texts // max(1, len(texts)) + 1))[: args.texts]
    model = flare_onnx.load(args.bundle)
    tokens = sum(len(e.ids) + 2 for e in model.tokenizer.encode(texts))
    model.embed(texts[:64])
    sorted_s, chunked_s = [], []
    for _ in range(3):  # interleaved: all texts at once (length-sorted), then in arrival-order chunks
        t0 = time.perf_counter()
        model.embed(texts)
        sorted_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, len(texts), args.clients):
            model.embed(texts[i : i + args.clients])
        chunked_s.append(time.perf_counter() - t0)
    offline = tokens / statistics.median(sorted_s)
    chunked = tokens / statistics.median(chunked_s)
    del model
    results: dict[str, Any] = {
        "texts": len(texts),
        "tokens": tokens,
        "clients": args.clients,
        "offline_tokens_per_s": offline,
        "offline_chunked_tokens_per_s": chunked,
        "runs": [],
    }
    print(
        f"offline: {offline:,.0f} tokens/s ({len(texts)} texts, {tokens:,} tokens, length-sorted); "
        f"{chunked:,.0f} tokens/s in arrival-order chunks of {args.clients} "
        f"(what {args.clients} one-text clients allow)"
    )
    h11 = ["--http", "h11", "--loop", "asyncio"]  # pure-Python parser and loop: what uvicorn uses without extras
    settings = [(5, 64, h11), (5, 64, []), (10, 64, []), (5, 32, []), (2, 32, []), (5, 64, ["--spin"])]
    # passes in alternating order (forward, backward, ...): the machine's drift hits every setting alike
    passes: list[list[dict[str, Any]]] = [[] for _ in settings]
    for rep in range(args.repeats):
        for k in range(len(settings)) if rep % 2 == 0 else reversed(range(len(settings))):
            wait_ms, batch, extra = settings[k]
            port = _free_port()
            proc = _serve(args.bundle, port, ["--max-wait-ms", str(wait_ms), "--max-batch-texts", str(batch), *extra])
            try:
                asyncio.run(_load(port, texts[:128], args.clients))  # warm-up
                wall, lat, statuses = asyncio.run(_load(port, texts, args.clients))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            lat.sort()
            passes[k].append(
                {
                    "tokens_per_s": tokens / wall,
                    "p50_ms": 1e3 * statistics.median(lat),
                    "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))],
                    "non_200": sum(s != 200 for s in statuses),
                }
            )
    for (wait_ms, batch, extra), runs in zip(settings, passes):
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        row = {
            "max_wait_ms": wait_ms,
            "max_batch_texts": batch,
            "flags": extra,
            "tokens_per_s": tps,
            "tokens_per_s_passes": [r["tokens_per_s"] for r in runs],
            "fraction_of_offline": tps / offline,
            "fraction_of_offline_chunked": tps / chunked,
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "non_200": sum(r["non_200"] for r in runs),
        }
        results["runs"].append(row)
        print(
            f"max_wait_ms={wait_ms:>2} max_batch_texts={batch} {' '.join(extra) or 'defaults'}: {tps:,.0f} tokens/s "
            f"(passes {', '.join(f'{r:,.0f}' for r in row['tokens_per_s_passes'])}; "
            f"{row['fraction_of_offline']:.0%} of offline, "
            f"{row['fraction_of_offline_chunked']:.0%} of chunked), "
            f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
            f"{row['non_200']} not 200"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
