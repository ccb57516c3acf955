"""``load()`` of a Hugging Face model id or a checkpoint directory: the bundle is exported once
into a cache (``$FLARE_ONNX_CACHE``, by default ``~/.cache/flare-onnx``) and loaded from there,
as optimum's ``export=True`` does. This needs the export extra (torch, transformers): the
runtime itself never imports it, and without it the error names both ways forward.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ..errors import BundleError
from .bundle import HUB_ID, MANIFEST_NAME

__all__ = ["bundle_dir", "cache_root"]

def cache_root() -> Path:
    """Where exported checkpoints and shared bundles are kept: ``$FLARE_ONNX_CACHE``, by default
    ``~/.cache/flare-onnx`` (the one place that says so)."""
    return Path(os.environ.get("FLARE_ONNX_CACHE") or "~/.cache/flare-onnx").expanduser()


def bundle_dir(path: str | Path) -> Path:
    """The bundle directory for ``path``: ``path`` itself when it is one (or is nothing this
    function knows: the bundle reader then says what it is), else the cached export of the
    checkpoint directory or Hub id it names, exported now if it is not cached yet.

    Raises:
        BundleError: a checkpoint or Hub id, and the export extra is not installed.
        ExportError: the export failed (the Hub unreachable, a checkpoint it cannot read).
    """
    given = Path(path).expanduser()
    if (given / MANIFEST_NAME).exists() or given.is_file():
        return given
    checkpoint = given.is_dir() and (given / "config.json").is_file()
    hub_id = not given.exists() and bool(HUB_ID.fullmatch(str(path)))
    if not (checkpoint or hub_id):
        return given
    key = str(given.resolve()) if checkpoint else str(path)
    target = cache_root() / re.sub(r"[^\w.-]+", "--", key.strip("/"))[-120:]
    if (target / MANIFEST_NAME).is_file():
        return target
    what = "a checkpoint directory" if checkpoint else "a Hugging Face model id"
    try:
        from flare_onnx_export import export_bundle
    except ImportError:
        raise BundleError(
            f"{str(path)!r} is {what}, not a bundle: install the exporter (pip install \".[export]\", torch "
            f"2.13.0 CPU first) and load() exports it into {cache_root()}; or run `flare-onnx export {path} "
            f"-o DIR` where the exporter is installed, and load DIR"
        ) from None
    print(f"flare-onnx: exporting {path} into {target} (once; later loads reuse it)", file=sys.stderr, flush=True)
    export_bundle(str(given if checkpoint else path), target, log=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    return target
