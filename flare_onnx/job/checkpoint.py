"""The checkpoint: how far the input was read, how long each output file is, and a signature
of everything that shapes the output; and the mark a finished output carries."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..engine import TaskSpec
from ..errors import InputError
from .config import JobConfig

__all__ = ["Checkpoint", "job_signature", "prefix_hash", "finished_before", "mark_finished"]


class Checkpoint:
    """The state file beside the output: where to resume, and what the output was made with."""

    def __init__(self, path: Path, signature: str) -> None:
        self.path = path
        self.signature = signature
        self.state: dict[str, Any] = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "input_offset": 0,
            "line": 0,
            "input_sha256": hashlib.sha256().hexdigest(),
            "output_bytes": 0,
            "errors_bytes": 0,
            "rows": 0,
            "errors": 0,
            "skipped": 0,
            "dim": None,
            "finishing": False,
        }

    def load(self) -> bool:
        """Take the saved state if it belongs to this job; True when resuming."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(saved, dict) or saved.get("signature") != self.signature:
            raise InputError(
                f"{self.path} belongs to a run with another task, bundle, options or input; "
                f"run again with --restart to start over (the earlier partial output is discarded)"
            )
        self.state = saved
        return True

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def job_signature(cfg: JobConfig, spec: TaskSpec, fmt: str) -> str:
    manifest = (Path(cfg.bundle) / "manifest.json").read_bytes()
    parts = [
        spec.name,
        fmt,
        cfg.text_field,
        json.dumps({**spec.defaults(), **cfg.options}, sort_keys=True),
        json.dumps(
            {
                "precision": cfg.model_options.get("precision"),  # a resume never mixes engines
                "backend": cfg.model_options.get("backend", "onnxruntime"),
            },
            sort_keys=True,
        ),
        str(bool(cfg.npy)),
        str(Path(cfg.input).resolve()),
        hashlib.sha256(manifest).hexdigest(),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def prefix_hash(path: str, size: int) -> Any:
    """sha256 of the input's first ``size`` bytes: a resume must continue the same input."""
    h = hashlib.sha256()
    if size:
        with open(path, "rb") as f:
            while size > 0 and (block := f.read(min(size, 1 << 20))):
                h.update(block)
                size -= len(block)
    return h


def finished_before(cfg: JobConfig, signature: str) -> dict[str, Any] | None:
    """What ``OUTPUT.done`` records when the output is this very job's, finished over the same
    input bytes (a rerun then has nothing to do); None when there is no finished output.

    Raises:
        InputError: the output is another job's finished output (replaced only with --restart).
    """
    done = Path(cfg.output + ".done")
    if not (Path(cfg.output).exists() and done.is_file()):
        return None
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
        finished = record.get("signature")
    except (OSError, ValueError, AttributeError):
        record, finished = {}, None
    if finished != signature:
        raise InputError(
            f"{cfg.output} is the finished output of a run with another task, options, bundle or input "
            f"file; run again with --restart to replace it, or choose another output"
        )
    size = Path(cfg.input).stat().st_size
    if record.get("input_bytes") != size or record.get("input_sha256") != prefix_hash(cfg.input, size).hexdigest():
        return None  # the same file name with other contents: run it again
    return dict(record)


def mark_finished(cfg: JobConfig, signature: str, state: dict[str, Any]) -> None:
    """``OUTPUT.done``: what the finished output was made with, over which input, and what it
    held (written atomically)."""
    done = Path(cfg.output + ".done")
    tmp = done.with_name(done.name + ".tmp")
    record = {
        "signature": signature,
        "input_bytes": state["input_offset"],
        "input_sha256": state["input_sha256"],
        "lines": state["line"],
        "errors": state["errors"],
    }
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, done)
