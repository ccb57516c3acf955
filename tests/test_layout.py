"""The house rules that keep the engine and its surfaces apart, checked on the code itself:
the engine imports no surface, surfaces use only the engine's public names, the import graph
has no circle, ruff's rules hold (line length, complexity, statements per function), and adding a task is one spec
plus its runner (a registered task shows up on the CLI, over HTTP with OpenAPI, and in the
file job without editing them)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flare_onnx.engine as engine

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flare_onnx"
SURFACES = ("cli", "job", "serve", "serverless", "ray_data", "pipelines", "integrations", "spark")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import in a runtime file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _engine_files() -> list[Path]:
    return sorted((PACKAGE / "engine").rglob("*.py"))


def _surface_files() -> list[Path]:
    files = []
    for name in SURFACES:
        files += sorted((PACKAGE / name).rglob("*.py")) if (PACKAGE / name).is_dir() else [PACKAGE / f"{name}.py"]
    return files


def test_the_engine_imports_no_surface():
    for path in _engine_files():
        for module, _ in _imports(path):
            assert not any(module == f"flare_onnx.{s}" or module.startswith(f"flare_onnx.{s}.") for s in SURFACES), (
                f"{path.relative_to(ROOT)} imports the surface {module}"
            )


def test_surfaces_use_only_the_engines_public_names():
    public = set(engine.__all__)
    for path in _surface_files():
        for module, names in _imports(path):
            where = path.relative_to(ROOT)
            assert not module.startswith("flare_onnx.engine."), f"{where} reaches into {module}; import from flare_onnx.engine"
            if module == "flare_onnx.engine":
                assert set(names) <= public, f"{where} imports {set(names) - public}, not public in flare_onnx.engine"
            if module.startswith("flare_onnx"):
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                assert not private, f"{where} imports the private name(s) {private} from {module}"
        text = path.read_text(encoding="utf-8")
        assert "model._" not in text and "._session" not in text, f"{path.relative_to(ROOT)} uses a private part of the model"


def _module_graph() -> dict[str, set[str]]:
    """flare_onnx's modules and the modules of flare_onnx each imports: every import counted,
    at module level, inside functions and under TYPE_CHECKING alike."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for module, names in _imports(path):
            for target in [module] + [f"{module}.{n}" for n in names]:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a module importing its own package's __init__ (or the top package) is no ring
                if target and target != name and target != "flare_onnx" and not name.startswith(target + "."):
                    deps.add(target)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    assert not _cycles(_module_graph()), "import circles in flare_onnx: " + "; ".join(
        " -> ".join(c) for c in _cycles(_module_graph()))


def test_the_circle_check_finds_a_circle():
    graph = _module_graph()
    graph["flare_onnx.engine.options"] = graph["flare_onnx.engine.options"] | {"flare_onnx.engine.model"}
    assert any("flare_onnx.engine.options" in c and "flare_onnx.engine.model" in c for c in _cycles(graph))


def test_ruff_finds_nothing_in_the_runtime_the_exporter_and_the_benchmarks():
    """pyproject.toml's rules: lines of at most 120 characters, McCabe complexity at most 10,
    at most 50 statements a function (length in statements, not physical lines), pyflakes;
    and the code as ruff formats it."""
    check = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "flare_onnx", "export", "benchmarks"],
                           cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "flare_onnx", "export",
                          "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_verbs_defaults_are_the_registrys():
    import inspect

    for spec in engine.TASKS.values():
        verb = getattr(engine.FlareModel, spec.verb)
        params = inspect.signature(verb).parameters
        for option in spec.options:
            assert params[option.name].default == option.default, f"{spec.verb}({option.name}=...) differs from the registry"


# -- adding a task ----------------------------------------------------------------------------


def _run_cls_norm(model, request):
    """A small task for the test: the L2 norm of each text's <s> hidden state, rounded."""
    norms = [0.0] * len(request.texts)
    for window, out in model.window_outputs(request):
        norms[window.text_index] = round(float(np.linalg.norm(out["last_hidden_state"][0])), request.options["digits"])
    return norms


@pytest.fixture
def cls_norm():
    spec = engine.TaskSpec(
        name="cls-norm", verb="cls_norm", summary="the norm of the <s> vector", aliases=("clsnorm",),
        graph_inputs=("input_ids", "attention_mask"), graph_outputs=("last_hidden_state",),
        result_key="norm", run=_run_cls_norm, offered_by=("feature-extraction", "fill-mask"),
        options=(engine.Option("digits", int, 3, "digits after the point", minimum=0, maximum=8),),
    )
    engine.register_task(spec)
    yield spec
    engine.unregister_task("cls-norm")
    assert "cls-norm" not in engine.TASKS and "cls-norm" not in engine.EXPORT_TASKS["fill-mask"]


def test_a_registered_task_is_on_every_surface_without_editing_them(cls_norm, tiny_bundle, tmp_path, capsys):
    from starlette.testclient import TestClient

    import flare_onnx
    from flare_onnx.cli import main
    from flare_onnx.job import JobConfig, run_job
    from flare_onnx.serve import create_app

    model = flare_onnx.load(tiny_bundle, precision="fp32")
    texts = ["Il gatto dorme.", "Roma è la capitale d'Italia."]
    expected = [round(float(np.linalg.norm(h[0])), 2) for h in model.hidden_states(texts)]
    assert "cls-norm" in model.tasks and model.predict("clsnorm", texts, {"digits": 2}) == expected

    assert main(["cls-norm", str(tiny_bundle), "--precision", "fp32", "--digits", "2", *texts]) == 0
    assert [r["norm"] for r in json.loads(capsys.readouterr().out)] == expected

    with TestClient(create_app(model)) as client:
        answer = client.post("/v1/cls-norm", json={"texts": texts, "digits": 2})
        assert answer.status_code == 200 and [r["norm"] for r in answer.json()["results"]] == expected
        assert client.post("/v1/cls-norm", json={"texts": texts, "digits": 9}).status_code == 422
        assert "digits" in client.get("/openapi.json").json()["paths"]["/v1/cls-norm"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]["properties"]

    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    cfg = JobConfig(task="cls-norm", bundle=str(tiny_bundle), input=str(src), output=str(out),
                    options={"digits": 2}, model_options={"precision": "fp32"}, progress=False)
    assert run_job(cfg) == 0
    assert [json.loads(line)["norm"] for line in out.read_text().splitlines()] == expected


def test_a_task_name_cannot_be_taken_twice(cls_norm):
    from flare_onnx import InputError

    with pytest.raises(InputError, match="are taken"):
        engine.register_task(cls_norm)
