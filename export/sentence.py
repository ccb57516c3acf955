"""A sentence-transformers checkpoint's own sentence settings, read at export: its pooling
(``1_Pooling/config.json``) and whether it normalizes (a ``Normalize`` module), so a bundle
embeds as the checkpoint does on every surface without options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

__all__ = ["sentence_settings"]

#: sentence-transformers' pooling flags -> the runtime's pooling
_POOLINGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}
_UNSUPPORTED = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
#: modules the runtime reproduces: the encoder, one pooling, an optional normalization
_KNOWN = {"Transformer", "Pooling", "Normalize"}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} cannot be read: {exc}") from exc


def sentence_settings(directory: Path) -> dict[str, Any]:
    """``{"pooling": "mean"|"cls"|"max", "normalize": bool, "from": ...}`` for the manifest.

    A checkpoint without ``modules.json`` (a plain transformers checkpoint, flare-it itself)
    gets flare-onnx's defaults: mean pooling, unit length.

    Raises:
        ExportError: the checkpoint's sentence-transformers pipeline does something the
            runtime would not (another pooling, several at once, a Dense layer after pooling,
            prompts left out of the pooling): its vectors would silently differ.
    """
    modules_path = directory / "modules.json"
    if not modules_path.is_file():
        return {"pooling": "mean", "normalize": True, "from": "flare-onnx's defaults (no modules.json)"}
    modules = _read(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ExportError(f"{modules_path} is not a list of modules")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    extra = sorted(set(kinds) - _KNOWN)
    if extra:
        raise ExportError(
            f"the checkpoint's sentence-transformers pipeline has {', '.join(extra)} module(s), which flare-onnx "
            "does not run: its vectors would differ from sentence-transformers'"
        )
    pooling = "mean"
    if "Pooling" in kinds:
        config = _read(directory / str(kinds["Pooling"].get("path", "")) / "config.json")
        modes = [_POOLINGS.get(k, k) for k, on in config.items() if k.startswith("pooling_mode") and on is True]
        if len(modes) != 1 or modes[0] in _UNSUPPORTED:
            raise ExportError(
                f"the checkpoint pools with {modes or 'nothing'}; flare-onnx pools with one of mean, cls or max"
            )
        if config.get("include_prompt") is False:
            raise ExportError(
                "the checkpoint leaves prompts out of its pooling (include_prompt: false); flare-onnx "
                "pools over every token"
            )
        pooling = modes[0]
    return {"pooling": pooling, "normalize": "Normalize" in kinds, "from": "sentence-transformers modules.json"}
