"""Bundle directories: the manifest schema, and verification of every file before use.

A bundle is a directory holding ``manifest.json``, ``tokenizer.json``, ``config.json`` and
one single-file ONNX graph per precision. The manifest records each file's sha256 and size;
:func:`open_bundle` reads each file once, checks it against the manifest and hands the
verified *bytes* to the caller, so what runs is exactly what was checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError, InputError, TaskNotAvailableError
from .tasks import EXPORT_TASKS, TaskSpec, get_task

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "PRECISIONS",
    "Manifest",
    "GraphSpec",
    "SpecialTokens",
    "VerifiedBundle",
    "open_bundle",
    "read_manifest",
    "file_record",
]

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "flare-onnx-bundle"
FORMAT_VERSION = 1
PRECISIONS = ("int8", "fp32")



def file_record(data: bytes) -> dict[str, Any]:
    """The manifest entry of one file: its sha256 and size."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens the runtime adds or looks for."""

    cls_id: int
    sep_id: int
    pad_id: int
    unk_id: int
    mask_id: int | None
    mask_token: str | None


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle."""

    precision: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    backend: str = "onnxruntime"
    weights: str | None = None  # OpenVINO IR: the .bin beside the .xml


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
    raw: Mapping[str, Any]

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
    special = _get(model, "special_tokens", dict, "model")
    mask = special.get("mask")
    spec = SpecialTokens(
        cls_id=_get(special, "cls", list, "model.special_tokens")[1],
        sep_id=_get(special, "sep", list, "model.special_tokens")[1],
        pad_id=_get(special, "pad", list, "model.special_tokens")[1],
        unk_id=_get(special, "unk", list, "model.special_tokens")[1],
        mask_id=mask[1] if mask else None,
        mask_token=mask[0] if mask else None,
    )
    if task == "fill-mask" and spec.mask_id is None:
        raise BundleError("manifest.json: a fill-mask bundle must record its mask token; re-export the bundle")
    labels = model.get("labels")
    if task in ("token-classification", "text-classification") and not labels:
        raise BundleError(f"manifest.json: a {task} bundle must list its labels; re-export the bundle")
    graphs: dict[str, GraphSpec] = {}
    for precision, g in _get(raw, "graphs", dict, "manifest").items():
        if precision not in PRECISIONS:
            raise BundleError(f"manifest.json: unknown precision {precision!r}")
        graphs[precision] = GraphSpec(
            precision=precision,
            file=_get(g, "file", str, f"graphs.{precision}"),
            inputs=tuple(_get(g, "inputs", list, f"graphs.{precision}")),
            outputs=tuple(_get(g, "outputs", list, f"graphs.{precision}")),
        )
    if not graphs:
        raise BundleError("manifest.json lists no ONNX graph")
    openvino: dict[str, GraphSpec] = {}
    for precision, g in (raw.get("openvino") or {}).items():
        if precision not in PRECISIONS or not isinstance(g, dict):
            raise BundleError(f"manifest.json: unknown OpenVINO precision {precision!r}")
        openvino[precision] = GraphSpec(
            precision=precision,
            file=_get(g, "file", str, f"openvino.{precision}"),
            inputs=tuple(_get(g, "inputs", list, f"openvino.{precision}")),
            outputs=tuple(_get(g, "outputs", list, f"openvino.{precision}")),
            backend="openvino",
            weights=_get(g, "weights", str, f"openvino.{precision}"),
        )
    files = _get(raw, "files", dict, "manifest")
    return Manifest(
        task=task,
        tasks=EXPORT_TASKS[task],
        model_type=_get(model, "model_type", str, "model"),
        hidden_size=_get(model, "hidden_size", int, "model"),
        max_length=_get(model, "max_length", int, "model"),
        labels=tuple(labels) if labels else None,
        special=spec,
        graphs=graphs,
        openvino=openvino,
        files=files,
        raw=raw,
    )


def read_manifest(directory: str | Path) -> Manifest:
    """Read and parse ``manifest.json`` of a bundle directory (files are not hashed)."""
    path = Path(directory)
    if not path.is_dir():
        raise BundleError(
            f"bundle directory {str(path)!r} does not exist; create one with "
            f"`flare-onnx export MODEL -o {path}`"
        )
    try:
        raw = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            f"{str(path)!r} has no {MANIFEST_NAME}: it is not a flare-onnx bundle "
            f"(create one with `flare-onnx export MODEL -o DIR`)"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path / MANIFEST_NAME} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path / MANIFEST_NAME} is not a JSON object")
    return parse_manifest(raw)


def _read_verified(root: Path, name: str, record: Mapping[str, Any]) -> bytes:
    if Path(name).name != name:
        raise BundleError(f"manifest.json names {name!r}, which is not a plain file name")
    path = root / name
    if path.is_symlink():
        raise BundleError(f"{name} in the bundle is a symbolic link; bundles hold plain files only")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"bundle file {name} is missing from {str(root)!r}; re-export the bundle") from None
    expected = record.get("size"), record.get("sha256")
    actual = file_record(data)
    if actual["size"] != expected[0]:
        raise BundleError(
            f"bundle file {name} has {actual['size']} bytes but the manifest says {expected[0]}: "
            f"it was truncated or altered; re-export the bundle"
        )
    if actual["sha256"] != expected[1]:
        raise BundleError(
            f"bundle file {name} does not match its sha256 in the manifest: it was altered; "
            f"re-export the bundle"
        )
    return data


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
    """Read a bundle and verify the files a session needs against the manifest.

    Args:
        directory: the bundle directory.
        precision: ``"int8"`` or ``"fp32"``; ``None`` takes INT8 when the bundle has it.
        backend: ``"onnxruntime"`` (the ONNX graphs) or ``"openvino"`` (the OpenVINO IR a
            bundle exported with ``--openvino`` carries).

    Raises:
        BundleError: the directory is not a bundle, or a file is missing or altered.
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
            raise InputError(
                f"this bundle has no {precision} graph for {backend}; it has {', '.join(graphs)}"
            )
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    graph = graphs[precision]
    needed = [graph.file, "tokenizer.json"] + ([graph.weights] if graph.weights else [])
    for name in needed:
        if name not in manifest.files:
            raise BundleError(f"manifest.json has no checksum for {name}; re-export the bundle")
    graph_bytes = _read_verified(root, graph.file, manifest.files[graph.file])
    tokenizer = _read_verified(root, "tokenizer.json", manifest.files["tokenizer.json"])
    weights = _read_verified(root, graph.weights, manifest.files[graph.weights]) if graph.weights else None
    return VerifiedBundle(
        path=root,
        manifest=manifest,
        graph=graph,
        graph_bytes=graph_bytes,
        tokenizer_json=tokenizer.decode("utf-8"),
        weights_bytes=weights,
    )
