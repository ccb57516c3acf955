"""Which engine runs a bundle: ``backend="auto"`` and the rule behind it.

``auto`` is onnxruntime for every workload: interactive work (the Python API, the HTTP
service, serverless) and bulk work (the file job, Ray), which runs in streams
(:class:`.session.OrtSession` with streams, which says why and what it measured): one batch per CPU at
once, each on one thread, instead of every batch split over all threads.

Measured (``python -m benchmarks.bulk``, docs/benchmarks.md, one interleaved run per machine):
for bulk work, onnxruntime's streams ran as fast as flare-onnx's OpenVINO backend or faster on
both AMD EPYCs measured: 1.06-1.08x it quietly and 0.99-1.00x beside a busy core on an AVX-512
VNNI EPYC and ~2x on an AVX2-only EPYC; on an Intel Xeon with AMX, where OpenVINO's INT8
kernels are at their best, the OpenVINO backend ran 1.10-1.24x faster. onnxruntime holds a
quarter of its peak memory (133-138 MB against 519-659 MB, over the 300 MB a batch job's engine
may take) and starts in a third of its time, so ``auto`` stays on onnxruntime and its reason
says what OpenVINO would give. ``auto`` used to choose OpenVINO for bulk work on CPUs with
8-bit dot-product instructions, from a comparison with onnxruntime's batches split over all
threads, before bulk work ran in streams. ``backend="openvino"`` still runs a bundle exported
with ``--openvino``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["BackendChoice", "choose_backend", "cpu_flags"]


@dataclass(frozen=True)
class BackendChoice:
    """The engine chosen, and why (shown by ``flare-onnx info``, ``/v1/info`` and the job)."""

    backend: str
    reason: str


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is not readable: not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def choose_backend(requested: str, workload: str) -> BackendChoice:
    """Resolve ``requested`` (``"auto"``, ``"onnxruntime"`` or ``"openvino"``) for ``workload``
    (``"interactive"`` or ``"bulk"``)."""
    if requested == "auto":
        choice = BackendChoice("onnxruntime", _AUTO[workload])
    else:
        choice = BackendChoice(requested, "asked for")
    if choice.backend == "onnxruntime" and workload == "bulk":
        return BackendChoice(choice.backend, f"{choice.reason}; {BULK_STREAMS}")
    return choice


#: Why ``auto`` chose onnxruntime, by workload.
_AUTO = {
    "interactive": "auto: interactive work runs on onnxruntime (leanest, quick to start and to answer)",
    "bulk": "auto: onnxruntime, at a quarter of OpenVINO's memory (as fast or faster on the AMD "
    "EPYCs measured; OpenVINO 1.1-1.24x faster on an Intel Xeon with AMX)",
}

#: How bulk work runs on onnxruntime (the reason's second half, for ``info`` and the job's log).
BULK_STREAMS = "bulk work runs one batch per CPU at once, one thread each"
