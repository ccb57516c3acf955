"""The writer: results appended to ``OUTPUT.partial`` (bad records to the errors file, vectors to
the ``.npy``), cut back to the checkpoint on resume, and an idempotent finish."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import InputError
from .config import JobConfig

__all__ = ["Outputs", "finalize_npy"]


class Outputs:
    """The output, errors and vector files of a job, written chunk by chunk."""

    def __init__(self, cfg: JobConfig, state: dict[str, Any]) -> None:
        self.streaming = cfg.output == "-"
        self.out_path = None if self.streaming else Path(cfg.output)
        self.errors_path = (
            Path(cfg.errors)
            if cfg.errors
            else (self.out_path.with_name(self.out_path.name + ".errors.jsonl") if self.out_path else None)
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
                finalize_npy(raw, self.npy_path, self.state["rows"], self.state["dim"] or 0)
        for path in (self.out_path, self.errors_path):
            if path is not None and self._partial(path).exists():
                os.replace(self._partial(path), path)
        if self.errors_path is not None and not self.state["errors_bytes"]:
            self.errors_path.unlink(missing_ok=True)  # an earlier run's errors are not this run's


def finalize_npy(raw: Path, dest: Path, rows: int, dim: int) -> None:
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
