"""``flare-onnx run``: a streaming, resumable batch job over JSONL or plain text.

Records are read in chunks. Each chunk's results are appended to ``OUTPUT.partial`` (and bad
records to the errors file); then a small state file records how far the input was read and
how long each output file is, written atomically. Killed at any moment (``kill -9`` included)
and started again with the same command, the job truncates the partial files to the last
recorded lengths and continues from the recorded input offset, so every record appears
exactly once. The finished output is renamed into place atomically.

Memory is bounded by the chunk size and the model's token budget, never by the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._json import to_jsonable
from .errors import InputError

__all__ = ["JobConfig", "run_job", "parse_record", "EXIT_OK", "EXIT_RECORD_ERRORS"]

EXIT_OK = 0
EXIT_RECORD_ERRORS = 3
TASKS = {"fill-mask": "fill_mask", "embed": "embed", "tag": "tag", "classify": "classify"}
RESULT_KEY = {"fill_mask": "masks", "embed": "embedding", "tag": "result", "classify": "labels"}


@dataclass
class JobConfig:
    task: str
    bundle: str
    input: str
    output: str
    text_field: str = "text"
    input_format: str = "auto"  # auto | jsonl | text
    errors: str | None = None
    npy: str | None = None
    precision: str | None = None
    workers: int = 1
    threads: int | None = None
    chunk: int = 256
    top_k: int | None = None
    progress: bool | None = None  # None: when stderr is a terminal
    resume: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def parse_record(raw: bytes, *, line: int, fmt: str, text_field: str) -> tuple[str | None, dict[str, Any], str | None]:
    """(text, carried fields, error) for one input line; exactly one of text/error is set."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, {}, f"invalid UTF-8 at byte {exc.start}"
    decoded = decoded.rstrip("\r\n")
    if fmt == "text":
        if not decoded.strip():
            return None, {}, "empty text"
        return decoded, {}, None
    try:
        obj = json.loads(decoded)
    except (json.JSONDecodeError, RecursionError) as exc:
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


# -- the model, once per process ---------------------------------------------------------

_MODEL: Any = None


def _init_worker(bundle: str, precision: str | None, threads: int | None) -> None:
    # Workers are started with "spawn": the Rust tokenizer's thread pool deadlocks in a child
    # forked after use, so each process builds its own tokenizer and session.
    global _MODEL
    from .model import load

    _MODEL = load(bundle, precision=precision, threads=threads)


def _call(verb: str, texts: list[str], options: dict[str, Any]) -> list[Any]:
    fn = getattr(_MODEL, verb)
    out = fn(texts, **options)
    return list(out) if verb != "embed" else [row for row in out]


def _process_chunk(verb: str, texts: list[str], options: dict[str, Any]) -> list[tuple[Any, str | None]]:
    """Results for a chunk; a text the model refuses is isolated, the rest still run."""
    if not texts:
        return []
    try:
        return [(r, None) for r in _call(verb, texts, options)]
    except InputError:
        pass
    out: list[tuple[Any, str | None]] = []
    for text in texts:
        try:
            out.append((_call(verb, [text], options)[0], None))
        except InputError as exc:
            out.append((None, str(exc).replace("text 0", "the text")))
    return out


# -- the job ------------------------------------------------------------------------------


def _detect_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "jsonl" if path.endswith((".jsonl", ".json", ".ndjson")) or path == "-" else "text"


def _signature(cfg: JobConfig, fmt: str) -> str:
    st = os.stat(cfg.input)
    manifest = (Path(cfg.bundle) / "manifest.json").read_bytes()
    parts = [cfg.task, fmt, cfg.text_field, str(cfg.precision), json.dumps(cfg.extra, sort_keys=True),
             str(Path(cfg.input).resolve()), str(st.st_size), str(st.st_mtime_ns), hashlib.sha256(manifest).hexdigest()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def run_job(cfg: JobConfig) -> int:
    """Run (or resume) a batch job; returns the process exit code."""
    if cfg.task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, not {cfg.task!r}")
    verb = TASKS[cfg.task]
    fmt = _detect_format(cfg.input, cfg.input_format)
    if fmt not in ("jsonl", "text"):
        raise InputError(f"input format must be auto, jsonl or text, not {cfg.input_format!r}")
    if cfg.npy and verb != "embed":
        raise InputError("--npy is for the embed task")
    if cfg.workers < 1 or cfg.chunk < 1:
        raise InputError("--workers and --chunk must be positive")
    options: dict[str, Any] = dict(cfg.extra)
    if cfg.top_k is not None:
        options["top_k"] = cfg.top_k

    from .bundle import read_manifest
    from .session import available_cpus

    read_manifest(cfg.bundle).require(verb)  # fail before reading any input
    streaming = cfg.input == "-" or cfg.output == "-"
    out_path = None if cfg.output == "-" else Path(cfg.output)
    partial = out_path.with_name(out_path.name + ".partial") if out_path else None
    state_path = out_path.with_name(out_path.name + ".state") if out_path else None
    errors_path = Path(cfg.errors) if cfg.errors else (out_path.with_name(out_path.name + ".errors.jsonl") if out_path else None)
    errors_partial = errors_path.with_name(errors_path.name + ".partial") if errors_path else None
    npy_raw = Path(cfg.npy + ".raw") if cfg.npy else None

    state = {"signature": None, "input_offset": 0, "line": 0, "output_bytes": 0, "errors_bytes": 0, "rows": 0, "errors": 0, "dim": None}
    if not streaming:
        signature = _signature(cfg, fmt)
        if cfg.resume and state_path and state_path.exists():
            saved = json.loads(state_path.read_text())
            if saved.get("signature") == signature:
                state = saved
            else:
                print("flare-onnx: the input, bundle or options changed since the last run: starting over", file=sys.stderr)
        state["signature"] = signature

    # Open outputs, cutting off anything written after the last recorded checkpoint.
    def reopen(path: Path | None, size: int) -> IO[bytes] | None:
        if path is None:
            return None
        f = open(path, "r+b" if path.exists() else "w+b")
        f.truncate(size)
        f.seek(size)
        return f

    if streaming:
        out_f: IO[bytes] = sys.stdout.buffer if cfg.output == "-" else open(cfg.output, "wb")
    else:
        out_f = reopen(partial, state["output_bytes"])  # type: ignore[assignment]
    err_f = reopen(errors_partial, state["errors_bytes"]) if not streaming else (open(errors_path, "wb") if errors_path else None)
    npy_f = reopen(npy_raw, state["rows"] * 4 * (state["dim"] or 0)) if npy_raw else None

    in_f: IO[bytes] = sys.stdin.buffer if cfg.input == "-" else open(cfg.input, "rb")
    if state["input_offset"]:
        in_f.seek(state["input_offset"])

    cpus = available_cpus()
    threads = cfg.threads or max(1, cpus // cfg.workers)
    progress = _progress(cfg.progress, cfg.input, state["line"])
    pool = None
    if cfg.workers > 1:
        import multiprocessing

        pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(cfg.bundle, cfg.precision, threads))
    else:
        _init_worker(cfg.bundle, cfg.precision, threads)

    pending: deque[tuple[int, list[bytes], int, list[tuple[str | None, dict[str, Any], str | None]], Future | list]] = deque()
    try:
        for first, raws, consumed in _chunks(in_f, state["line"], cfg.chunk):
            parsed = [parse_record(raw, line=first + i + 1, fmt=fmt, text_field=cfg.text_field) for i, raw in enumerate(raws)]
            texts = [t for t, _, e in parsed if e is None and t is not None]
            work: Future | list = pool.submit(_process_chunk, verb, texts, options) if pool else _process_chunk(verb, texts, options)
            pending.append((first, raws, consumed, parsed, work))
            while pending and (len(pending) > 2 * cfg.workers or not pool):
                _finish(pending.popleft(), verb, out_f, err_f, npy_f, state, state_path, progress, streaming)
        while pending:
            _finish(pending.popleft(), verb, out_f, err_f, npy_f, state, state_path, progress, streaming)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if progress:
            progress.close()
        if in_f is not sys.stdin.buffer:
            in_f.close()
        for f in (out_f, err_f, npy_f):
            if f is not None and f is not sys.stdout.buffer:
                f.close()
            elif f is sys.stdout.buffer:
                f.flush()

    if not streaming:
        assert out_path and partial and state_path
        if npy_raw and cfg.npy:
            _finalize_npy(npy_raw, Path(cfg.npy), state["rows"], state["dim"] or 0)
        os.replace(partial, out_path)
        if errors_partial and errors_path:
            os.replace(errors_partial, errors_path)
        state_path.unlink(missing_ok=True)
    if state["errors"]:
        where = errors_path if errors_path else "stderr"
        print(f"flare-onnx: {state['errors']} record(s) could not be processed; see {where}", file=sys.stderr)
        return EXIT_RECORD_ERRORS
    return EXIT_OK


def _finish(item: Any, verb: str, out_f: IO[bytes], err_f: IO[bytes] | None, npy_f: IO[bytes] | None,
            state: dict[str, Any], state_path: Path | None, progress: Any, streaming: bool) -> None:
    first, raws, consumed, parsed, work = item
    results = work.result() if isinstance(work, Future) else work
    it = iter(results)
    out_lines, err_lines = [], []
    vectors = []
    for i, (text, carried, error) in enumerate(parsed):
        line = first + i + 1
        if error is None:
            value, error = next(it)
        if error is not None:
            err_lines.append(json.dumps({"line": line, "error": error}, ensure_ascii=False))
            continue
        record = dict(carried) if carried else {"text": text}
        record["line"] = line
        if verb == "embed" and npy_f is not None:
            record["row"] = state["rows"] + len(vectors)
            vectors.append(np.asarray(value, dtype=np.float32))
        else:
            record[RESULT_KEY[verb]] = value.tolist() if verb == "embed" else to_jsonable(value)
        out_lines.append(json.dumps(record, ensure_ascii=False))
    out_bytes = "".join(line + "\n" for line in out_lines).encode("utf-8")
    out_f.write(out_bytes)
    out_f.flush()
    state["output_bytes"] += len(out_bytes)
    if err_lines:
        err_bytes = "".join(line + "\n" for line in err_lines).encode("utf-8")
        if err_f is not None:
            err_f.write(err_bytes)
            err_f.flush()
            state["errors_bytes"] += len(err_bytes)
        else:
            sys.stderr.write(err_bytes.decode("utf-8"))
        state["errors"] += len(err_lines)
    if vectors and npy_f is not None:
        block = np.stack(vectors)
        state["dim"] = int(block.shape[1])
        npy_f.write(block.tobytes())
        npy_f.flush()
        state["rows"] += len(vectors)
    state["input_offset"] += consumed
    state["line"] = first + len(raws)
    if not streaming and state_path is not None:
        for f in (out_f, err_f, npy_f):
            if f is not None:
                os.fsync(f.fileno())
        _write_state(state_path, state)
    if progress:
        progress.update(len(raws))


def _finalize_npy(raw: Path, dest: Path, rows: int, dim: int) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
    with open(tmp, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, header)
        while block := src.read(1 << 20):
            out.write(block)
    os.replace(tmp, dest)
    raw.unlink()


def _progress(enabled: bool | None, path: str, done: int) -> Any:
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # counting lines reads the file once more: only worth it when a bar shows the ETA
    return tqdm(total=_count_lines(path), initial=done, unit="rec", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

