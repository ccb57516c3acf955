"""Bundle verification: altered, truncated, missing and unsafe files are refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import flare_onnx
from flare_onnx import BundleError, InputError
from flare_onnx.engine._onnx_scan import has_external_data
from flare_onnx.engine.bundle import file_record, open_bundle


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_loads_int8_by_default_and_fp32_on_request(bundle):
    assert flare_onnx.load(bundle).precision == "int8"
    assert flare_onnx.load(bundle, precision="fp32").precision == "fp32"


def test_altered_graph_is_refused(bundle):
    path = bundle / "model.int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.int8.onnx does not match its sha256 in the manifest: it was altered"):
        flare_onnx.load(bundle)
    flare_onnx.load(bundle, precision="fp32")  # the untouched graph still loads


def test_truncated_graph_is_refused(bundle):
    path = bundle / "model.fp32.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"model.fp32.onnx has 1000 bytes but the manifest says \d+: it was truncated"):
        flare_onnx.load(bundle, precision="fp32")


def test_altered_tokenizer_is_refused(bundle):
    path = bundle / "tokenizer.json"
    path.write_text(path.read_text().replace('"<mask>"', '"<maschera>"'))
    with pytest.raises(BundleError, match="tokenizer.json .*(sha256|bytes)"):
        flare_onnx.load(bundle)


def test_missing_file_is_refused(bundle):
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"bundle file tokenizer.json is missing .*re-export the bundle"):
        flare_onnx.load(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        flare_onnx.load(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="has no manifest.json: it is not a flare-onnx bundle"):
        flare_onnx.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        flare_onnx.load(tmp_path)


def test_newer_format_version_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        flare_onnx.load(bundle)


@pytest.mark.parametrize("name, message", [
    ("model.int8.onnx/../../model.int8.onnx", "not a plain file name"),
    ("../model.int8.onnx", "not the int8 graph"),  # refused by the precision's file-name rule first
])
def test_path_in_manifest_must_be_a_plain_name(bundle, name, message):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["int8"]["file"] = name
    manifest["files"][name] = manifest["files"]["model.int8.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        flare_onnx.load(bundle)


def test_symlinked_file_is_refused(bundle, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "model.int8.onnx", target)
    os.symlink(target, bundle / "model.int8.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        flare_onnx.load(bundle)


def test_unknown_precision(bundle):
    with pytest.raises(InputError, match="precision must be one of 'int8', 'fp32', not 'fp16'"):
        flare_onnx.load(bundle, precision="fp16")


def test_graph_with_external_data_is_refused_even_with_matching_hashes(bundle, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(bundle / "model.fp32.onnx"))
    onnx.save(model, str(bundle / "model.fp32.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    data = (bundle / "model.fp32.onnx").read_bytes()
    assert has_external_data(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.fp32.onnx"] = file_record(data)  # an attacker can rewrite hashes too
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="references external data files"):
        open_bundle(bundle, precision="fp32")  # what `flare-onnx verify` runs, before any session
    cwd = os.getcwd()
    os.chdir(bundle)  # where onnxruntime would resolve the external file from
    try:
        with pytest.raises(BundleError, match="references external data files"):
            flare_onnx.load(bundle, precision="fp32")
    finally:
        os.chdir(cwd)


def test_external_tensor_without_a_location_names_no_file_and_is_refused(bundle):
    """The scan skips its walk when the bytes never spell ``location``: such a tensor names no
    file, and onnxruntime's refusal of it is a BundleError like any unloadable graph."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(bundle / "model.fp32.onnx"))
    table = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    table.ClearField("raw_data")
    table.data_location = onnx.TensorProto.EXTERNAL
    data = model.SerializeToString()
    assert b"location" not in data and not has_external_data(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.fp32.onnx"] = file_record(data)
    (bundle / "model.fp32.onnx").write_bytes(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="onnxruntime could not load the graph"):
        flare_onnx.load(bundle, precision="fp32")


def test_scan_finds_no_external_data_in_exported_graphs(tiny_bundle):
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        assert not has_external_data((tiny_bundle / name).read_bytes())


def test_garbage_graph_is_refused(bundle):
    data = b"\xff" * 64
    (bundle / "model.fp32.onnx").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.fp32.onnx"] = file_record(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="(not a valid model file|could not load)"):
        flare_onnx.load(bundle, precision="fp32")


def test_fill_mask_manifest_without_mask_token_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["model"]["special_tokens"]["mask"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="a fill-mask bundle must record its mask token"):
        flare_onnx.load(bundle)
