"""A sentence-transformers checkpoint's pooling and normalization, read at export into the
manifest and used by default on every surface; max pooling against a numpy reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import BundleError, ExportError

from .conftest import _quiet


def _sentence_transformers(src: Path, dest: Path, pooling: str, *, normalize: bool, extra: str = "") -> Path:
    """A copy of ``src`` dressed as a sentence-transformers checkpoint."""
    shutil.copytree(src, dest)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    if extra:
        modules.append({"idx": 3, "name": "3", "path": "3", "type": f"sentence_transformers.models.{extra}"})
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir()
    flags = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
    return dest


@pytest.fixture(scope="module")
def cls_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import export_bundle

    work = tmp_path_factory.mktemp("st-cls")
    ckpt = _sentence_transformers(tiny_checkpoint, work / "ckpt", "cls_token", normalize=False)
    return export_bundle(str(ckpt), work / "bundle", task="feature-extraction", log=_quiet)


def test_the_checkpoints_pooling_is_the_default_everywhere(cls_bundle, sentences, tiny_feature_bundle, capsys):
    manifest = json.loads((cls_bundle / "manifest.json").read_text())
    assert manifest["model"]["sentence"] == {
        "pooling": "cls", "normalize": False, "from": "sentence-transformers modules.json"
    }
    model = flare_onnx.load(cls_bundle)
    assert (model.manifest.pooling, model.manifest.normalize) == ("cls", False)
    texts = sentences[:4]
    default = model.embed(texts)
    np.testing.assert_array_equal(default, model.embed(texts, pooling="cls", normalize=False))
    assert not np.allclose(default, model.embed(texts, pooling="mean", normalize=True), atol=1e-3)
    assert not np.allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-3)  # not normalized
    from flare_onnx.cli import main

    capsys.readouterr()
    assert main(["info", str(cls_bundle)]) == 0  # info says what embed does by default
    assert json.loads(capsys.readouterr().out)["embedding"] == {"pooling": "cls", "normalize": False}
    from flare_onnx.serve import ServeConfig, create_app
    from starlette.testclient import TestClient

    with TestClient(create_app(model, ServeConfig())) as http:
        assert http.get("/v1/info").json()["embedding"] == {"pooling": "cls", "normalize": False}
        served = http.post("/v1/embed", json={"texts": texts[:1]}).json()
    np.testing.assert_allclose(served["results"][0]["embedding"], model.embed(texts[:1])[0], atol=1e-6)
    assert main(["embed", str(cls_bundle), texts[0]]) == 0  # the CLI, without options
    np.testing.assert_allclose(json.loads(capsys.readouterr().out)[0]["embedding"], model.embed(texts[0]), atol=1e-6)
    # a plain checkpoint keeps flare-onnx's defaults
    plain = flare_onnx.load(tiny_feature_bundle)
    assert (plain.manifest.pooling, plain.manifest.normalize) == ("mean", True)


def test_max_pooling_matches_numpy_over_every_token(tiny_feature_bundle, sentences):
    model = flare_onnx.load(tiny_feature_bundle, precision="fp32")
    texts = sentences[:5]
    expected = np.stack([h.max(axis=0) for h in model.hidden_states(texts)])
    np.testing.assert_allclose(model.embed(texts, pooling="max", normalize=False), expected, atol=1e-6)


@pytest.mark.parametrize(
    "pooling, extra, message",
    [
        ("mean_sqrt_len_tokens", "", "pools with \\['pooling_mode_mean_sqrt_len_tokens'\\]"),
        ("mean_tokens", "Dense", "Dense module"),
    ],
)
def test_a_pipeline_the_runtime_would_not_reproduce_is_refused(tiny_checkpoint, tmp_path, pooling, extra, message):
    from flare_onnx_export import export_bundle

    ckpt = _sentence_transformers(tiny_checkpoint, tmp_path / "ckpt", pooling, normalize=True, extra=extra)
    with pytest.raises(ExportError, match=message):
        export_bundle(str(ckpt), tmp_path / "bundle", task="feature-extraction", log=_quiet)


def test_a_bundle_with_bad_sentence_settings_is_refused(tiny_feature_bundle, tmp_path):
    from flare_onnx.engine import read_manifest

    bundle = tmp_path / "b"
    shutil.copytree(tiny_feature_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model"]["sentence"] = {"pooling": "weightedmean", "normalize": True}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="pooling 'weightedmean'"):
        read_manifest(bundle)
    del manifest["model"]["sentence"]  # a bundle from before: flare-onnx's defaults
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert (read_manifest(bundle).pooling, read_manifest(bundle).normalize) == ("mean", True)
