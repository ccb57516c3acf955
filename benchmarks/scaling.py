"""Records per second of the batch job (1 and 2 worker processes) and of Ray Data (1 and 2
actors) on the same records: ``python -m benchmarks.scaling --bundle DIR [--corpus PATH]``.

Each configuration runs in a fresh process, interleaved over repeats; the median is kept.
Ray's figures include starting a local Ray instance, which is its fixed cost at small scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "local, 1 worker × 2 threads": ["--workers", "1", "--threads", "2"],
    "local, 1 worker × 2 threads, each batch split over both (--workload interactive)": [
        "--workers",
        "1",
        "--threads",
        "2",
        "--workload",
        "interactive",
    ],
    "local, 2 workers × 1 thread": ["--workers", "2", "--threads", "1"],
    "ray, 1 actor × 2 threads": ["--engine", "ray", "--actors", "1", "--threads", "2"],
    "ray, 2 actors × 1 thread": ["--engine", "ray", "--actors", "2", "--threads", "1"],
}


def main(argv: list[str] | None = None) -> int:
    from flare_onnx_export import italian_sentences, read_corpus

    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--task", default="embed")
    p.add_argument("--corpus")
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--local-only", action="store_true", help="skip the Ray configurations (no ray extra needed)")
    args = p.parse_args(argv)
    configs = {k: v for k, v in CONFIGS.items() if not (args.local_only and k.startswith("ray"))}
    texts = read_corpus(args.corpus) if args.corpus else italian_sentences()
    texts = (texts * (args.records // len(texts) + 1))[: args.records]
    work = Path(tempfile.mkdtemp(prefix="flare-scaling-"))
    src = work / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    times: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(args.repeats):
        for name, extra in configs.items():
            out = work / f"out-{r}-{len(times[name])}-{'ray' if 'ray' in name else 'local'}"
            out = out.with_suffix(".jsonl") if "ray" not in name else out
            cmd = [
                sys.executable,
                "-m",
                "flare_onnx",
                "run",
                args.task,
                args.bundle,
                "-i",
                str(src),
                "-o",
                str(out),
                "--no-progress",
                "--chunk",
                "256",
                *extra,
            ]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    rows = {
        k: {"seconds": statistics.median(v), "records_per_s": args.records / statistics.median(v), "runs": v}
        for k, v in times.items()
    }
    base = rows["local, 1 worker × 2 threads"]["records_per_s"]
    lines = [
        f"{args.records:,} records, task {args.task}, bundle {args.bundle}; "
        f"median of {args.repeats} fresh-process runs",
        "",
        "| configuration | records/s | vs 1 local worker |",
        "|---|---|---|",
    ]
    for k, row in rows.items():
        lines.append(f"| {k} | {row['records_per_s']:,.0f} | {row['records_per_s'] / base:.2f}× |")
    table = "\n".join(lines) + "\n"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "scaling.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
