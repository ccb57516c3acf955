"""Which engine runs a bundle: ``backend="auto"`` and the rule behind it.

Measured (``python -m benchmarks.bulk``, docs/benchmarks.md): onnxruntime wins every axis a
single request feels (batch-1 latency, memory, cold start) on every CPU measured. OpenVINO +
NNCF INT8 wins bulk throughput only on CPUs with 8-bit dot-product instructions (AVX-512 VNNI,
AVX-VNNI, AMX): flare-onnx's OpenVINO backend ran 1.2–1.5× its onnxruntime graph on an
AVX-512 VNNI EPYC, but 0.50–0.56× on an AVX2-only EPYC (Zen 2), where OpenVINO's INT8 kernels
are slower than onnxruntime's. So ``auto`` is
onnxruntime for interactive work (the Python API, the HTTP service, serverless) and for bulk
work (the file job, Ray) wherever the OpenVINO rule does not hold.

Bulk work on onnxruntime runs in streams (:class:`.session.StreamedSession`, which says why and
what it measured): one batch per CPU at once, each on one thread, instead of every batch split
over all threads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .bundle import Manifest

__all__ = ["BackendChoice", "choose_backend", "cpu_flags", "BULK_INT8_FLAGS"]

#: CPU flags (as /proc/cpuinfo spells them) under which OpenVINO's INT8 kernels were measured
#: faster than onnxruntime's for bulk work.
BULK_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


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


def choose_backend(
    requested: str, workload: str, manifest: Manifest, precision: str | None,
    *, flags: frozenset[str] | None = None, openvino_installed: bool | None = None,
) -> BackendChoice:
    """Resolve ``requested`` (``"auto"``, ``"onnxruntime"`` or ``"openvino"``) for ``workload``
    (``"interactive"`` or ``"bulk"``)."""
    choice = _choose(requested, workload, manifest, precision, flags, openvino_installed)
    if choice.backend == "onnxruntime" and workload == "bulk":
        return BackendChoice(choice.backend, f"{choice.reason}; {BULK_STREAMS}")
    return choice


#: How bulk work runs on onnxruntime (the reason's second half, for ``info`` and the job's log).
BULK_STREAMS = "bulk work runs one batch per CPU at once, one thread each"


def _choose(
    requested: str, workload: str, manifest: Manifest, precision: str | None,
    flags: frozenset[str] | None, openvino_installed: bool | None,
) -> BackendChoice:
    if requested != "auto":
        return BackendChoice(requested, "asked for")
    if workload != "bulk":
        return BackendChoice("onnxruntime", "auto: interactive work runs on onnxruntime (fastest at batch 1, leanest)")
    wanted = precision or ("int8" if "int8" in manifest.openvino else None)
    if not manifest.openvino or (wanted is not None and wanted not in manifest.openvino):
        return BackendChoice("onnxruntime", "auto: the bundle has no OpenVINO IR (export with --openvino)")
    if openvino_installed is None:
        openvino_installed = importlib.util.find_spec("openvino") is not None
    if not openvino_installed:
        return BackendChoice("onnxruntime", 'auto: OpenVINO is not installed (pip install "flare-onnx[openvino]")')
    have = (cpu_flags() if flags is None else flags) & set(BULK_INT8_FLAGS)
    if not have:
        return BackendChoice(
            "onnxruntime", "auto: this CPU has no 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX), "
                           "where OpenVINO's INT8 runs slower than onnxruntime's")
    return BackendChoice("openvino", f"auto: bulk work on a CPU with {', '.join(sorted(have))}")
