"""Spark: flare-onnx on a cluster's Python workers (``pip install ".[spark]"``, or the
cluster's own PySpark on Databricks, EMR and Dataproc).

Two entry points:

* :func:`predict` adds a result column and an error column to any DataFrame with a text
  column (``mapInPandas``): embeddings as ``array<float>``, other tasks as JSON strings.
* :func:`run_spark_job` is ``flare-onnx run`` on Spark: the same input files (JSON lines or
  plain text), the same record parser, the same output records (each record's fields, its
  ``line`` and its result) in part files under the output folder, and the refused records with
  their reasons under ``OUTPUT.errors``. It reads the input in the local job's chunks of lines
  (``chunk``) and runs each chunk as one request, so its results are the local job's with as
  many threads (one by default, as each Spark task runs), byte for byte, however Spark
  partitions the work.

Each Python worker loads the bundle once and reuses it for every batch it is given; a text the
model refuses becomes an error row, never a failed stage. The bundle path must be readable by
every worker: a Unity Catalog Volume on Databricks (``/Volumes/...``), a mounted or shared
filesystem elsewhere (docs/integrations.md).

    from flare_onnx.spark import predict
    df = spark.read.parquet("/Volumes/main/news/articles")
    out = predict(df, "/Volumes/main/models/flare-it-onnx", "embed", text_column="body")
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .engine import FlareModel, get_task, load, parse_load_options, read_manifest, to_jsonable
from .errors import InputError
from .job import EXIT_OK, EXIT_RECORD_ERRORS, detect_format, error_line, parse_record, result_line

__all__ = ["predict", "run_spark_job"]


@functools.lru_cache(maxsize=4)
def _model(bundle: str, model_options: tuple[tuple[str, Any], ...]) -> FlareModel:
    """The model of this Python worker, loaded by its first batch and kept for the next ones
    (Spark reuses its Python workers across tasks)."""
    return load(bundle, **dict(model_options))


def _prepare(
    bundle: str | Path, task: str, options: dict[str, Any] | None, model_options: dict[str, Any] | None
) -> tuple[str, str, dict[str, Any], tuple[tuple[str, Any], ...]]:
    """Checked on the driver, before any worker starts: the task, its options, the load options
    (one thread a task by default, Spark's unit of CPU) and the bundle's manifest."""
    spec = get_task(task)
    opts = spec.parse_options(options)
    model_opts = parse_load_options({"threads": 1, "workload": "bulk", **(model_options or {})})
    path = str(Path(bundle).resolve()) if Path(bundle).exists() else str(bundle)
    read_manifest(path).require(spec.name)
    return path, spec.name, opts, tuple(sorted(model_opts.items()))


def predict(
    df: Any,
    bundle: str | Path,
    task: str,
    *,
    text_column: str = "text",
    output_column: str | None = None,
    errors_column: str = "error",
    options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
) -> Any:
    """``df`` with the task's result in ``output_column`` (default: the task's result key,
    ``embedding``, ``tags``…) and, in ``errors_column``, why a text was refused (null for the
    others, whose results are null where refused).

    Args:
        options: the task's options (registry names, as on every surface).
        model_options: :func:`flare_onnx.load`'s; ``threads`` defaults to 1 per Spark task.
    """
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    path, name, opts, model_opts = _prepare(bundle, task, options, model_options)
    if text_column not in df.columns:
        raise InputError(f"the DataFrame has no column {text_column!r}; its columns: {', '.join(df.columns)}")
    output = output_column or get_task(name).result_key
    for column in (output, errors_column):
        if column in df.columns:
            raise InputError(f"the DataFrame already has a column {column!r}; choose another name")
    kind = ArrayType(FloatType()) if name == "embed" else StringType()
    schema = StructType([*df.schema.fields, StructField(output, kind), StructField(errors_column, StringType())])

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import json

        model = _model(path, model_opts)
        for frame in batches:
            column = frame[text_column].astype(object)
            texts = column.where(column.notna(), None).tolist()  # a null text is None (pandas says NaN)
            outcomes = model.predict_each(name, texts, opts) if texts else []
            if name == "embed":
                results = [None if o.error else o.result.tolist() for o in outcomes]
            else:
                results = [None if o.error else json.dumps(to_jsonable(o.result), ensure_ascii=False) for o in outcomes]
            yield frame.assign(**{output: results, errors_column: [o.error for o in outcomes]})

    return df.mapInPandas(run, schema)


def _chunk_records(
    frame: Any,
    *,
    path: str,
    task: str,
    options: dict[str, Any],
    model_options: tuple[tuple[str, Any], ...],
    fmt: str,
    text_field: str,
) -> Any:
    """One chunk of input lines (``line``, ``value``) -> its output lines (``line``, ``record``,
    ``refused``), parsed, predicted as one request and written as the local job does."""
    import pandas as pd  # type: ignore[import-untyped]

    parsed = []
    for line, value in zip(*(frame.sort_values("line")[c].tolist() for c in ("line", "value"))):
        raw = value.encode("utf-8", "surrogatepass")
        if line == 1:  # a file saved with a UTF-8 byte-order mark keeps its first record
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        parsed.append((int(line), *parse_record(raw, fmt=fmt, text_field=text_field)))
    texts = [t for _, t, _, e in parsed if e is None and t is not None]
    outcomes = iter(_model(path, model_options).predict_each(task, texts, options) if texts else [])
    spec, rows = get_task(task), []
    for line, text, carried, error in parsed:
        if error is None and text is None:
            continue  # a blank line of a text file, skipped as the local job skips it
        result = None
        if error is None:
            result, error = next(outcomes)
        if error is None:
            rows.append((line, result_line(text, carried, line, spec.record(result)), False))
        else:
            rows.append((line, error_line(line, error), True))
    return pd.DataFrame(rows, columns=["line", "record", "refused"])


def run_spark_job(
    spark: Any,
    task: str,
    bundle: str | Path,
    input_path: str,
    output_path: str,
    *,
    text_field: str = "text",
    input_format: str = "auto",
    chunk: int = 256,
    options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    replace: bool = False,
) -> int:
    """``flare-onnx run`` on Spark: results to ``output_path`` (a folder of JSON-lines part
    files, records in input order), refused records to ``output_path + ".errors"``.

    Returns the local job's exit code: 0, or 3 when some records were refused.

    Spark reads text as UTF-8 and replaces invalid bytes, so a record the local job refuses as
    "invalid UTF-8" reaches the parser here with U+FFFD in it.
    """
    path, name, opts, model_opts = _prepare(bundle, task, options, model_options)
    fmt = detect_format(input_path, input_format)
    if chunk < 1:
        raise InputError(f"chunk must be at least 1, not {chunk}")
    run = functools.partial(
        _chunk_records, path=path, task=name, options=opts, model_options=model_opts, fmt=fmt, text_field=text_field
    )
    mode = "overwrite" if replace else "errorifexists"
    reader = spark.read.option("lineSep", "\n")  # lines as the local job splits them (a lone \r stays in its line)
    lines = reader.text(input_path).rdd.zipWithIndex().map(lambda p: (p[1] + 1, p[0][0], p[1] // chunk))
    done = (
        lines.toDF("line long, value string, chunk long")
        .groupBy("chunk")
        .applyInPandas(run, "line long, record string, refused boolean")
        .persist()
    )
    try:
        done.filter("not refused").orderBy("line").select("record").write.mode(mode).text(output_path)
        refused = done.filter("refused").count()
        if refused:
            done.filter("refused").orderBy("line").select("record").write.mode(mode).text(output_path + ".errors")
    finally:
        done.unpersist()
    return EXIT_RECORD_ERRORS if refused else EXIT_OK
