"""A description of the machine and libraries, stored with every result."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
LIBRARIES = (
    "flare-onnx",
    "onnxruntime",
    "tokenizers",
    "numpy",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "openvino",
)


def describe() -> dict[str, Any]:
    model = platform.processor()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    from flare_onnx.engine.session import available_cpus

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem = None
    return {
        "cpu": model,
        "isa": {f: f in flags for f in FLAGS},
        "logical_cpus": os.cpu_count(),
        "usable_cpus": available_cpus(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "os": platform.platform(),
        "libraries": versions,
    }


def summary(machine: dict[str, Any]) -> str:
    isa = ", ".join(f for f, on in machine["isa"].items() if on) or "no AVX2"
    gib = (machine["memory_bytes"] or 0) / 2**30
    return f"{machine['cpu']} ({isa}), {machine['usable_cpus']} usable CPUs, {gib:.0f} GiB, Python {machine['python']}"
