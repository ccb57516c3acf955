"""Thread spinning, measured: ``python -m benchmarks.spin BUNDLE [--corpus FILE]``.

flare-onnx INT8 throughput with ``spin=True`` and ``spin=False``, on a quiet machine and with
a competing CPU-bound process (one busy core, as a neighbour on a shared host would be),
interleaved pass by pass; medians and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any


def _burn(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x += 1


@contextlib.contextmanager
def busy_core(busy: bool = True) -> Iterator[None]:
    """A CPU-bound process on one core for the duration (a neighbour on a shared host); nothing
    when ``busy`` is false."""
    if not busy:
        yield
        return
    stop = multiprocessing.Event()
    burner = multiprocessing.Process(target=_burn, args=(stop,))
    burner.start()
    try:
        yield
    finally:
        stop.set()
        burner.join()


def main(argv: list[str] | None = None) -> int:
    import flare_onnx
    from flare_onnx.engine.session import available_cpus
    from flare_onnx_export import italian_sentences, read_corpus

    p = argparse.ArgumentParser(prog="python -m benchmarks.spin", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--corpus", help="Italian text, one sentence per line or CoNLL-U (default: the shipped sample)")
    p.add_argument("--texts", type=int, default=600)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args(argv)
    texts = (read_corpus(args.corpus) if args.corpus else italian_sentences())[: args.texts]
    threads = available_cpus()
    models = {spin: flare_onnx.load(args.bundle, threads=threads, spin=spin) for spin in (True, False)}
    tokens = sum(len(e.ids) + 2 for e in models[True].tokenizer.encode(texts))
    results: dict[str, Any] = {"threads": threads, "texts": len(texts), "tokens": tokens}
    for load in ("quiet", "one busy core"):
        rates: dict[bool, list[float]] = {True: [], False: []}
        with busy_core(load != "quiet"):
            for r in range(args.repeats):
                for spin in (True, False) if r % 2 == 0 else (False, True):
                    models[spin].embed(texts[:32])
                    t0 = time.perf_counter()
                    models[spin].embed(texts)
                    rates[spin].append(tokens / (time.perf_counter() - t0))
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        results[load] = {
            "spin_on_tokens_per_s": on,
            "spin_off_tokens_per_s": off,
            "off_vs_on": off / on,
            "runs": {"on": rates[True], "off": rates[False]},
        }
        print(f"{load:>14}: spin on {on:,.0f} tokens/s, spin off {off:,.0f} tokens/s ({off / on:.2f}x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
