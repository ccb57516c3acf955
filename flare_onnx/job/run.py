"""The job itself: validate, resume or start, stream chunk by chunk, finish."""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..engine import TaskSpec, get_task, parse_load_options
from ..errors import InferenceError, InputError
from .checkpoint import Checkpoint, finished_before, job_signature, mark_finished, prefix_hash
from .config import EXIT_OK, EXIT_RECORD_ERRORS, JobConfig
from .records import detect_format, error_line, parse_record, read_chunks, result_line
from .workers import Predictor
from .writer import Outputs

__all__ = ["run_job"]


def _check_paths(cfg: JobConfig) -> None:
    if cfg.input != "-":
        if not Path(cfg.input).is_file():
            raise InputError(f"the input file {cfg.input!r} does not exist (or is not a file)")
    if cfg.output != "-":
        parent = Path(cfg.output).absolute().parent
        if not parent.is_dir():
            raise InputError(f"the output folder {str(parent)!r} does not exist; create it first")
    if cfg.npy and cfg.output == "-":
        raise InputError("--npy needs an output file, not standard output")


def _validate(cfg: JobConfig) -> tuple[TaskSpec, str]:
    from ..engine import choose_backend, read_manifest

    spec = get_task(cfg.task)
    cfg.options = spec.resolve(cfg.options)  # once for the whole job: every chunk takes these
    cfg.model_options = {"workload": "bulk", **parse_load_options(cfg.model_options)}
    fmt = detect_format(cfg.input, cfg.input_format)
    if cfg.npy and spec.name != "embed":
        raise InputError(f"--npy is for the embed task, not {spec.name}")
    if cfg.workers < 1 or cfg.chunk < 1:
        raise InputError("--workers and --chunk must be positive integers")
    manifest = read_manifest(cfg.bundle)
    manifest.require(spec.name)  # fail before reading any input
    _check_paths(cfg)
    # the engine is chosen once, here: every worker and a resume run the same one
    engine = choose_backend(cfg.model_options.get("backend", "auto"), cfg.model_options["workload"])
    cfg.model_options["backend"] = engine.backend
    print(f"flare-onnx: engine: {engine.backend} ({engine.reason})", file=sys.stderr)
    return spec, fmt


def run_job(cfg: JobConfig) -> int:
    """Run (or resume) a batch job; returns the process exit code.

    Raises:
        InputError: a bad task, option or path, or a checkpoint that belongs to another run.
        BundleError: the bundle cannot be loaded.
    """
    started = time.monotonic()
    spec, fmt = _validate(cfg)
    streaming = cfg.input == "-" or cfg.output == "-"
    checkpoint = None
    state = Checkpoint(Path("-"), "").fresh()
    read = hashlib.sha256()
    if not streaming:
        checkpoint = Checkpoint(Path(cfg.output + ".state"), job_signature(cfg, spec, fmt))
        resuming = cfg.resume and checkpoint.load()
        finished = finished_before(cfg, checkpoint.signature) if cfg.resume and not resuming else None
        if finished is not None:
            print(
                f"flare-onnx: {cfg.output} is already this job's finished output ({finished['lines']} input "
                f"lines, the same input); nothing to do (--restart runs it again)",
                file=sys.stderr,
            )
            return EXIT_RECORD_ERRORS if finished["errors"] else EXIT_OK
        if resuming:
            read = prefix_hash(cfg.input, checkpoint.state["input_offset"])
            if read.hexdigest() != checkpoint.state["input_sha256"]:
                raise InputError(
                    f"the input {cfg.input!r} changed since the checkpoint in {checkpoint.path}; "
                    f"run again with --restart to start over"
                )
            print(f"flare-onnx: resuming {cfg.output} after input line {checkpoint.state['line']}", file=sys.stderr)
        state = checkpoint.state
    outputs = Outputs(cfg, state)
    if not state["finishing"]:
        outputs.open()
        try:
            _stream(cfg, spec, fmt, read, outputs, checkpoint)
        except BrokenProcessPool:
            raise InferenceError(
                "a worker process died (killed, or out of memory); what was written is kept: "
                "run the same command again to resume"
            ) from None
        finally:
            outputs.close()
    if checkpoint is not None:
        state["finishing"] = True
        checkpoint.save()
        outputs.finish()
        mark_finished(cfg, checkpoint.signature, state)
        checkpoint.path.unlink(missing_ok=True)
    if state["line"] == 0:
        print(f"flare-onnx: the input {cfg.input!r} holds no records; the output is empty", file=sys.stderr)
    _summary(cfg, state, time.monotonic() - started)
    if state["errors"]:
        where = outputs.errors_path if outputs.errors_path else "stderr"
        print(f"flare-onnx: {state['errors']} record(s) could not be processed; see {where}", file=sys.stderr)
        return EXIT_RECORD_ERRORS
    return EXIT_OK


def _stream(
    cfg: JobConfig, spec: TaskSpec, fmt: str, in_hash: Any, outputs: Outputs, checkpoint: Checkpoint | None
) -> None:
    """Read, predict and write chunk by chunk, checkpointing after each."""
    state = outputs.state
    in_f: IO[bytes] = sys.stdin.buffer if cfg.input == "-" else open(cfg.input, "rb")
    if state["input_offset"]:
        in_f.seek(state["input_offset"])
    predictor = Predictor(cfg, spec)
    progress = _progress(cfg.progress, cfg.input, state["line"])
    pending: deque[tuple[int, list[tuple[str | None, dict[str, Any], str | None]], Any, tuple[int, Any]]] = deque()
    try:
        for first, raws, consumed in read_chunks(in_f, state["line"], cfg.chunk):
            for raw in raws:
                in_hash.update(raw)
            if first == 0:  # a file saved with a UTF-8 byte-order mark keeps its first record
                raws[0] = raws[0].removeprefix(b"\xef\xbb\xbf")
            parsed = [parse_record(raw, fmt=fmt, text_field=cfg.text_field) for raw in raws]
            work = predictor.submit([t for t, _, e in parsed if e is None and t is not None])
            pending.append((first, parsed, work, (consumed, in_hash.copy())))
            while pending and len(pending) > predictor.in_flight:
                write_chunk(pending.popleft(), spec, outputs, state, checkpoint, progress)
        while pending:
            write_chunk(pending.popleft(), spec, outputs, state, checkpoint, progress)
    finally:
        predictor.close()
        if progress:
            progress.close()
        if in_f is not sys.stdin.buffer:
            in_f.close()


def write_chunk(
    item: Any, spec: TaskSpec, outputs: Outputs, state: dict[str, Any], checkpoint: Checkpoint | None, progress: Any
) -> None:
    first, parsed, work, (consumed, in_hash) = item
    results = iter(work.result() if isinstance(work, Future) else work)
    out_lines: list[str] = []
    err_lines: list[str] = []
    vectors: list[np.ndarray] = []
    for i, (text, carried, error) in enumerate(parsed):
        line = first + i + 1
        value = None
        if error is None and text is None:
            state["skipped"] = state.get("skipped", 0) + 1
            continue
        if error is None:
            value, error = next(results)
        if error is not None:
            err_lines.append(error_line(line, error))
            continue
        if outputs.npy is not None:
            result = {"row": state["rows"] + len(vectors)}
            vectors.append(np.asarray(value, dtype=np.float32))
        else:
            result = spec.record(value)
        out_lines.append(result_line(text, carried, line, result))
    outputs.write(out_lines, err_lines, vectors)
    state["input_offset"] += consumed
    state["input_sha256"] = in_hash.hexdigest()
    state["line"] = first + len(parsed)
    if checkpoint is not None:
        outputs.sync()
        checkpoint.save()
    if progress:
        progress.update(len(parsed))


def _summary(cfg: JobConfig, state: dict[str, Any], seconds: float) -> None:
    """One line at the end: what was read, written, refused and skipped, and how long it took."""
    written = state["line"] - state["errors"] - state.get("skipped", 0)
    parts = [f"{state['line']} input lines", f"{written} results -> {cfg.output}"]
    if state["errors"]:
        parts.append(f"{state['errors']} refused")
    if state.get("skipped"):
        parts.append(f"{state['skipped']} blank line{'s' if state['skipped'] != 1 else ''} skipped")
    print(f"flare-onnx: done: {', '.join(parts)} in {seconds:.1f} s", file=sys.stderr)


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def _progress(enabled: bool | None, path: str, done: int) -> Any:
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    # counting lines reads the file once more: only worth it when a bar shows the ETA
    return tqdm(total=_count_lines(path), initial=done, unit="rec", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
