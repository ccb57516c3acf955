"""One contender in a fresh process: prints READY after its first result, then (mode rss)
runs the throughput workload and prints its peak resident memory as JSON."""

from __future__ import annotations

import json
import resource
import sys


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None where there is none."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM starts afresh at exec; ru_maxrss would carry the
    parent's peak over fork and exec."""
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    key, task, art_json, texts_file, mode, threads, batch = sys.argv[1:8]
    from .contenders import CONTENDERS, Artifacts

    texts = json.loads(open(texts_file, encoding="utf-8").read())
    contender = CONTENDERS[key](Artifacts.load(art_json), int(threads))
    contender.load()
    run = contender.fill_mask if task == "fill-mask" else contender.embed
    run(texts[:1])
    print("READY", flush=True)
    if mode == "rss":
        size = int(batch)
        texts = sorted(texts, key=len)
        for start in range(0, len(texts), size):
            run(texts[start : start + size])
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
