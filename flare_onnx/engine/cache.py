"""``load()`` of a Hugging Face model id or a checkpoint directory: the bundle is exported once
into a cache (``$FLARE_ONNX_CACHE``, by default ``~/.cache/flare-onnx``) and loaded from there,
as optimum's ``export=True`` does. This needs the export extra (torch, transformers): the
runtime itself never imports it, and without it the error names both ways forward.

A cache entry is named by the checkpoint's identity, never by a shortened name: a checkpoint
directory by its resolved path and the sha256 of its files (weights, config, tokenizer), so a
checkpoint changed in place or another one at a similar path gets an entry of its own; a Hub id
by the id and revision. An entry is created under a file lock (two loads at once export once;
a third reading meanwhile waits), in a temporary folder that takes its place only when whole;
folders left by a killed export are removed by the next one; and an entry that no longer
verifies is exported again by :func:`rebuild`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from .bundle import HUB_ID, MANIFEST_NAME

__all__ = ["bundle_dir", "cache_root", "CacheEntry", "rebuild"]


def cache_root() -> Path:
    """Where exported checkpoints and shared bundles are kept: ``$FLARE_ONNX_CACHE``, by default
    ``~/.cache/flare-onnx`` (the one place that says so)."""
    return Path(os.environ.get("FLARE_ONNX_CACHE") or "~/.cache/flare-onnx").expanduser()


@dataclass(frozen=True)
class CacheEntry:
    """The cached bundle of one checkpoint: what was asked for, and where it is kept."""

    source: str  # the checkpoint directory or Hub id, as given
    kind: str  # "a checkpoint directory" or "a Hugging Face model id"
    export_from: str  # what the exporter reads (a resolved directory, or the Hub id)
    path: Path


def _checkpoint_digest(directory: Path) -> str:
    """sha256 over the checkpoint's files (names, sizes, contents): its identity."""
    h = hashlib.sha256(str(directory).encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f"\0{path.relative_to(directory)}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _entry(path: str | Path) -> CacheEntry | None:
    """The cache entry for a checkpoint directory or a Hub id; None for anything else."""
    given = Path(path).expanduser()
    if (given / MANIFEST_NAME).exists() or given.is_file():
        return None
    if given.is_dir() and (given / "config.json").is_file():
        resolved = given.resolve()
        digest = _checkpoint_digest(resolved)
        name = f"{_slug(resolved.name)}-{digest[:24]}"
        return CacheEntry(str(path), "a checkpoint directory", str(resolved), cache_root() / name)
    if not given.exists() and HUB_ID.fullmatch(str(path)):
        digest = hashlib.sha256(f"hub\0{path}\0main".encode()).hexdigest()
        return CacheEntry(
            str(path), "a Hugging Face model id", str(path), cache_root() / f"{_slug(str(path))}-{digest[:24]}"
        )
    return None


def _slug(text: str) -> str:
    """A readable, file-name-safe hint of the source (the digest beside it is the identity)."""
    return re.sub(r"[^\w.-]+", "--", text.strip("/"))[-60:] or "checkpoint"


def bundle_dir(path: str | Path) -> tuple[Path, CacheEntry | None]:
    """The bundle directory for ``path``, and its cache entry when it is one: ``path`` itself
    when it is a bundle (or nothing this function knows: the bundle reader then says what it
    is), else the cached export of the checkpoint directory or Hub id it names, exported now
    if it is not cached yet.

    Raises:
        BundleError: a checkpoint or Hub id, and the export extra is not installed.
        ExportError: the export failed (the Hub unreachable, a checkpoint it cannot read).
    """
    entry = _entry(path)
    if entry is None:
        return Path(path).expanduser(), None
    if not (entry.path / MANIFEST_NAME).is_file():
        with _locked(entry):
            if not (entry.path / MANIFEST_NAME).is_file():  # another process may have made it meanwhile
                _export(entry, reason="once; later loads reuse it")
    return entry.path, entry


def rebuild(entry: CacheEntry, why: BundleError) -> Path:
    """Export a cache entry again when it no longer verifies (a file lost or altered)."""
    with _locked(entry):
        _export(entry, reason=f"again: the cached bundle {entry.path} is broken ({why})")
    return entry.path


@contextmanager
def _locked(entry: CacheEntry) -> Iterator[None]:
    """Hold the entry's lock file; folders a killed export left behind are removed first."""
    root = entry.path.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{entry.path.name}.lock", "w")
    except OSError as exc:
        raise BundleError(
            f"the flare-onnx cache {root} cannot be written ({exc.strerror}); set FLARE_ONNX_CACHE to a "
            f"writable folder, or export {entry.source} with `flare-onnx export` and load that folder"
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in root.glob(f".{entry.path.name}.*"):
            if stale.is_dir():  # the exporter's work folder of an export that was killed
                shutil.rmtree(stale, ignore_errors=True)
        yield


def _export(entry: CacheEntry, *, reason: str) -> None:
    try:
        from flare_onnx_export import export_bundle
    except ImportError:
        raise BundleError(
            f"{entry.source!r} is {entry.kind}, not a bundle: install the "
            f'exporter (pip install ".[export]", torch 2.13.0 CPU first) and load() exports it into '
            f"{cache_root()}; or run `flare-onnx export {entry.source} -o DIR` where the exporter is installed, "
            f"and load DIR"
        ) from None
    print(f"flare-onnx: exporting {entry.source} into {entry.path} ({reason})", file=sys.stderr, flush=True)
    export_bundle(
        entry.export_from, entry.path, overwrite=True, log=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)
    )
