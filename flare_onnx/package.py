"""``flare-onnx package``: a bundle and the torch-free runtime as a function package.

AWS Lambda (a zip, or a layer zip and a function zip), with the runtime's wheels resolved by
pip for the function's platform — ``--platform``/``--python-version``/``--only-binary`` —
never the build machine's own, flare-onnx's own modules, one precision of the bundle, and a
``handler.py`` that finds the bundle beside itself (``$LAMBDA_TASK_ROOT/bundle``). The runtime
wheels are installed without their own dependencies: the runtime imports numpy, tokenizers and
onnxruntime's session only (onnxruntime's protobuf, flatbuffers and sympy serve its converters
and tools, which a function never loads and this package leaves out; ``tests/test_package.py``
runs the package in an interpreter that sees nothing else).

Lambda's limits (AWS docs, "Lambda quotas"): 250 MB unzipped for a function and its layers,
50 MB zipped for a direct upload. The build refuses (exit 2) a package over either, saying by
how much; ``--via-s3`` accepts a zip over 50 MB, which Lambda takes from S3.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

from .engine import MANIFEST_NAME, Manifest, verify_bundle
from .errors import FlareOnnxError, InputError

MB = 1_000_000
#: Lambda's quotas, in the bytes AWS states them (MiB)
UNZIPPED_LIMIT = 250 * 1024 * 1024
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024
#: the C library of each Lambda Python runtime's OS: python3.11 runs on Amazon Linux 2
#: (glibc 2.26), python3.12 and 3.13 on Amazon Linux 2023 (glibc 2.34)
LAMBDA_GLIBC = {"3.11": (2, 26), "3.12": (2, 34), "3.13": (2, 34)}
ARCHES = {"x86_64": "x86_64", "arm64": "aarch64"}
#: ELF e_machine of each architecture's native code
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
#: what a function never loads: test suites, C headers and sources, the
#: wheels' console scripts, onnxruntime's converters and tools (licence files are kept)
TRIM_DIRS = {"tests", "testing", "include", "__pycache__", "bin"}
TRIM_PATHS = (
    "onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization", "numpy/f2py", "numpy/_pyinstaller",
)  # fmt: skip
TRIM_SUFFIXES = (".pyx", ".pxd", ".c", ".h", ".hpp", ".cpp")
#: onnxruntime's C-API library (~35 MB): its Python binding links the runtime statically and never loads it
TRIM_GLOBS = ("onnxruntime/capi/libonnxruntime.so*",)
#: runtime requirements a function does not import: the file job's progress bars
NOT_IN_A_FUNCTION = ("tqdm",)
#: the runtime modules a function needs (the serving, job and Ray surfaces are left out)
LEFT_OUT = ("serve", "job", "ray_data.py", "package.py", "__main__.py")

HANDLER = '''"""AWS Lambda entry point written by `flare-onnx package` (handler: handler.handler).

The bundle ships beside this file; FLARE_ONNX_* variables set the model options
(FLARE_ONNX_THREADS=1 on a function of one vCPU, below 1,769 MB)."""

import os

os.environ.setdefault(
    "FLARE_ONNX_BUNDLE",
    os.path.join(os.environ.get("LAMBDA_TASK_ROOT") or os.path.dirname(os.path.abspath(__file__)), "bundle"),
)

from flare_onnx.serverless import get_model, handler  # noqa: E402,F401

# loaded while the function initializes, as Lambda advises for clients and models: the init
# phase runs at full CPU, and a SnapStart snapshot then holds the loaded model
get_model()
'''


class PackageError(FlareOnnxError):
    """A package that cannot be built, or would not fit the function's limits (exit 2)."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class Package:
    """What was written: each zip (or the folder) with its zipped and unzipped size."""

    paths: tuple[Path, ...]
    zipped: tuple[int, ...]
    unzipped: tuple[int, ...]
    wheels: tuple[str, ...]
    notes: tuple[str, ...]


def runtime_requirements(onnxruntime_version: str | None) -> list[str]:
    """flare-onnx's own runtime requirements (its metadata: one home for them), onnxruntime
    pinned to the version that optimized the bundle's graph when that is known."""
    try:
        reqs = importlib.metadata.requires("flare-onnx") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise PackageError("flare-onnx is not installed as a package here (pip install -e .)") from exc
    out = [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]
    out = [r for r in out if re.split(r"[<>=!~ \[]", r)[0] not in NOT_IN_A_FUNCTION]
    if onnxruntime_version:
        out = [f"onnxruntime=={onnxruntime_version}" if re.match(r"onnxruntime\b", r) else r for r in out]
    return out


def platform_tags(arch: str, glibc: tuple[int, int]) -> list[str]:
    """Every manylinux tag a machine of this architecture and C library runs."""
    machine = ARCHES[arch]
    return [f"manylinux2014_{machine}"] + [f"manylinux_2_{minor}_{machine}" for minor in range(17, glibc[1] + 1)]


def build_package(
    bundle: str | Path,
    output: str | Path,
    *,
    arch: str = "x86_64",
    python: str = "3.12",
    glibc: tuple[int, int] | None = None,
    precision: str = "int8",
    layer: bool = False,
    via_s3: bool = False,
    keep_dir: bool = False,
    log: Callable[[str], None] = print,
) -> Package:
    """Build the package of ``bundle`` for Lambda at ``output`` (a ``.zip``, or a folder with
    ``keep_dir``); with ``layer``, ``output`` names a folder that gets ``layer.zip`` (the
    runtime under ``python/``), ``function.zip`` (handler and bundle) and an AWS SAM
    ``template.yaml``. Nothing is written when a limit or a check fails.

    Raises:
        PackageError: an unknown architecture or Python, wheels pip cannot find for the
            platform, a package over Lambda's limits, or native code of another architecture.
        BundleError: the bundle does not verify, or lacks ``precision``.
    """
    manifest = _check_request(bundle, arch, python, precision, layer, keep_dir)
    out = Path(output)
    parts = ["layer", "function"] if layer else ["function"]
    targets = [(out / f"{name}.zip") if layer else out for name in parts]
    for target in targets:  # before minutes of pip: an existing output is refused, not replaced
        if target.exists():
            raise InputError(f"{target} exists; remove it or choose another -o")
    notes = _notes(manifest.quantization, arch, precision)
    with tempfile.TemporaryDirectory(prefix="flare-package-") as tmp:
        stage = Path(tmp)
        wheels = _stage(stage, Path(bundle), arch, python, glibc or LAMBDA_GLIBC[python], precision, layer, log)
        if not _compile(stage, python):
            notes.append(
                f"not compiled to bytecode: no python{python} here could (Lambda's task folder is read-only, "
                "so every cold start compiles the imports again)"
            )
        folders = [stage / ("python" if name == "layer" else "function") for name in parts]
        unzipped = [_tree_size(folder) for folder in folders]
        if keep_dir:  # nothing zipped: the folder is written once its size is known to fit
            _check_limits(targets, [0], unzipped, via_s3)
            shutil.copytree(stage / "function", out)
            return Package((out,), (0,), tuple(unzipped), tuple(wheels), tuple(notes))
        staged = [
            _zip(f, stage / f"{name}.zip", "python" if name == "layer" else "") for f, name in zip(folders, parts)
        ]
        _check_limits(targets, [z.stat().st_size for z in staged], unzipped, via_s3)  # before anything is written
        for zipped_file, target in zip(staged, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(zipped_file, target)
    notes += _write_template((out if layer else out.parent) / "template.yaml", arch, python, layer, targets[-1].name)
    zipped = [t.stat().st_size for t in targets]
    return Package(tuple(targets), tuple(zipped), tuple(unzipped), tuple(wheels), tuple(notes))


def _check_request(bundle: str | Path, arch: str, python: str, precision: str, layer: bool, keep_dir: bool) -> Manifest:
    if arch not in ARCHES:
        raise InputError(f"--arch must be one of {', '.join(ARCHES)}, not {arch!r}")
    if layer and keep_dir:
        raise InputError("--layer writes two zips; it does not take --dir")
    if python not in LAMBDA_GLIBC:
        raise InputError(f"--python must be one of {', '.join(LAMBDA_GLIBC)} (Lambda's runtimes), not {python!r}")
    manifest = verify_bundle(bundle)
    if precision not in manifest.graphs:
        raise InputError(f"the bundle has no {precision} graph (it has {', '.join(manifest.graphs)})")
    return manifest


def _stage(
    stage: Path,
    bundle: Path,
    arch: str,
    python: str,
    glibc: tuple[int, int],
    precision: str,
    layer: bool,
    log: Callable[[str], None],
) -> list[str]:
    """The package's files under ``stage``: ``function/`` (handler, bundle, and the runtime
    unless ``layer``) and, with ``layer``, ``python/`` (the runtime). Returns the wheels."""
    runtime = stage / ("python" if layer else "function")
    function = stage / "function"
    requirements = runtime_requirements(_optimized_by(bundle, precision))
    wheels = _install_wheels(runtime, requirements, arch, python, glibc, log)
    _copy_runtime(runtime)
    _trim(runtime)
    _check_native_code(runtime, arch)
    _copy_bundle(bundle, function / "bundle", precision)
    verify_bundle(function / "bundle")
    (function / "handler.py").write_text(HANDLER, encoding="utf-8")
    return wheels


def _write_template(path: Path, arch: str, python: str, layer: bool, code: str) -> list[str]:
    if path.exists():
        return [f"{path} exists and was left as it is (flare_onnx.package.sam_template writes this package's)"]
    path.write_text(sam_template(arch, python, layer=layer, code=code), encoding="utf-8")
    return []


GCP_MAIN = '''"""Google Cloud Run functions entry point written by `flare-onnx package --target gcp`:
gcloud functions deploy flare-it --gen2 --runtime python312 --entry-point gcp_function --trigger-http"""

import os

os.environ.setdefault("FLARE_ONNX_BUNDLE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundle"))

from flare_onnx.serverless import gcp_function, get_model  # noqa: E402,F401

get_model()  # loaded when the instance starts, not by its first request
'''

AZURE_APP = '''"""Azure Functions app written by `flare-onnx package --target azure` (Python v2 model):
func azure functionapp publish APP_NAME"""

import os

os.environ.setdefault("FLARE_ONNX_BUNDLE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundle"))

import azure.functions as func  # noqa: E402

from flare_onnx.serverless import azure_function, get_model  # noqa: E402

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
get_model()  # loaded when the worker starts, not by its first request


@app.route(route="flare", methods=["POST"])
def flare(req: func.HttpRequest) -> func.HttpResponse:
    return azure_function(req)
'''

AZURE_HOST = {
    "version": "2.0",
    "extensionBundle": {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"},
}


def build_source_package(bundle: str | Path, output: str | Path, *, target: str, precision: str = "int8") -> Path:
    """A folder for Google Cloud Run functions (``target="gcp"``: ``main.py``) or Azure
    Functions (``"azure"``: ``function_app.py``, ``host.json``): flare-onnx's runtime modules,
    one precision of the bundle, and a ``requirements.txt`` of the runtime's wheels, which
    those clouds install for their own platform at deploy time.

    Raises:
        InputError: an unknown target, an existing output, a precision the bundle lacks.
        BundleError: the bundle does not verify.
    """
    if target not in ("gcp", "azure"):
        raise InputError(f"--target must be aws-lambda, gcp or azure, not {target!r}")
    _check_request(bundle, "x86_64", "3.12", precision, layer=False, keep_dir=False)
    out = Path(output)
    if out.exists():
        raise InputError(f"{out} exists; remove it or choose another -o")
    with tempfile.TemporaryDirectory(prefix="flare-package-") as tmp:
        stage = Path(tmp) / "function"
        _copy_bundle(Path(bundle), stage / "bundle", precision)
        verify_bundle(stage / "bundle")
        _copy_runtime(stage)
        requirements = runtime_requirements(_optimized_by(Path(bundle), precision))
        if target == "gcp":
            (stage / "main.py").write_text(GCP_MAIN, encoding="utf-8")
            requirements.append("functions-framework>=3")
        else:
            (stage / "function_app.py").write_text(AZURE_APP, encoding="utf-8")
            (stage / "host.json").write_text(json.dumps(AZURE_HOST, indent=2) + "\n", encoding="utf-8")
            requirements.append("azure-functions>=1.20")
        (stage / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        shutil.copytree(stage, out)
    return out


def sam_template(arch: str, python: str, *, layer: bool, code: str = "function.zip") -> str:
    """An AWS SAM template for the package (``sam deploy --guided`` beside it)."""
    layers = (
        "      Layers:\n        - !Ref FlareOnnxRuntime\n"
        "  FlareOnnxRuntime:\n    Type: AWS::Serverless::LayerVersion\n    Properties:\n"
        f"      ContentUri: layer.zip\n      CompatibleRuntimes: [python{python}]\n"
        f"      CompatibleArchitectures: [{arch}]\n"
        if layer
        else ""
    )
    return (
        "AWSTemplateFormatVersion: '2010-09-09'\nTransform: AWS::Serverless-2016-10-31\n"
        "Description: flare-onnx function written by `flare-onnx package`\nResources:\n"
        "  FlareFunction:\n    Type: AWS::Serverless::Function\n    Properties:\n"
        f"      CodeUri: {code}\n      Handler: handler.handler\n      Runtime: python{python}\n"
        f"      Architectures: [{arch}]\n      MemorySize: 1024\n      Timeout: 30\n"
        "      Environment:\n        Variables:\n          FLARE_ONNX_THREADS: '1'\n"
        "      FunctionUrlConfig:\n        AuthType: AWS_IAM\n" + layers
    )


def _optimized_by(bundle: Path, precision: str) -> str | None:
    """The onnxruntime version that stored the graph optimized, if it did: the package runs
    that version (a graph stored optimized holds the operators its optimizers chose)."""
    graph = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))["graphs"][precision]
    by = str((graph.get("optimized") or {}).get("by", ""))
    return by.removeprefix("onnxruntime ") if by.startswith("onnxruntime ") else None


def _notes(quantization: Mapping[str, object], arch: str, precision: str) -> list[str]:
    built_for = quantization.get("built_for") if precision == "int8" else None
    if arch == "arm64" and built_for == "avx2":
        return [
            "the INT8 graph was built for AVX2 (weights in half range); `export --target-cpu arm64` keeps "
            "the full range on Graviton"
        ]
    if arch == "x86_64" and built_for == "vnni":
        return [
            "the INT8 graph was built for VNNI: Lambda's x86_64 hosts are not all VNNI CPUs, and on one "
            "without it the graph saturates; `export --target-cpu avx2` makes one safe on every x86_64 CPU"
        ]
    return []


def _install_wheels(
    target: Path, requirements: list[str], arch: str, python: str, glibc: tuple[int, int], log: Callable[[str], None]
) -> list[str]:
    tags = [flag for tag in platform_tags(arch, glibc) for flag in ("--platform", tag)]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", python, *tags,
        "--target", str(target), *requirements,
    ]  # fmt: skip
    log(f"resolving {', '.join(requirements)} for {arch}, CPython {python}, glibc {glibc[0]}.{glibc[1]}")
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        why = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()[-3:]
        hint = ""
        if glibc < (2, 28):
            hint = (
                f"; Lambda's python{python} runtime runs on Amazon Linux 2 (glibc 2.26) and onnxruntime's recent "
                "wheels need glibc 2.28: use --python 3.12 or 3.13 (Amazon Linux 2023)"
            )
        raise PackageError(f"pip found no wheels for the function's platform: {' '.join(why)}{hint}")
    return sorted(p.name.split(".dist-info")[0] for p in target.glob("*.dist-info"))


def _copy_runtime(target: Path) -> None:
    source = Path(__file__).resolve().parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", *LEFT_OUT)
    shutil.copytree(source, target / "flare_onnx", ignore=ignore)


def _trim(root: Path) -> None:
    for pattern in TRIM_GLOBS:
        for path in root.glob(pattern):
            path.unlink()
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.exists():
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and (path.name in TRIM_DIRS or rel in TRIM_PATHS):
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in TRIM_SUFFIXES:
            path.unlink()


def _check_native_code(root: Path, arch: str) -> None:
    """Every shared library in the package is ELF for ``arch``: a wheel of the build machine's
    architecture would load nowhere in the function."""
    want = ELF_MACHINE[ARCHES[arch]]
    for path in root.rglob("*.so*"):
        if not path.is_file():
            continue
        head = path.read_bytes()[:20]
        machine = int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else None
        if machine != want:
            raise PackageError(f"{path.relative_to(root)} is not {arch} native code (ELF machine {machine})")


def _copy_bundle(source: Path, target: Path, precision: str) -> None:
    """The bundle with one precision's ONNX graph: the manifest keeps only what is shipped."""
    record = json.loads((source / MANIFEST_NAME).read_text(encoding="utf-8"))
    dropped = [g for p, g in record["graphs"].items() if p != precision] + list((record.get("openvino") or {}).values())
    named = {v for g in dropped for v in g.values() if isinstance(v, str)}  # each graph's files (and its IR's weights)
    record["graphs"] = {precision: record["graphs"][precision]}
    record["openvino"] = None
    record["files"] = {name: meta for name, meta in record["files"].items() if name not in named}
    target.mkdir(parents=True)
    for name in record["files"]:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target / name)
    (target / MANIFEST_NAME).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _compile(stage: Path, python: str) -> bool:
    """Bytecode for the function's imports (Lambda's task folder is read-only: without it, every
    cold start compiles them again), by this interpreter when it is the function's Python, or
    by ``python3.X`` on the PATH; False where neither is at hand."""
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = sys.executable if python == mine else shutil.which(f"python{python}")
    if interpreter is None:
        return False
    folders = [str(f) for f in (stage / "python", stage / "function") if f.exists()]
    proc = subprocess.run([interpreter, "-m", "compileall", "-q", "-j", "1", *folders], capture_output=True, text=True)
    return proc.returncode == 0


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _zip(folder: Path, target: Path, prefix: str) -> Path:
    # zlib level 6: level 9 took 2.3x the time (10.8 against 4.7 s) for a 0.4% smaller zip
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                zf.write(path, f"{prefix}/{name}" if prefix else name)
    return target


def _check_limits(paths: list[Path], zipped: list[int], unzipped: list[int], via_s3: bool) -> None:
    total = sum(unzipped)
    if total > UNZIPPED_LIMIT:
        raise PackageError(
            f"the package is {total / MB:.1f} MB unzipped, over Lambda's 250 MiB limit for a function and its "
            f"layers by {(total - UNZIPPED_LIMIT) / MB:.1f} MB: ship --precision int8 only, prune the vocabulary "
            f"(export --prune-words), or use a container image"
        )
    for path, size in zip(paths, zipped):
        if size > DIRECT_UPLOAD_LIMIT and not via_s3:
            raise PackageError(
                f"{path.name} is {size / MB:.1f} MB zipped, over Lambda's 50 MiB direct-upload limit by "
                f"{(size - DIRECT_UPLOAD_LIMIT) / MB:.1f} MB: upload it through S3 and pass --via-s3"
            )
