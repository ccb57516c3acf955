"""Installed size of a set of distributions and everything they require (from metadata)."""

from __future__ import annotations

import importlib.metadata as md
import re


def _name(req: str) -> str | None:
    if ";" in req:
        marker = req.split(";", 1)[1]
        if "extra" in marker:
            return None
        try:
            from packaging.markers import Marker

            if not Marker(marker).evaluate():
                return None
        except Exception:
            pass
    m = re.match(r"[A-Za-z0-9_.\-]+", req.strip())
    return m.group(0) if m else None


def closure(roots: list[str]) -> dict[str, int]:
    """Bytes on disk of each installed distribution reachable from ``roots``."""
    seen: dict[str, int] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            try:
                size += f.locate().stat().st_size
            except OSError:
                pass
        seen[key] = size
        stack += [n for r in (dist.requires or []) if (n := _name(r))]
    return seen


def compare() -> dict[str, object]:
    runtime = closure(["onnxruntime", "tokenizers", "numpy"])
    heavy = closure(["torch", "transformers"])
    return {
        "runtime_mb": sum(runtime.values()) / 1e6,
        "runtime_packages": sorted(runtime),
        "torch_mb": sum(heavy.values()) / 1e6,
        "torch_packages": sorted(heavy),
    }
