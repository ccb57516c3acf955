"""Bundle directories: the manifest schema, and verification of every file before use.

A bundle is a directory holding ``manifest.json``, ``tokenizer.json``, ``config.json`` and
one single-file ONNX graph per precision. The manifest records each file's sha256 and size;
:func:`open_bundle` reads each file once, checks it against the manifest and hands the
verified *bytes* to the caller, so what runs is exactly what was checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BundleError, InputError, TaskNotAvailableError
from ._onnx_scan import MalformedModel, has_external_data
from .options import TaskSpec
from .tasks import EXPORT_TASKS, get_task
from .tokenization import SpecialTokens, TextEncoder
from .tokenizer_check import check_tokenizer_json

__all__ = [
    "MODEL_NAME",
    "bundle_name",
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "PRECISIONS",
    "Manifest",
    "GraphSpec",
    "SpecialTokens",
    "VerifiedBundle",
    "open_bundle",
    "verify_bundle",
    "read_manifest",
    "file_record",
]

MANIFEST_NAME = "manifest.json"
#: what a Hugging Face model id looks like (``osiria/flare-it``): the one spelling of it
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: a served model's name: what goes into URLs (``/v1/models/{name}/...``), metrics and logs
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def bundle_name(bundle: str | Path) -> str:
    """The name a bundle is served under when given none: its folder's (or Hub id's) last
    part, made a :data:`MODEL_NAME`."""
    last = Path(str(bundle).rstrip("/\\")).name or "model"
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-._")[:64]
    return cleaned or "model"


FORMAT_NAME = "flare-onnx-bundle"
FORMAT_VERSION = 1
PRECISIONS = ("int8", "fp32")


def file_record(data: bytes) -> dict[str, Any]:
    """The manifest entry of one file: its sha256 and size."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle."""

    precision: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    backend: str = "onnxruntime"
    weights: str | None = None  # OpenVINO IR: the .bin beside the .xml
    optimized: bool = False  # stored as onnxruntime's optimizers leave it (export/optimize.py)


@dataclass(frozen=True)
class Manifest:
    """The parsed, structurally checked ``manifest.json``."""

    task: str
    tasks: tuple[str, ...]  # the registry tasks this bundle offers (flare_onnx.tasks)
    model_type: str
    hidden_size: int
    max_length: int
    labels: tuple[str, ...] | None
    special: SpecialTokens
    graphs: Mapping[str, GraphSpec]
    openvino: Mapping[str, GraphSpec]  # precision -> OpenVINO IR, when exported with --openvino
    files: Mapping[str, Mapping[str, Any]]
    prompts: Mapping[str, str]  # stored at export, by name (E5: query, passage)
    pooling: str  # embed's default pooling: the checkpoint's sentence-transformers setting, else mean
    normalize: bool  # embed's default: unit length (a sentence-transformers checkpoint without Normalize: off)
    problem_type: str | None  # a classifier's transformers problem_type (regression, multi-label)
    clean_up_tokenization_spaces: bool  # the tokenizer's setting, which the pipelines follow
    # what the exporter recorded, shown by `flare-onnx info` and /v1/info as they are
    source: Mapping[str, Any]
    verification: Mapping[str, Any]
    quantization: Mapping[str, Any]
    vocabulary: Mapping[str, Any]

    def require(self, task: str) -> TaskSpec:
        """The spec of ``task`` (a name, verb or alias), or :class:`TaskNotAvailableError`
        when this bundle does not offer it."""
        spec = get_task(task)
        if spec.name not in self.tasks:
            exports = " or ".join(f"--task {t}" for t, offered in EXPORT_TASKS.items() if spec.name in offered)
            raise TaskNotAvailableError(
                f"this bundle was exported for {self.task!r}, which offers {', '.join(self.tasks)}; "
                f"{spec.name} needs a bundle exported with {exports}"
            )
        return spec


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise BundleError(f"manifest.json: {where} has no {key!r}; re-export the bundle")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"manifest.json: {where}.{key} has the wrong type; re-export the bundle")
    return value


def _special_id(special: Mapping[str, Any], key: str) -> int:
    entry = _special(special, key)
    if entry is None:
        raise BundleError(f"manifest.json: model.special_tokens has no {key!r}; re-export the bundle")
    return entry[1]


def _special(special: Mapping[str, Any], key: str) -> tuple[str, int] | None:
    """A special-token entry ``[token, id]`` with a non-negative id, or None when absent."""
    entry = special.get(key)
    if entry is None:
        return None
    if (
        not isinstance(entry, list)
        or len(entry) != 2
        or not isinstance(entry[0], str)
        or not isinstance(entry[1], int)
        or isinstance(entry[1], bool)
        or entry[1] < 0
    ):
        raise BundleError(
            f"manifest.json: model.special_tokens.{key} must be [token, id], not {entry!r}; re-export the bundle"
        )
    return entry[0], entry[1]


def _special_tokens(special: Mapping[str, Any]) -> SpecialTokens:
    mask = _special(special, "mask")
    return SpecialTokens(
        cls_id=_special_id(special, "cls"),
        sep_id=_special_id(special, "sep"),
        pad_id=_special_id(special, "pad"),
        unk_id=_special_id(special, "unk"),
        mask_id=mask[1] if mask else None,
        mask_token=mask[0] if mask else None,
    )


def _bounded(value: int, name: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise BundleError(f"manifest.json: {name} is {value}, outside {low}..{high}; re-export the bundle")
    return value


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _files(raw: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    files: dict[str, Mapping[str, Any]] = _get(raw, "files", dict, "manifest")
    for name, record in files.items():
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("sha256"), str)
            or not _SHA256.fullmatch(record["sha256"])
            or not isinstance(record.get("size"), int)
            or isinstance(record.get("size"), bool)
            or record["size"] < 0
        ):
            raise BundleError(f"manifest.json: files.{name} must be {{sha256, size}}; re-export the bundle")
    return files


def _names(g: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = _get(g, key, list, where)
    if not value or not all(isinstance(v, str) for v in value):
        raise BundleError(f"manifest.json: {where}.{key} must be a list of names; re-export the bundle")
    return tuple(value)


def _optimized(g: Mapping[str, Any], where: str) -> bool:
    if "optimized" not in g:
        return False
    record = _get(g, "optimized", dict, where)
    if record.get("level") != "extended":
        raise BundleError(f"manifest.json: {where}.optimized.level must be 'extended'; re-export the bundle")
    return True


def _graphs(section: Mapping[str, Any], where: str, *, backend: str) -> dict[str, GraphSpec]:
    """The graphs of one backend by precision (an OpenVINO IR also names its weights file)."""
    out: dict[str, GraphSpec] = {}
    for precision, g in section.items():
        if precision not in PRECISIONS or not isinstance(g, dict):
            raise BundleError(
                f"manifest.json: {where}.{precision} is not a graph of a known precision; re-export the bundle"
            )
        file = _get(g, "file", str, f"{where}.{precision}")
        if not file.startswith(f"model.{precision}."):
            raise BundleError(
                f"manifest.json: {where}.{precision} names {file!r}, not the {precision} graph "
                f"(model.{precision}.*); the manifest does not belong to these files (re-export the bundle)"
            )
        out[precision] = GraphSpec(
            precision=precision,
            file=file,
            inputs=_names(g, "inputs", f"{where}.{precision}"),
            outputs=_names(g, "outputs", f"{where}.{precision}"),
            backend=backend,
            weights=_get(g, "weights", str, f"{where}.{precision}") if backend == "openvino" else None,
            optimized=_optimized(g, f"{where}.{precision}"),
        )
    return out


def parse_manifest(raw: Mapping[str, Any]) -> Manifest:
    """Check the manifest's structure and return it parsed."""
    if raw.get("format") != FORMAT_NAME:
        raise BundleError("manifest.json is not a flare-onnx bundle manifest")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {version!r} is not supported by this flare-onnx "
            f"(it reads version {FORMAT_VERSION}); re-export the bundle with this version"
        )
    task = _get(raw, "task", str, "manifest")
    if task not in EXPORT_TASKS:
        raise BundleError(f"manifest.json: unknown task {task!r}; this flare-onnx reads {', '.join(EXPORT_TASKS)}")
    model = _get(raw, "model", dict, "manifest")
    spec = _special_tokens(_get(model, "special_tokens", dict, "model"))
    if task == "fill-mask" and spec.mask_id is None:
        raise BundleError("manifest.json: a fill-mask bundle must record its mask token; re-export the bundle")
    labels = model.get("labels")
    if task in ("token-classification", "text-classification") and not labels:
        raise BundleError(f"manifest.json: a {task} bundle must list its labels; re-export the bundle")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise BundleError("manifest.json: model.labels must be a list of strings; re-export the bundle")
    graphs = _graphs(_get(raw, "graphs", dict, "manifest"), "graphs", backend="onnxruntime")
    if not graphs:
        raise BundleError("manifest.json lists no ONNX graph")
    openvino = raw.get("openvino") or {}
    if not isinstance(openvino, dict):
        raise BundleError("manifest.json: openvino must be an object; re-export the bundle")
    files = _files(raw)
    prompts = model.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise BundleError("manifest.json: model.prompts must map names to texts; re-export the bundle")
    problem = model.get("problem_type")
    pooling, normalize = _sentence(model.get("sentence") or {})
    return Manifest(
        task=task,
        tasks=EXPORT_TASKS[task],
        model_type=_get(model, "model_type", str, "model"),
        hidden_size=_bounded(_get(model, "hidden_size", int, "model"), "model.hidden_size", 1, 1 << 16),
        max_length=_bounded(_get(model, "max_length", int, "model"), "model.max_length", 8, 1 << 16),
        labels=tuple(labels) if labels else None,
        special=spec,
        graphs=graphs,
        openvino=_graphs(openvino, "openvino", backend="openvino"),
        files=files,
        prompts=prompts,
        pooling=pooling,
        normalize=normalize,
        problem_type=problem if isinstance(problem, str) else None,
        clean_up_tokenization_spaces=model.get("clean_up_tokenization_spaces") is True,
        source=_section(raw, "source"),
        verification=_section(raw, "verification"),
        quantization=_section(raw, "quantization"),
        vocabulary=_section(raw, "vocabulary") or {"pruned": False},
    )


#: the poolings embed runs (WindowPool); a bundle that asks for another is refused
POOLINGS = ("mean", "cls", "max")


def _sentence(sentence: Any) -> tuple[str, bool]:
    """The sentence settings read at export (model.sentence: pooling, normalize); a bundle
    exported before them pools by mean and normalizes, as every bundle did."""
    if not isinstance(sentence, dict):
        raise BundleError("manifest.json: model.sentence must be an object; re-export the bundle")
    pooling = sentence.get("pooling", "mean")
    normalize = sentence.get("normalize", True)
    if pooling not in POOLINGS or not isinstance(normalize, bool):
        raise BundleError(
            f"manifest.json: model.sentence has pooling {pooling!r} (one of {', '.join(POOLINGS)}) "
            f"and normalize {normalize!r} (true or false); re-export the bundle"
        )
    return pooling, normalize


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """An informational section of the manifest (an object, or nothing)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise BundleError(f"manifest.json: {key} must be an object; re-export the bundle")
    return value


#: the manifest is small; anything larger is not one
MAX_MANIFEST_BYTES = 1 << 20


def _read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` of them. A symbolic link, a FIFO, a device or
    a directory is refused without being opened for reading (a FIFO would block forever, a
    device would be read without end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise  # the callers say which file is missing and why it matters
    except OSError as exc:
        if path.is_symlink():
            raise BundleError(f"{path.name} in the bundle is a symbolic link; bundles hold plain files only") from exc
        raise BundleError(f"{path} cannot be read: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleError(f"{path.name} in the bundle is not a regular file; re-export the bundle")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise BundleError(
                f"{path.name} has {st.st_size} bytes, more than the {limit} expected; re-export the bundle"
            )
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path.name} grew while it was read; re-export the bundle")
    return data


def _not_a_bundle(path: Path) -> str:
    """Why ``path`` is not a bundle directory, and the fix that fits what it is."""
    if path.exists():
        return f"{str(path)!r} is a file, not a bundle directory (a bundle is the folder `flare-onnx export` writes)"
    text = str(path)
    if HUB_ID.fullmatch(text):
        return (
            f"there is no bundle directory {text!r}; if {text!r} is a Hugging Face model id, export it first "
            f"with `flare-onnx export {text} -o {path.name}-onnx` (needs the export extra and the Hub), "
            f"then load {path.name + '-onnx'!r}"
        )
    return f"bundle directory {text!r} does not exist; create one with `flare-onnx export MODEL -o {text}`"


def read_manifest(directory: str | Path) -> Manifest:
    """Read and parse ``manifest.json`` of a bundle directory (files are not hashed)."""
    path = Path(directory)
    if not path.is_dir():
        raise BundleError(_not_a_bundle(path))
    try:
        raw = json.loads(_read_regular(path / MANIFEST_NAME, MAX_MANIFEST_BYTES).decode("utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(
            f"{str(path)!r} has no {MANIFEST_NAME}: it is not a flare-onnx bundle "
            f"(create one with `flare-onnx export MODEL -o DIR`)"
        ) from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a number of thousands of digits
        raise BundleError(f"{path / MANIFEST_NAME} is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path / MANIFEST_NAME} is not a JSON object")
    return parse_manifest(raw)


def _read_verified(root: Path, name: str, record: Mapping[str, Any]) -> bytes:
    if Path(name).name != name:
        raise BundleError(f"manifest.json names {name!r}, which is not a plain file name")
    path = root / name
    expected = record.get("size"), record.get("sha256")
    try:
        data = _read_regular(path, record["size"])  # never more than the manifest says
    except FileNotFoundError as exc:
        raise BundleError(f"bundle file {name} is missing from {str(root)!r}; re-export the bundle") from exc
    actual = file_record(data)
    if actual["size"] != expected[0]:
        raise BundleError(
            f"bundle file {name} has {actual['size']} bytes but the manifest says {expected[0]}: "
            f"it was truncated or altered; re-export the bundle"
        )
    if actual["sha256"] != expected[1]:
        raise BundleError(
            f"bundle file {name} does not match its sha256 in the manifest: it was altered; re-export the bundle"
        )
    return data


def _check_graph_file(graph: bytes) -> None:
    """Refuse an ONNX graph that is not a protobuf message or that names external data."""
    try:
        external = has_external_data(graph)
    except MalformedModel as exc:
        raise BundleError(f"the ONNX graph is not a valid model file ({exc}); re-export the bundle") from exc
    if external:
        raise BundleError(
            "the ONNX graph references external data files; flare-onnx loads single-file "
            "graphs only (re-export the bundle without external data)"
        )


@dataclass(frozen=True)
class VerifiedBundle:
    """The verified contents of a bundle: manifest, tokenizer and one graph's bytes."""

    path: Path
    manifest: Manifest
    graph: GraphSpec
    graph_bytes: bytes
    tokenizer_json: str
    weights_bytes: bytes | None = None  # the OpenVINO IR's .bin


BACKENDS = ("onnxruntime", "openvino")


def open_bundle(directory: str | Path, *, precision: str | None = None, backend: str = "onnxruntime") -> VerifiedBundle:
    """Read a bundle and verify the files a session needs against the manifest (sizes and
    hashes), then what they hold: the tokenizer (:func:`check_tokenizer_json`) and an ONNX
    graph that names no external data.

    Args:
        directory: the bundle directory.
        precision: ``"int8"`` or ``"fp32"``; ``None`` takes INT8 when the bundle has it.
        backend: ``"onnxruntime"`` (the ONNX graphs) or ``"openvino"`` (the OpenVINO IR a
            bundle exported with ``--openvino`` carries).

    Raises:
        BundleError: the directory is not a bundle, a file is missing or altered, or what it
            holds is refused.
        InputError: ``precision`` or ``backend`` is not one the bundle has.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    graphs = manifest.graphs if backend == "onnxruntime" else manifest.openvino
    if not graphs:
        raise InputError(
            "this bundle has no OpenVINO IR; export it with `flare-onnx export ... --openvino` "
            "(or load it with backend='onnxruntime')"
        )
    if precision is None:
        precision = next(p for p in PRECISIONS if p in graphs)
    if precision not in graphs:
        if precision in PRECISIONS:
            raise InputError(f"this bundle has no {precision} graph for {backend}; it has {', '.join(graphs)}")
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    graph = graphs[precision]
    needed = [graph.file, "tokenizer.json"] + ([graph.weights] if graph.weights else [])
    for name in needed:
        if name not in manifest.files:
            raise BundleError(f"manifest.json has no checksum for {name}; re-export the bundle")
    graph_bytes = _read_verified(root, graph.file, manifest.files[graph.file])
    tokenizer = _read_verified(root, "tokenizer.json", manifest.files["tokenizer.json"])
    weights = _read_verified(root, graph.weights, manifest.files[graph.weights]) if graph.weights else None
    try:
        tokenizer_json = tokenizer.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"tokenizer.json is not UTF-8 ({exc.reason}); re-export the bundle") from exc
    check_tokenizer_json(tokenizer_json)
    if graph.backend == "onnxruntime":
        _check_graph_file(graph_bytes)
    return VerifiedBundle(
        path=root,
        manifest=manifest,
        graph=graph,
        graph_bytes=graph_bytes,
        tokenizer_json=tokenizer_json,
        weights_bytes=weights,
    )


def verify_bundle(directory: str | Path) -> Manifest:
    """Check a bundle as :func:`~flare_onnx.load` would, without creating a session: every
    graph it can run (each precision's ONNX graph and OpenVINO IR) hashed and checked, and its
    tokenizer built and probed once. What ``flare-onnx info`` runs.

    Raises:
        BundleError: as :func:`open_bundle`, for the first file or check that fails.
    """
    manifest = read_manifest(directory)
    opened = [
        open_bundle(directory, precision=precision, backend=backend)
        for backend, graphs in (("onnxruntime", manifest.graphs), ("openvino", manifest.openvino))
        for precision in graphs
    ]
    TextEncoder(opened[0].tokenizer_json, manifest.special, max_length=manifest.max_length)
    return manifest
