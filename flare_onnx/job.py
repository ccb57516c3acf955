"""``flare-onnx run``: a streaming, resumable batch job over JSONL or plain text.

The job is four parts, each a small piece of this module:

* **records** (:func:`parse_record`): one input line -> a text and the fields to carry, or
  the reason it is refused;
* **checkpoint** (:class:`Checkpoint`): a small state file recording how far the input was
  read, how long each output file is, and a signature of everything that shapes the output
  (task, options, bundle, the input's content so far);
* **writer** (:class:`Outputs`): results appended to ``OUTPUT.partial`` (bad records to the
  errors file, vectors to the ``.npy``), cut back to the checkpoint on resume, and an
  idempotent finish;
* **workers** (:class:`Predictor`): the model in this process, or a pool of spawned worker
  processes each with its own session.

Killed at any moment (``kill -9`` included) and started again with the same command, the job
cuts the partial files back to the last checkpoint and continues, so every record appears
exactly once. The finish is recorded in the checkpoint before it starts and each of its steps
can run again, so a kill during the finish cannot damage the output either. Memory is bounded
by the chunk size and the model's token budget, never by the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import InferenceError, InputError
from .engine import TaskSpec, get_task, parse_load_options

__all__ = ["JobConfig", "run_job", "parse_record", "EXIT_OK", "EXIT_RECORD_ERRORS"]

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


# -- records ------------------------------------------------------------------------------


def parse_record(raw: bytes, *, fmt: str, text_field: str) -> tuple[str | None, dict[str, Any], str | None]:
    """(text, carried fields, error) for one input line: a text, or an error, or neither for
    a blank line of a text file (skipped)."""
    if len(raw) > MAX_RECORD_BYTES:
        return None, {}, f"the record has {len(raw)} bytes; at most {MAX_RECORD_BYTES}"
    try:
        decoded = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return None, {}, f"invalid UTF-8 at byte {exc.start}"
    if fmt == "text":  # a blank line separates paragraphs; it is skipped (and counted), not an error
        return (decoded, {}, None) if decoded.strip() else (None, {}, None)
    try:
        obj = json.loads(decoded, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        return None, {}, f"invalid JSON: {exc}"[:300]
    if not isinstance(obj, dict):
        return None, {}, f"a JSON object was expected, not {type(obj).__name__}"
    if text_field not in obj:
        return None, {}, f"missing field {text_field!r}"
    text = obj[text_field]
    if not isinstance(text, str):
        return None, {}, f"field {text_field!r} is {type(text).__name__}, not a string"
    if not text.strip():
        return None, {}, "empty text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, {}, "text is not valid Unicode (lone surrogate)"
    return text, obj, None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _detect_format(path: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"input format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    return "jsonl" if path.endswith((".jsonl", ".json", ".ndjson")) or path == "-" else "text"


def _chunks(stream: IO[bytes], start_line: int, size: int) -> Iterator[tuple[int, list[bytes], int]]:
    """(first line number, raw lines, bytes consumed) chunk by chunk."""
    line = start_line
    while True:
        raws: list[bytes] = []
        consumed = 0
        for _ in range(size):
            raw = stream.readline()
            if not raw:
                break
            consumed += len(raw)
            raws.append(raw)
        if not raws:
            return
        yield line, raws, consumed
        line += len(raws)


# -- checkpoint ---------------------------------------------------------------------------


class Checkpoint:
    """The state file beside the output: where to resume, and what the output was made with."""

    def __init__(self, path: Path, signature: str) -> None:
        self.path = path
        self.signature = signature
        self.state: dict[str, Any] = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"signature": self.signature, "input_offset": 0, "line": 0, "input_sha256": hashlib.sha256().hexdigest(),
                "output_bytes": 0, "errors_bytes": 0, "rows": 0, "errors": 0, "skipped": 0, "dim": None, "finishing": False}

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


def _signature(cfg: JobConfig, spec: TaskSpec, fmt: str) -> str:
    manifest = (Path(cfg.bundle) / "manifest.json").read_bytes()
    parts = [spec.name, fmt, cfg.text_field, json.dumps({**spec.defaults(), **cfg.options}, sort_keys=True),
             json.dumps({"precision": cfg.model_options.get("precision"),  # a resume never mixes engines
                         "backend": cfg.model_options.get("backend", "onnxruntime")}, sort_keys=True),
             str(bool(cfg.npy)), str(Path(cfg.input).resolve()), hashlib.sha256(manifest).hexdigest()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _prefix_hash(path: str, size: int) -> Any:
    """sha256 of the input's first ``size`` bytes: a resume must continue the same input."""
    h = hashlib.sha256()
    if size:
        with open(path, "rb") as f:
            while size > 0 and (block := f.read(min(size, 1 << 20))):
                h.update(block)
                size -= len(block)
    return h


# -- writer -------------------------------------------------------------------------------


class Outputs:
    """The output, errors and vector files of a job, written chunk by chunk."""

    def __init__(self, cfg: JobConfig, state: dict[str, Any]) -> None:
        self.streaming = cfg.output == "-"
        self.out_path = None if self.streaming else Path(cfg.output)
        self.errors_path = Path(cfg.errors) if cfg.errors else (
            self.out_path.with_name(self.out_path.name + ".errors.jsonl") if self.out_path else None
        )
        self.npy_path = Path(cfg.npy) if cfg.npy else None
        self.state = state
        self.out: IO[bytes] = sys.stdout.buffer
        self.err: IO[bytes] | None = None  # opened when the first bad record comes
        self.npy: IO[bytes] | None = None

    def open(self) -> None:
        """Open every file for appending at the checkpoint."""
        state = self.state
        if not self.streaming:
            self.out = self._reopen(self._partial(self.out_path), state["output_bytes"])
        if self.errors_path and state["errors_bytes"]:
            self.err = self._reopen(self._partial(self.errors_path), state["errors_bytes"])
        elif self.errors_path:  # a partial errors file of an earlier, abandoned run
            self._partial(self.errors_path).unlink(missing_ok=True)
        if self.npy_path:
            self.npy = self._reopen(self._raw(self.npy_path), state["rows"] * 4 * (state["dim"] or 0))

    @staticmethod
    def _partial(path: Path | None) -> Path:
        assert path is not None
        return path.with_name(path.name + ".partial")

    @staticmethod
    def _raw(path: Path) -> Path:
        return path.with_name(path.name + ".raw")

    @staticmethod
    def _reopen(path: Path, size: int) -> IO[bytes]:
        """Open for appending at ``size``, cutting off what was written after the checkpoint."""
        exists = path.exists()
        if size and (not exists or path.stat().st_size < size):
            raise InputError(
                f"{path} is shorter than its checkpoint says ({size} bytes): it was changed or "
                f"lost since the last run; run again with --restart"
            )
        f = open(path, "r+b" if exists else "w+b")
        f.truncate(size)
        f.seek(size)
        return f

    def write(self, out_lines: list[str], err_lines: list[str], vectors: list[np.ndarray]) -> None:
        data = "".join(line + "\n" for line in out_lines).encode("utf-8")
        self.out.write(data)
        self.out.flush()
        self.state["output_bytes"] += len(data)
        if err_lines:
            errors = "".join(line + "\n" for line in err_lines).encode("utf-8")
            if self.errors_path is None:
                sys.stderr.write(errors.decode("utf-8"))
            else:
                if self.err is None:
                    self.err = self._reopen(self._partial(self.errors_path), 0)
                self.err.write(errors)
                self.err.flush()
                self.state["errors_bytes"] += len(errors)
            self.state["errors"] += len(err_lines)
        if vectors and self.npy is not None:
            block = np.stack(vectors).astype(np.float32)
            self.state["dim"] = int(block.shape[1])
            self.npy.write(block.tobytes())
            self.npy.flush()
            self.state["rows"] += len(vectors)

    def sync(self) -> None:
        for f in (self.out, self.err, self.npy):
            if f is not None and f is not sys.stdout.buffer:
                os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self.out, self.err, self.npy):
            if f is None:
                continue
            if f is sys.stdout.buffer:
                f.flush()
            else:
                f.close()

    def finish(self) -> None:
        """Move every finished file into place. Each step checks what is already done, so a
        finish interrupted at any point completes when run again."""
        if self.streaming:
            return
        assert self.out_path is not None
        if self.npy_path:
            raw = self._raw(self.npy_path)
            if raw.exists():
                _finalize_npy(raw, self.npy_path, self.state["rows"], self.state["dim"] or 0)
        for path in (self.out_path, self.errors_path):
            if path is not None and self._partial(path).exists():
                os.replace(self._partial(path), path)
        if self.errors_path is not None and not self.state["errors_bytes"]:
            self.errors_path.unlink(missing_ok=True)  # an earlier run's errors are not this run's


def _finalize_npy(raw: Path, dest: Path, rows: int, dim: int) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
    with open(tmp, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, header)
        while block := src.read(1 << 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    raw.unlink()


# -- workers ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _worker_model(bundle: str, model_options: tuple[tuple[str, Any], ...]) -> Any:
    """The model of a spawned worker process, loaded by its first chunk (that process ends
    with the pool). Workers are started with "spawn": the Rust tokenizer's thread pool
    deadlocks in a child forked after use, so each process builds its own tokenizer and session."""
    from .engine import load

    return load(bundle, **dict(model_options))


def _predict_chunk(model: Any, task: str, texts: list[str], options: dict[str, Any]) -> list[tuple[Any, str | None]]:
    """Results for a chunk; a text the model refuses is isolated, the rest still run."""
    if not texts:
        return []
    try:
        return [(r, None) for r in model.predict(task, texts, options)]
    except InputError:
        pass
    out: list[tuple[Any, str | None]] = []
    for text in texts:
        try:
            out.append((model.predict(task, [text], options)[0], None))
        except InputError as exc:
            out.append((None, str(exc).replace("text 0", "the text")))
    return out


def _worker_chunk(
    bundle: str, model_options: tuple[tuple[str, Any], ...], task: str, texts: list[str], options: dict[str, Any]
) -> list[tuple[Any, str | None]]:
    return _predict_chunk(_worker_model(bundle, model_options), task, texts, options)


class Predictor:
    """Runs chunks in this process, or in ``workers`` spawned processes."""

    def __init__(self, cfg: JobConfig, spec: TaskSpec) -> None:
        from .engine import available_cpus

        self.spec, self.options = spec, cfg.options
        model_options = dict(cfg.model_options)
        model_options.setdefault("threads", max(1, available_cpus() // cfg.workers))
        self.pool: ProcessPoolExecutor | None = None
        self.model: Any = None
        if cfg.workers > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
            self.bundle, self.model_options = cfg.bundle, tuple(sorted(model_options.items()))
        else:
            from .engine import load

            self.model = load(cfg.bundle, **model_options)
        self.in_flight = 2 * cfg.workers if self.pool else 0

    def submit(self, texts: list[str]) -> Future[Any] | list[tuple[Any, str | None]]:
        if self.pool is not None:
            return self.pool.submit(_worker_chunk, self.bundle, self.model_options, self.spec.name, texts, self.options)
        return _predict_chunk(self.model, self.spec.name, texts, self.options)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


# -- the job ------------------------------------------------------------------------------


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
    from .engine import choose_backend, read_manifest

    spec = get_task(cfg.task)
    cfg.options = spec.parse_options(cfg.options)
    cfg.model_options = {"workload": "bulk", **parse_load_options(cfg.model_options)}
    fmt = _detect_format(cfg.input, cfg.input_format)
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
        checkpoint = Checkpoint(Path(cfg.output + ".state"), _signature(cfg, spec, fmt))
        resuming = cfg.resume and checkpoint.load()
        if cfg.resume and not resuming:
            _refuse_another_finished_output(cfg, checkpoint.signature)
        if resuming:
            read = _prefix_hash(cfg.input, checkpoint.state["input_offset"])
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
        _mark_finished(cfg, checkpoint.signature)
        checkpoint.path.unlink(missing_ok=True)
    if state["line"] == 0:
        print(f"flare-onnx: the input {cfg.input!r} holds no records; the output is empty", file=sys.stderr)
    _summary(cfg, state, time.monotonic() - started)
    if state["errors"]:
        where = outputs.errors_path if outputs.errors_path else "stderr"
        print(f"flare-onnx: {state['errors']} record(s) could not be processed; see {where}", file=sys.stderr)
        return EXIT_RECORD_ERRORS
    return EXIT_OK


def _refuse_another_finished_output(cfg: JobConfig, signature: str) -> None:
    """A finished output is replaced only by a run of the same job (or with --restart)."""
    done = Path(cfg.output + ".done")
    if not (Path(cfg.output).exists() and done.is_file()):
        return
    try:
        finished = json.loads(done.read_text(encoding="utf-8")).get("signature")
    except (OSError, ValueError, AttributeError):
        finished = None
    if finished != signature:
        raise InputError(
            f"{cfg.output} is the finished output of a run with another task, options, bundle or input "
            f"file; run again with --restart to replace it, or choose another output"
        )


def _mark_finished(cfg: JobConfig, signature: str) -> None:
    """``OUTPUT.done``: what the finished output was made with (written atomically)."""
    done = Path(cfg.output + ".done")
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps({"signature": signature}), encoding="utf-8")
    os.replace(tmp, done)


def _stream(cfg: JobConfig, spec: TaskSpec, fmt: str, in_hash: Any, outputs: Outputs,
            checkpoint: Checkpoint | None) -> None:
    """Read, predict and write chunk by chunk, checkpointing after each."""
    state = outputs.state
    in_f: IO[bytes] = sys.stdin.buffer if cfg.input == "-" else open(cfg.input, "rb")
    if state["input_offset"]:
        in_f.seek(state["input_offset"])
    predictor = Predictor(cfg, spec)
    progress = _progress(cfg.progress, cfg.input, state["line"])
    pending: deque[tuple[int, list[tuple[str | None, dict[str, Any], str | None]], Any, tuple[int, Any]]] = deque()
    try:
        for first, raws, consumed in _chunks(in_f, state["line"], cfg.chunk):
            for raw in raws:
                in_hash.update(raw)
            if first == 0:  # a file saved with a UTF-8 byte-order mark keeps its first record
                raws[0] = raws[0].removeprefix(b"\xef\xbb\xbf")
            parsed = [parse_record(raw, fmt=fmt, text_field=cfg.text_field) for raw in raws]
            work = predictor.submit([t for t, _, e in parsed if e is None and t is not None])
            pending.append((first, parsed, work, (consumed, in_hash.copy())))
            while pending and len(pending) > predictor.in_flight:
                _write_chunk(pending.popleft(), spec, outputs, state, checkpoint, progress)
        while pending:
            _write_chunk(pending.popleft(), spec, outputs, state, checkpoint, progress)
    finally:
        predictor.close()
        if progress:
            progress.close()
        if in_f is not sys.stdin.buffer:
            in_f.close()


def _write_chunk(item: Any, spec: TaskSpec, outputs: Outputs, state: dict[str, Any],
                 checkpoint: Checkpoint | None, progress: Any) -> None:
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
            err_lines.append(json.dumps({"line": line, "error": error}, ensure_ascii=False))
            continue
        record = dict(carried) if carried else {"text": text}
        record["line"] = line
        if outputs.npy is not None:
            record["row"] = state["rows"] + len(vectors)
            vectors.append(np.asarray(value, dtype=np.float32))
        else:
            record.update(spec.record(value))
        out_lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
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
