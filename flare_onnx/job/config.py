"""A batch job's settings and exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobConfig", "EXIT_OK", "EXIT_RECORD_ERRORS", "FORMATS", "MAX_RECORD_BYTES"]

EXIT_OK = 0
EXIT_RECORD_ERRORS = 3
FORMATS = ("auto", "jsonl", "text")
#: a record longer than this is refused (the model reads 512 tokens; sliding windows cover
#: long texts, but one record must not be able to take the job's memory)
MAX_RECORD_BYTES = 1 << 20


@dataclass
class JobConfig:
    """A batch job. ``options`` are the task's (registry names), ``model_options`` those of
    :func:`flare_onnx.load` (precision, threads, spin, batch budgets)."""

    task: str
    bundle: str
    input: str
    output: str
    options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    text_field: str = "text"
    input_format: str = "auto"  # auto | jsonl | text
    errors: str | None = None
    npy: str | None = None
    workers: int = 1
    chunk: int = 256
    progress: bool | None = None  # None: when stderr is a terminal
    resume: bool = True
