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

Needs ``pip install "flare-onnx[ray]"``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._json import to_jsonable
from .bundle import MANIFEST_NAME, read_manifest
from .errors import BundleError, InputError
from .model import load

__all__ = ["FillMask", "Embed", "Tag", "Classify", "share_bundle", "materialize", "PREDICTORS"]

CACHE = Path(os.environ.get("FLARE_ONNX_CACHE", Path(tempfile.gettempdir()) / "flare-onnx-bundles"))


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
    target = CACHE / bundle["digest"]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{bundle['digest']}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one actor per node writes; the others wait, then reuse
        if not (target / MANIFEST_NAME).exists():
            tmp = Path(tempfile.mkdtemp(dir=CACHE))
            for name, data in bundle["files"].items():
                if Path(name).name != name:
                    raise BundleError(f"unsafe file name in a shared bundle: {name!r}")
                (tmp / name).write_bytes(data)
            os.replace(tmp, target)
    return str(target)


def _texts(batch: Any, column: str) -> list[Any]:
    # no str() here: a missing text must reach the model's check (InputError), not become "None"
    values = batch[column]
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


class _Predictor:
    verb = ""
    output_column = ""

    def __init__(
        self,
        bundle: Any,
        *,
        text_column: str = "text",
        output_column: str | None = None,
        precision: str | None = None,
        threads: int = 1,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.model = load(materialize(bundle), precision=precision, threads=threads)
        self.model.manifest.require(self.verb)
        self.text_column = text_column
        self.output = output_column or self.output_column
        self.options = dict(options or {})

    def _results(self, texts: list[str]) -> Any:
        out = getattr(self.model, self.verb)(texts, **self.options)
        if self.verb == "embed":
            return out
        return np.array([json.dumps(to_jsonable(r), ensure_ascii=False) for r in out], dtype=object)

    def __call__(self, batch: Any) -> Any:
        texts = _texts(batch, self.text_column)
        if not texts:
            return batch
        results = self._results(texts)
        if isinstance(batch, dict):  # numpy format
            out = dict(batch)
            out[self.output] = results
            return out
        if hasattr(batch, "append_column"):  # pyarrow.Table
            import pyarrow as pa

            column = pa.array(list(results)) if self.verb == "embed" else pa.array(list(results), type=pa.string())
            return batch.append_column(self.output, column)
        frame = batch.copy()  # pandas.DataFrame
        frame[self.output] = list(results)
        return frame


class FillMask(_Predictor):
    """``map_batches`` class: top-k candidates for each ``<mask>`` (JSON per row)."""

    verb, output_column = "fill_mask", "masks"


class Embed(_Predictor):
    """``map_batches`` class: float32 sentence embeddings."""

    verb, output_column = "embed", "embedding"


class Tag(_Predictor):
    """``map_batches`` class: word labels and entities (JSON per row)."""

    verb, output_column = "tag", "result"


class Classify(_Predictor):
    """``map_batches`` class: text labels (JSON per row)."""

    verb, output_column = "classify", "labels"


PREDICTORS = {"fill-mask": FillMask, "embed": Embed, "tag": Tag, "classify": Classify}


def run_ray_job(
    task: str,
    bundle: str,
    input_path: str,
    output_path: str,
    *,
    address: str | None = None,
    actors: int | None = None,
    threads: int = 1,
    batch_size: int = 256,
    text_column: str = "text",
    precision: str | None = None,
    options: dict[str, Any] | None = None,
) -> int:
    """``flare-onnx run ... --engine ray``: read, predict and write with Ray Data."""
    import ray

    if task not in PREDICTORS:
        raise InputError(f"task must be one of {', '.join(PREDICTORS)}, not {task!r}")
    read_manifest(bundle).require(PREDICTORS[task].verb)
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    try:
        # Reads and writes are I/O: they take no CPU slot, or on a small node the actors would
        # hold every CPU and the reads could never be scheduled (a deadlock seen on 2 CPUs).
        io = {"num_cpus": 0}
        if input_path.endswith(".parquet") or (Path(input_path).is_dir() and any(Path(input_path).glob("*.parquet"))):
            ds = ray.data.read_parquet(input_path, **io)
        elif input_path.endswith((".jsonl", ".json", ".ndjson")):
            ds = ray.data.read_json(input_path, **io)
        else:
            ds = ray.data.read_text(input_path, **io)
            if text_column != "text":
                ds = ds.rename_columns({"text": text_column})
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = actors or max(1, cpus // threads)
        ds = ds.map_batches(
            PREDICTORS[task],
            fn_constructor_kwargs={"bundle": share_bundle(bundle), "text_column": text_column, "threads": threads,
                                   "precision": precision, "options": options or {}},
            concurrency=n,
            num_cpus=threads,
            batch_size=batch_size,
        )
        if output_path.endswith((".jsonl", ".json")):
            ds.write_json(output_path, ray_remote_args=io)
        else:
            ds.write_parquet(output_path, ray_remote_args=io)
    finally:
        ray.shutdown()
    return 0
