"""Ray Data integration: callable classes for ``Dataset.map_batches``, one per task.

Each actor loads the bundle once and runs with its own thread count; batches come and go in
the format Ray Data uses (``numpy`` dicts, ``pandas`` DataFrames or ``pyarrow`` Tables), and
every other column is kept. Structured results (masks, tags, labels) are JSON strings, so any
writer (JSONL, Parquet) takes them; embeddings are float32 vectors.

The bundle travels through Ray's object store (:func:`share_bundle`): the driver reads it once,
and the first actor on each node writes it to a node-local cache that later actors on that
node reuse, so no node fetches it twice and no shared filesystem is needed.

    import ray, flare_onnx.ray_data as frd
    ds = ray.data.read_json("s3://bucket/news/", num_cpus=0)
    ref = frd.share_bundle("flare-it-onnx")
    ds = ds.map_batches(frd.Embed, fn_constructor_kwargs={"bundle": ref, "threads": 1},
                        concurrency=8, num_cpus=1, batch_size=256)
    ds.write_parquet("s3://bucket/news-embeddings/")

Needs ``pip install ".[ray]"`` (from a clone).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .engine import MANIFEST_NAME, cache_root, get_task, load, parse_load_options, read_manifest, to_jsonable
from .errors import BundleError, InputError
from .job import EXIT_RECORD_ERRORS

__all__ = ["FillMask", "Embed", "Tag", "Classify", "share_bundle", "materialize", "PREDICTORS"]


def share_bundle(path: str | Path) -> Any:
    """Put a bundle's files in Ray's object store; pass the result as ``bundle=``."""
    import ray

    root = Path(path)
    manifest = read_manifest(root)
    files = {name: (root / name).read_bytes() for name in [MANIFEST_NAME, *manifest.files]}
    return ray.put({"digest": hashlib.sha256(files[MANIFEST_NAME]).hexdigest()[:16], "files": files})


def materialize(bundle: Any) -> str:
    """A local directory for ``bundle``: a path as it is, or a shared bundle in the node cache."""
    if isinstance(bundle, (str, Path)):
        return str(bundle)
    import ray

    if isinstance(bundle, ray.ObjectRef):
        bundle = ray.get(bundle)
    if not isinstance(bundle, dict) or "files" not in bundle:
        raise InputError("bundle must be a path or the result of share_bundle()")
    cache = cache_root() / "shared-bundles"  # node-local, beside load()'s exports
    target = cache / bundle["digest"]
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{bundle['digest']}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one actor per node writes; the others wait, then reuse
        if not (target / MANIFEST_NAME).exists():
            tmp = Path(tempfile.mkdtemp(dir=cache))
            for name, data in bundle["files"].items():
                if Path(name).name != name:
                    raise BundleError(f"unsafe file name in a shared bundle: {name!r}")
                (tmp / name).write_bytes(data)
            os.replace(tmp, target)
    return str(target)


def _column_values(batch: Any, column: str) -> list[Any]:
    """A column's values in any batch format, or [] when the batch has no such column."""
    names = batch.keys() if isinstance(batch, dict) else getattr(batch, "column_names", None) or list(batch.columns)
    if column not in names:
        return []
    values = batch[column]
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


class _JsonlRecords:
    """``map_batches`` step: raw JSONL lines to their fields, through the local job's record
    parser; a line it refuses carries its reason and its first 200 characters."""

    def __init__(self, text_field: str = "text") -> None:
        self.text_field = text_field

    def __call__(self, batch: Any) -> Any:
        import pandas as pd  # type: ignore[import-untyped]

        from .job import parse_record

        rows = []
        for raw in batch["text"]:
            text, carried, error = parse_record(str(raw).encode("utf-8"), fmt="jsonl", text_field=self.text_field)
            wide = [k for k, v in carried.items() if isinstance(v, int) and not -(1 << 63) <= v < (1 << 63)]
            if error is None and wide:
                error = (
                    f"field {wide[0]!r} holds an integer beyond 64 bits, which Ray Data cannot carry (run it locally)"
                )
            row: dict[str, Any] = dict(carried) if error is None else {}
            row[self.text_field] = text
            row[_ERRORS] = None if error is None else f"{error} (record: {str(raw)[:200]})"
            rows.append(row)
        # object columns with None in the gaps (a refused record, a field some records lack): an
        # integer field stays an integer, not a float with NaN
        names = list(dict.fromkeys(k for row in rows for k in row))
        return pd.DataFrame({k: pd.Series([row.get(k) for row in rows], dtype=object) for k in names})


def _texts(batch: Any, column: str) -> list[Any]:
    # no str() here: a missing text must reach the model's check (InputError), not become "None"
    values = batch[column]
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


class _Predictor:
    task = ""

    def __init__(
        self,
        bundle: Any,
        *,
        text_column: str = "text",
        output_column: str | None = None,
        threads: int = 1,
        options: dict[str, Any] | None = None,
        model_options: dict[str, Any] | None = None,
        errors_column: str | None = None,
    ) -> None:
        """Load the bundle once per actor.

        Args:
            options: the task's options (registry names, as on every surface).
            model_options: :func:`flare_onnx.load`'s (precision, spin, batch budgets);
                ``threads`` defaults to 1 per actor, Ray's unit of CPU.
            errors_column: when given, a row the model refuses (an empty or non-string text,
                a text over a limit) gets its reason in this column and a placeholder result,
                and the others go on, as in the local file job; by default it raises.
        """
        spec = get_task(self.task)
        self.options = spec.resolve(options)  # once per actor: every batch takes these
        model_opts = parse_load_options({"threads": threads, "workload": "bulk", **(model_options or {})})
        self.model = load(materialize(bundle), **model_opts)
        print(f"flare-onnx: engine: {self.model.backend} ({self.model.backend_choice})", file=sys.stderr)
        self.spec = self.model.manifest.require(spec.name)
        self.text_column = text_column
        self.output = output_column or spec.result_key
        self.errors_column = errors_column

    def _predict(self, texts: list[Any], prior: list[Any]) -> tuple[list[Any], list[str | None]]:
        """Results, and the reason for each text refused (``errors_column`` only): by the record
        parser before (``prior``), or by the model."""
        if self.errors_column is None:
            return self.model.predict(self.spec.name, texts, self.options), [None] * len(texts)
        errors: list[str | None] = [e if isinstance(e, str) else None for e in prior]
        todo = [i for i, e in enumerate(errors) if e is None]
        results: list[Any] = [None] * len(texts)
        outcomes = self.model.predict_each(self.spec.name, [texts[i] for i in todo], self.options) if todo else []
        for i, outcome in zip(todo, outcomes):  # the refused ones isolated by the engine, as in the local job
            results[i], errors[i] = outcome
        return results, errors

    def _column(self, results: list[Any]) -> Any:
        if self.spec.name == "embed":
            size = self.model.manifest.hidden_size
            return np.stack([r if r is not None else np.zeros(size, np.float32) for r in results])
        return np.array([json.dumps(to_jsonable(r), ensure_ascii=False) for r in results], dtype=object)

    def __call__(self, batch: Any) -> Any:
        texts = _texts(batch, self.text_column)
        if not texts:
            return batch
        prior = _column_values(batch, self.errors_column) if self.errors_column else []
        results, errors = self._predict(texts, prior or [None] * len(texts))
        columns = {self.output: self._column(results)}
        if self.errors_column is not None:
            columns[self.errors_column] = np.array(errors, dtype=object)
        if isinstance(batch, dict):  # numpy format
            return {**batch, **columns}
        if hasattr(batch, "append_column"):  # pyarrow.Table
            import pyarrow as pa

            if self.errors_column in batch.column_names:
                batch = batch.drop_columns([self.errors_column])
            for name, values in columns.items():
                kind = None if name == self.output and self.spec.name == "embed" else pa.string()
                batch = batch.append_column(name, pa.array(list(values), type=kind))
            return batch
        frame = batch.copy()  # pandas.DataFrame
        for name, values in columns.items():
            frame[name] = list(values)
        return frame


class FillMask(_Predictor):
    """``map_batches`` class: top-k candidates for each ``<mask>`` (JSON per row, column ``masks``)."""

    task = "fill-mask"


class Embed(_Predictor):
    """``map_batches`` class: float32 sentence embeddings (column ``embedding``)."""

    task = "embed"


class Tag(_Predictor):
    """``map_batches`` class: word labels and entities (JSON per row, column ``tags``)."""

    task = "tag"


class Classify(_Predictor):
    """``map_batches`` class: text labels (JSON per row, column ``labels``)."""

    task = "classify"


PREDICTORS: dict[str, type[_Predictor]] = {cls.task: cls for cls in (FillMask, Embed, Tag, Classify)}


def _read(input_path: str, text_column: str) -> Any:
    """The input as a Ray dataset: Parquet, JSON lines, or one text a line. Reads take no CPU
    slot (see run_ray_job)."""
    import ray

    if input_path.endswith(".parquet") or (Path(input_path).is_dir() and any(Path(input_path).glob("*.parquet"))):
        return ray.data.read_parquet(input_path, num_cpus=0)
    if input_path.endswith((".jsonl", ".json", ".ndjson")):
        # lines parsed by the local job's record parser, not Ray's JSON reader, which types a
        # column from its first rows and fails the whole job on one {"text": 42}
        return ray.data.read_text(input_path, num_cpus=0).map_batches(
            _JsonlRecords,
            fn_constructor_kwargs={"text_field": text_column},
            batch_format="pandas",
            num_cpus=0,
            concurrency=1,
        )
    ds = ray.data.read_text(input_path, num_cpus=0)
    return ds.rename_columns({"text": text_column}) if text_column != "text" else ds


def run_ray_job(
    task: str,
    bundle: str,
    input_path: str,
    output_path: str,
    *,
    address: str | None = None,
    actors: int | None = None,
    batch_size: int = 256,
    text_column: str = "text",
    options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    replace: bool = False,
) -> int:
    """``flare-onnx run ... --engine ray``: read, predict and write with Ray Data.

    Runs in the caller's Ray session when there is one (``ray.init()`` called before, as in a
    notebook or a driver that runs several jobs), and leaves it up; otherwise it starts Ray
    (at ``address``, or a local one) and shuts it down when done.

    Args:
        replace: replace an existing output (``--restart``); without it an existing output is
            refused rather than added to (Ray writes new files beside the old ones).
    """
    import ray

    spec = get_task(task)
    options = spec.parse_options(options)
    model_options = parse_load_options(dict(model_options or {}))
    threads = model_options.pop("threads", None) or 1
    read_manifest(bundle).require(spec.name)
    _check_paths(input_path, output_path, replace=replace)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        # Reads and writes are I/O: they take no CPU slot, or on a small node the actors would
        # hold every CPU and the reads could never be scheduled (a deadlock seen on 2 CPUs).
        io: dict[str, Any] = {"num_cpus": 0}
        cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
        predictor = {"bundle": share_bundle(bundle), "text_column": text_column, "threads": threads,
                     "options": options, "model_options": model_options, "errors_column": _ERRORS}  # fmt: skip
        ds = _predicted(_read(input_path, text_column), spec.name, predictor, actors or max(1, cpus // threads),
                        batch_size)  # fmt: skip
        refused = _write_outputs(ds, output_path, spec.result_key, io)
    finally:
        if started:
            ray.shutdown()
    if refused:
        print(f"flare-onnx: {refused} record(s) could not be processed; see {output_path}.errors", file=sys.stderr)
        return EXIT_RECORD_ERRORS
    return 0


_ERRORS = "_flare_onnx_error"


def _predicted(ds: Any, task: str, predictor: dict[str, Any], actors: int, batch_size: int) -> Any:
    """``ds`` through ``actors`` copies of the task's predictor (built from ``predictor``, each
    taking its ``threads`` CPUs), materialized: read and predicted once, then written in two parts."""
    return ds.map_batches(
        PREDICTORS[task],
        fn_constructor_kwargs=predictor,
        concurrency=actors,
        num_cpus=predictor["threads"],
        batch_size=batch_size,
        batch_format="pyarrow",  # numpy and pandas batches turn an integer column with gaps into floats
    ).materialize()


def _check_paths(input_path: str, output_path: str, *, replace: bool) -> None:
    """Files only (Ray reads and writes folders of parts, not a stream), and no output added
    to an earlier run's."""
    if "-" in (input_path, output_path):
        raise InputError("--engine ray reads and writes files: give -i and -o paths, not - (the local engine streams)")
    if not Path(input_path).exists():
        raise InputError(f"the input {input_path!r} does not exist")
    for path in (Path(output_path), Path(output_path + ".errors")):
        if path.exists() and replace:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif path.exists():
            raise InputError(
                f"the output {str(path)!r} exists; run again with --restart to replace it, or choose another output"
            )


def _write_outputs(ds: Any, output_path: str, result_key: str, io: dict[str, Any]) -> int:
    """The results to ``output_path``, refused records (their fields and the reason) to
    ``output_path.errors``, as the local job splits them; the number refused."""
    good = ds.filter(lambda row: row[_ERRORS] is None).drop_columns([_ERRORS])
    bad = ds.filter(lambda row: row[_ERRORS] is not None).drop_columns([result_key])
    refused = int(bad.count())
    write = "write_json" if output_path.endswith((".jsonl", ".json")) else "write_parquet"
    getattr(good, write)(output_path, ray_remote_args=io)
    if refused:
        bad.rename_columns({_ERRORS: "error"}).write_json(output_path + ".errors", ray_remote_args=io)
    return refused
