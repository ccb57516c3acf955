"""Finding and loading a checkpoint: Hub or local directory, config, and weights loaded safely.

Weights never go through a pickle that can run code: ``model.safetensors`` is preferred, and a
``pytorch_model.bin`` is read with ``torch.load(weights_only=True)`` (torch >= 2.10, after the
CVE-2025-32434 and CVE-2026-24747 fixes to that loader).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require

__all__ = ["Checkpoint", "resolve_checkpoint", "load_checkpoint", "TASK_ARCHITECTURES", "infer_task"]

DEFAULT_MODEL = "osiria/flare-it"
HUB_FILES = [
    "config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "tokenizer.json",
    "model.safetensors",
    "pytorch_model.bin",
]

#: export task -> transformers Auto class name
TASK_ARCHITECTURES = {
    "fill-mask": "AutoModelForMaskedLM",
    "feature-extraction": "AutoModel",
    "token-classification": "AutoModelForTokenClassification",
    "text-classification": "AutoModelForSequenceClassification",
}
_SUFFIX_TASKS = {
    "ForMaskedLM": "fill-mask",
    "ForTokenClassification": "token-classification",
    "ForSequenceClassification": "text-classification",
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it came from, its config, and the torch model in eval mode."""

    source: str
    directory: Path
    config: Any
    model: Any
    task: str


def resolve_checkpoint(model: str, *, revision: str | None = None) -> Path:
    """A local directory for ``model``: the directory itself, or a Hub snapshot.

    Raises:
        ExportError: the path does not exist and the Hub cannot be reached.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ExportError(f"{model!r} is not a checkpoint directory")
    hub = require("huggingface_hub")
    try:
        return Path(hub.snapshot_download(model, revision=revision, allow_patterns=HUB_FILES))
    except Exception as exc:  # offline, unknown repo, gated, rate limited...
        raise ExportError(
            f"there is no directory {model!r}, and it could not be fetched from the Hugging Face "
            f"Hub ({type(exc).__name__}: {_first_sentence(str(exc))}). If this machine is "
            f"offline, pass a local checkpoint directory instead, or build a Flare-IT-shaped test "
            f"checkpoint with `flare-onnx reference DIR`."
        ) from None


def _first_sentence(message: str, limit: int = 200) -> str:
    """The first line of an error message, cut at a word boundary with an ellipsis if long."""
    line = (message.splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(".,;:") + " …"


def infer_task(config: Any) -> str:
    """The export task a checkpoint was trained for, from ``config.architectures``."""
    for arch in config.architectures or []:
        for suffix, task in _SUFFIX_TASKS.items():
            if arch.endswith(suffix):
                return task
    return "feature-extraction"


def _load_state_dict(directory: Path) -> dict[str, Any]:
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.exists():
        return require("safetensors.torch").load_file(str(safetensors_file))
    pickle_file = directory / "pytorch_model.bin"
    if pickle_file.exists():
        torch = require("torch")
        try:
            return torch.load(str(pickle_file), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ExportError(
                f"{pickle_file} could not be read as plain tensors ({type(exc).__name__}); "
                f"flare-onnx never unpickles code. Convert it to model.safetensors from a "
                f"trusted environment."
            ) from None
    raise ExportError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def load_checkpoint(directory: Path, *, source: str, task: str | None = None) -> Checkpoint:
    """Load config and weights for ``task`` (default: the task the architecture names)."""
    transformers = require("transformers")
    config_file = directory / "config.json"
    if not config_file.exists():
        raise ExportError(f"{directory} has no config.json: not a transformers checkpoint")
    config = transformers.AutoConfig.from_pretrained(str(directory))
    if config.model_type not in ("xlm-roberta", "roberta", "bert", "camembert"):
        raise ExportError(
            f"model_type {config.model_type!r} is not supported; flare-onnx exports "
            f"XLM-RoBERTa/RoBERTa and BERT encoders"
        )
    task = task or infer_task(config)
    if task not in TASK_ARCHITECTURES:
        raise ExportError(f"task must be one of {', '.join(TASK_ARCHITECTURES)}, not {task!r}")
    config._attn_implementation = "eager"
    auto = getattr(transformers, TASK_ARCHITECTURES[task])
    state_dict = _load_state_dict(directory)
    model = auto.from_config(config)
    state_dict = _adapt_keys(state_dict, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    model.tie_weights()
    tied = {k for k in missing if k.endswith("decoder.weight") or k.endswith("decoder.bias")}
    missing = [k for k in missing if k not in tied and not k.endswith("position_ids") and "pooler" not in k]
    unexpected = [k for k in unexpected if not k.endswith("position_ids") and "pooler" not in k]
    if missing:
        raise ExportError(
            f"the checkpoint lacks weights the {task} model needs: {', '.join(missing[:5])}"
            + (" (a base model exported for a fine-tuned task?)" if task != "fill-mask" else "")
        )
    ignored = [k for k in unexpected if not k.startswith(("lm_head.", "cls."))]
    if ignored and task in ("fill-mask", "token-classification", "text-classification"):
        raise ExportError(f"unexpected weights in the checkpoint: {', '.join(ignored[:5])}")
    model.eval()
    return Checkpoint(source=source, directory=directory, config=config, model=model, task=task)


def _adapt_keys(state_dict: dict[str, Any], model: Any) -> dict[str, Any]:
    """Match a checkpoint saved with or without the base-model prefix to the model's keys."""
    prefix = model.base_model_prefix
    own = model.state_dict().keys()
    has_prefix = any(k.startswith(prefix + ".") for k in own)
    out = {}
    for key, value in state_dict.items():
        if has_prefix and not key.startswith(prefix + ".") and f"{prefix}.{key}" in own:
            key = f"{prefix}.{key}"
        elif not has_prefix and key.startswith(prefix + "."):
            key = key[len(prefix) + 1 :]
        out[key] = value
    return out


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
