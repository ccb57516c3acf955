"""load() of a checkpoint directory: the cache entry is the checkpoint's identity, made once
under a lock, and rebuilt when it no longer verifies."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

import flare_onnx
from flare_onnx import BundleError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _reference(path, seed):
    from flare_onnx_export import write_reference

    return write_reference(path, tiny=True, seed=seed)


def test_two_checkpoints_whose_names_look_alike_get_their_own_bundles(tmp_path, cache):
    """The red team's: "col/a b" and "col/a/b" became one cache name, and the second load
    returned the first model."""
    first = _reference(tmp_path / "col" / "a b", seed=1)
    second = _reference(tmp_path / "col" / "a" / "b", seed=2)
    a, b = flare_onnx.load(first, precision="fp32"), flare_onnx.load(second, precision="fp32")
    assert a.path != b.path
    assert not np.allclose(a.embed(["ciao"]), b.embed(["ciao"]), atol=1e-3)


def test_a_checkpoint_changed_in_place_is_exported_again(tmp_path, cache):
    ckpt = _reference(tmp_path / "ckpt", seed=1)
    before = flare_onnx.load(ckpt, precision="fp32")
    shutil.rmtree(ckpt)
    _reference(tmp_path / "ckpt", seed=2)  # same path, other weights
    after = flare_onnx.load(ckpt, precision="fp32")
    assert after.path != before.path
    assert not np.allclose(after.embed(["ciao"]), before.embed(["ciao"]), atol=1e-3)


@pytest.mark.parametrize("damage", ["manifest", "graph"])
def test_a_broken_cache_entry_is_rebuilt_by_load_itself(tiny_checkpoint, cache, capsys, damage):
    path = flare_onnx.load(tiny_checkpoint, precision="fp32").path
    expected = flare_onnx.load(path, precision="fp32").embed(["ciao"])
    if damage == "manifest":
        (path / "manifest.json").unlink()
    else:
        data = bytearray((path / "model.fp32.onnx").read_bytes())
        data[-10] ^= 0xFF
        (path / "model.fp32.onnx").write_bytes(bytes(data))
    capsys.readouterr()
    again = flare_onnx.load(tiny_checkpoint, precision="fp32")
    assert again.path == path and "exporting" in capsys.readouterr().err
    np.testing.assert_allclose(again.embed(["ciao"]), expected, atol=1e-5)


def test_two_loads_at_once_export_once_and_a_killed_exports_leftovers_go(tiny_checkpoint, cache, capsys):
    from flare_onnx.engine.cache import _entry

    entry = _entry(tiny_checkpoint)
    cache.mkdir(parents=True)
    leftover = cache / f".{entry.path.name}.abc123"  # the work folder of an export killed by -9
    leftover.mkdir()
    paths, errors = [], []

    def load():
        try:
            paths.append(flare_onnx.load(tiny_checkpoint, precision="fp32").path)
        except Exception as exc:  # reaches the test below, not a thread's log
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    assert capsys.readouterr().err.count("flare-onnx: exporting") == 1
    assert not leftover.exists()


def test_a_cache_that_cannot_be_written_is_a_bundle_error_naming_the_fix(tiny_checkpoint, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(blocked / "cache"))
    with pytest.raises(BundleError, match="cannot be written .* set FLARE_ONNX_CACHE to a writable folder"):
        flare_onnx.load(tiny_checkpoint)
