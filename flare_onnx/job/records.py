"""Records: one input line -> a text and the fields to carry, or the reason it is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from ..errors import InputError
from .config import FORMATS, MAX_RECORD_BYTES

__all__ = ["parse_record", "detect_format", "read_chunks", "result_line", "error_line"]


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


def result_line(text: str | None, carried: dict[str, Any], line: int, result: dict[str, Any]) -> str:
    """The output line of one record: its fields (or its text), its line number, its result
    (``TaskSpec.record``'s, or the ``.npy`` row) — what every file-job engine writes."""
    record: dict[str, Any] = dict(carried) if carried else {"text": text}
    record["line"] = line
    record.update(result)
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


def error_line(line: int, error: str) -> str:
    """The errors file's line for a refused record."""
    return json.dumps({"line": line, "error": error}, ensure_ascii=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def detect_format(path: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"input format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    return "jsonl" if path.endswith((".jsonl", ".json", ".ndjson")) or path == "-" else "text"


def read_chunks(stream: IO[bytes], start_line: int, size: int) -> Iterator[tuple[int, list[bytes], int]]:
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
