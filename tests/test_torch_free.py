"""The runtime never imports torch, transformers, optimum or onnx."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import sys, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "optimum", "onnx"):
            raise ImportError("blocked: " + name)
if sys.argv[4] == "blocked":
    sys.meta_path.insert(0, Block())
import flare_onnx
mlm, tagger, cls = (flare_onnx.load(p) for p in sys.argv[1:4])
mlm.fill_mask(["Roma è la <mask> d'Italia."])
mlm.embed(["Il gatto dorme."], window="sliding")
tagger.tag(["Mario vive a Roma."])
cls.classify(["Che bella giornata!"])
from flare_onnx.cli import main
main(["embed", sys.argv[1], "ciao"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum", "onnx"))
print(json.dumps(heavy))
"""


def _run(mode: str, *bundles: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, *map(str, bundles), mode], capture_output=True, text=True, timeout=120)


def test_runtime_runs_with_heavy_packages_blocked(tiny_bundle, tiny_tagger, tiny_classifier):
    """Every task and the CLI work where torch, transformers, optimum and onnx cannot be imported."""
    proc = _run("blocked", tiny_bundle, tiny_tagger, tiny_classifier)
    assert proc.returncode == 0, proc.stderr


def test_runtime_imports_none_of_them_when_they_are_installed(tiny_bundle, tiny_tagger, tiny_classifier):
    """With the heavy packages installed (as here), using every task still imports none of them."""
    import importlib.util

    assert importlib.util.find_spec("torch") is not None  # they are importable in this environment
    proc = _run("open", tiny_bundle, tiny_tagger, tiny_classifier)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_import_is_light():
    code = "import sys, flare_onnx; print(sorted(m.split('.')[0] for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert not loaded & {"torch", "transformers", "optimum", "onnx", "flare_onnx_export"}
    # nor the libraries of the integrations (each imported by its own module only)
    assert not loaded & {"spacy", "thinc", "langchain_core", "chromadb", "pyspark", "pandas"}


def test_interactive_use_does_not_import_the_bulk_streams_pool(tiny_bundle):
    """The thread pool (concurrent.futures, and logging with it) is imported by bulk work only:
    a serverless cold start or a CLI call does not pay for it."""
    code = ("import sys, json, flare_onnx; m = flare_onnx.load(sys.argv[1]); m.embed(['Il gatto dorme.']);"
            "a = 'concurrent.futures' in sys.modules; flare_onnx.load(sys.argv[1], workload='bulk', threads=2);"
            "print(json.dumps([a, 'concurrent.futures' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, True]
