"""``flare-onnx run``: a streaming, resumable batch job over JSONL or plain text.

The job is four parts, each a module of this package (:mod:`.run` ties them together):

* **records** (:mod:`.records`): one input line -> a text and the fields to carry, or
  the reason it is refused;
* **checkpoint** (:mod:`.checkpoint`): a small state file recording how far the input was
  read, how long each output file is, and a signature of everything that shapes the output
  (task, options, bundle, the input's content so far);
* **writer** (:mod:`.writer`): results appended to ``OUTPUT.partial`` (bad records to the
  errors file, vectors to the ``.npy``), cut back to the checkpoint on resume, and an
  idempotent finish;
* **workers** (:mod:`.workers`): the model in this process, or a pool of spawned worker
  processes each with its own session.

Killed at any moment (``kill -9`` included) and started again with the same command, the job
cuts the partial files back to the last checkpoint and continues, so every record appears
exactly once. The finish is recorded in the checkpoint before it starts and each of its steps
can run again, so a kill during the finish cannot damage the output either. Memory is bounded
by the chunk size and the model's token budget, never by the file.
"""

from __future__ import annotations

from .config import EXIT_OK, EXIT_RECORD_ERRORS, JobConfig
from .records import detect_format, error_line, parse_record, result_line
from .run import run_job

__all__ = [
    "JobConfig",
    "run_job",
    "parse_record",
    "result_line",
    "error_line",
    "detect_format",
    "EXIT_OK",
    "EXIT_RECORD_ERRORS",
]
