"""Bundles that try to hang, lie or crash the loader: only a loaded model or a BundleError."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flare_onnx
from flare_onnx import BundleError, InputError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["manifest.json", "tokenizer.json", "model.int8.onnx"])
def test_a_fifo_is_refused_not_waited_on(tiny_bundle, tmp_path, name):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / name).unlink()
    os.mkfifo(bundle / name)  # opening a FIFO to read would block until a writer comes
    with pytest.raises(BundleError, match=f"{name} in the bundle is not a regular file"):
        flare_onnx.load(bundle)


def test_a_directory_or_symlink_is_refused(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / "model.int8.onnx").unlink()
    (bundle / "model.int8.onnx").mkdir()
    with pytest.raises(BundleError, match="model.int8.onnx in the bundle is not a regular file"):
        flare_onnx.load(bundle)
    other = _copy(tiny_bundle, tmp_path / "c")
    (other / "manifest.json").rename(tmp_path / "real-manifest.json")
    (other / "manifest.json").symlink_to(tmp_path / "real-manifest.json")
    with pytest.raises(BundleError, match="manifest.json in the bundle is a symbolic link"):
        flare_onnx.load(other)


def test_a_character_device_is_not_read_without_end(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / "tokenizer.json").unlink()
    try:
        os.mknod(bundle / "tokenizer.json", 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    except PermissionError:
        pytest.skip("creating a device node needs root (CI runs as root)")
    with pytest.raises(BundleError, match="tokenizer.json in the bundle is not a regular file"):
        flare_onnx.load(bundle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["graphs"].update(int8=5), "graphs.int8 is not a graph"),
        (lambda m: m["model"].update(max_length=0), "model.max_length is 0, outside 8..65536"),
        (lambda m: m["model"].update(hidden_size=999), "hidden_size is 999 but the graph's hidden states have 32"),
        (lambda m: m["model"]["special_tokens"].update(cls=[]), r"special_tokens.cls must be \[token, id\]"),
        (lambda m: m["model"]["special_tokens"].update(mask=["<mask>", 10**6]), "outside the tokenizer's"),
        (lambda m: m["files"]["tokenizer.json"].update(size=-1), "files.tokenizer.json must be"),
        (lambda m: m["graphs"]["int8"].update(outputs=[]), "graphs.int8.outputs must be a list of names"),
        (lambda m: m.update(task="summarization"), "unknown task 'summarization'"),
    ],
)
def test_lying_manifests_are_bundle_errors(tiny_bundle, tmp_path, edit, message):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    manifest = _manifest(bundle)
    edit(manifest)
    _write(bundle, manifest)
    with pytest.raises(BundleError, match=message):
        flare_onnx.load(bundle)


def _mutate(value: Any, data: st.DataObject, depth: int = 0) -> Any:
    """Replace one randomly chosen node of a JSON tree by a random JSON value."""
    if isinstance(value, dict) and value and depth < 4 and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        out = dict(value)
        out[key] = _mutate(value[key], data, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4 and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        out = list(value)
        out[i] = _mutate(value[i], data, depth + 1)
        return out
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=8))
    return data.draw(st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_manifests_load_or_raise_bundle_error(tiny_bundle, tmp_path_factory, data):
    bundle = _copy(tiny_bundle, tmp_path_factory.mktemp("h") / "b")
    manifest = _mutate(copy.deepcopy(_manifest(bundle)), data)
    (bundle / "manifest.json").write_text(json.dumps(manifest) if data.draw(st.booleans()) else json.dumps(manifest)[: data.draw(st.integers(0, 200))])
    try:
        flare_onnx.load(bundle, precision=data.draw(st.sampled_from([None, "fp32", "int8"])))
    except (BundleError, InputError):
        pass  # InputError: the precision asked for is not one this manifest lists


# -- tokenizers that would hurt the host, manifests that lie about numbers and files ----------


def _rewrite_tokenizer(bundle: Path, change) -> None:
    """Change tokenizer.json and update its hash, as an attacker who can rewrite both would."""
    from flare_onnx.engine.bundle import file_record

    tok = json.loads((bundle / "tokenizer.json").read_text())
    change(tok)
    data = json.dumps(tok).encode()
    (bundle / "tokenizer.json").write_bytes(data)
    manifest = _manifest(bundle)
    manifest["files"]["tokenizer.json"] = file_record(data)
    _write(bundle, manifest)


def _nested_replace(tok: dict) -> None:
    doubling = {"type": "Replace", "pattern": {"String": "a"}, "content": "aa"}
    tok["normalizer"] = {"type": "Sequence", "normalizers": [doubling] * 10}  # 1,024x


def _empty_match(tok: dict) -> None:
    tok["normalizer"] = {"type": "Replace", "pattern": {"Regex": "x*"}, "content": "y"}


def _backtracking(tok: dict) -> None:
    tok["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}


def _zero_width_replace(tok: dict) -> None:
    """The red team's: a character before every non-boundary, fourteen times over (16 M
    characters from 1,000)."""
    stage = {"type": "Replace", "pattern": {"Regex": "\\B"}, "content": "a"}
    tok["normalizer"] = {"type": "Sequence", "normalizers": [stage] * 14}


def _expanding_chain(tok: dict) -> None:
    """The red team's: every character made U+FDFA, which NFKC writes as 18, four times over."""
    stage = [{"type": "Replace", "pattern": {"Regex": "[\\s\\S]"}, "content": "\ufdfa"}, {"type": "NFKC"}]
    tok["normalizer"] = {"type": "Sequence", "normalizers": stage * 4}


def _rules_for_every_character(tok: dict) -> None:
    """A character map written as one Replace rule per character (as some converters do)."""
    rules = [{"type": "Replace", "pattern": {"String": chr(0xC0 + i)}, "content": "a"} for i in range(3000)]
    tok["normalizer"] = {"type": "Sequence", "normalizers": rules}


def _not_a_tokenizer(tok: dict) -> None:
    tok.clear()
    tok["hello"] = "world"


def _huge_vocabulary(tok: dict) -> None:
    tok["model"]["vocab"] = {f"t{i}": i for i in range(1_000_001)}


def _unknown_stage(tok: dict) -> None:
    tok["pre_tokenizer"] = {"type": "SomethingNew"}


@pytest.mark.parametrize("change, message", [
    (_nested_replace, "at most one character per match"),
    (_empty_match, "no empty matches, no backtracking"),
    (_backtracking, "no empty matches, no backtracking"),
    (_not_a_tokenizer, "not a tokenizer"),
    (_huge_vocabulary, "1 to 1,000,000 entries"),
    (_unknown_stage, "'SomethingNew' is not allowed"),
    (_zero_width_replace, "no empty matches, no backtracking"),
    (_expanding_chain, "can multiply a text's length by 104,976, more than 64"),
    (_rules_for_every_character, "has 3002 normalizer and pre-tokenizer stages, more than 32"),
], ids=["nested-replace", "empty-match", "backtracking-regex", "not-a-tokenizer", "huge-vocabulary", "unknown-stage",
        "zero-width-replace", "expanding-chain", "a-rule-per-character"])
def test_a_tokenizer_that_could_hurt_the_host_is_refused_at_load_and_by_info(tiny_bundle, tmp_path, capsys, change, message):
    from flare_onnx.cli import main

    bundle = _copy(tiny_bundle, tmp_path / "b")
    _rewrite_tokenizer(bundle, change)
    with pytest.raises(BundleError, match=message):
        flare_onnx.load(bundle)
    assert main(["info", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_panic_in_the_tokenizer_is_an_input_error(tiny_bundle):
    class PanicException(BaseException):  # what pyo3 raises for a Rust panic: not an Exception
        pass

    class Panicking:
        def encode_batch(self, texts, add_special_tokens=False):
            raise PanicException("regex backtrack limit")

        def encode(self, text, add_special_tokens=False):
            raise PanicException("regex backtrack limit")

    model = flare_onnx.load(tiny_bundle)
    model.tokenizer._tokenizer = Panicking()
    with pytest.raises(InputError, match="PanicException: regex backtrack limit"):
        model.embed(["ciao"])


@pytest.mark.parametrize("pattern", ["\\x{200B}", "[\\x{200B}]", "\\p{Mn}", "[\\p{Mn}]+", " {2,}"])
def test_patterns_are_judged_by_what_they_match_not_how_they_are_spelled(tiny_bundle, tmp_path, pattern):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    _rewrite_tokenizer(bundle, lambda tok: tok.update(
        normalizer={"type": "Replace", "pattern": {"Regex": pattern}, "content": ""}))
    flare_onnx.load(bundle).embed(["Il gatto\u200b dorme."])  # one character (or a run of one class): taken


@given(st.lists(st.sampled_from([
    {"type": "NFKC"}, {"type": "NFD"}, {"type": "NFC"}, {"type": "Lowercase"}, {"type": "StripAccents"},
    {"type": "Replace", "pattern": {"Regex": "[\\s\\S]"}, "content": "\ufdfa"},
    {"type": "Replace", "pattern": {"Regex": "\\p{L}"}, "content": "\u0130"},
    {"type": "Replace", "pattern": {"String": "a"}, "content": "\u3300"},
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "BertNormalizer", "clean_text": True, "lowercase": True, "strip_accents": True, "handle_chinese_chars": True},
]), min_size=1, max_size=6))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_normalizer_grows_text_beyond_its_bound_or_it_is_refused(tiny_bundle, tmp_path_factory, stages):
    """Any sequence of allowed normalizers: the bundle is refused, or a text of the characters
    that grow most grows by at most MAX_GROWTH."""
    from flare_onnx.engine.tokenizer_check import MAX_GROWTH

    bundle = _copy(tiny_bundle, tmp_path_factory.mktemp("n") / "b")
    _rewrite_tokenizer(bundle, lambda tok: tok.update(normalizer={"type": "Sequence", "normalizers": stages}))
    try:
        model = flare_onnx.load(bundle)
    except BundleError as exc:
        assert "multiply a text's length" in str(exc) or "grew a" in str(exc)
        return
    text = "a\ufdfa\u3300\u0130\u1f82\u4e00 Roma è"
    assert len(model.tokenizer.tokenizer.normalizer.normalize_str(text)) <= MAX_GROWTH * len(text)


def test_numbers_and_file_names_in_the_manifest_are_checked(tiny_bundle, tmp_path, capsys):
    from flare_onnx.cli import main

    digits = _copy(tiny_bundle, tmp_path / "digits")
    text = (digits / "manifest.json").read_text().replace('"format_version": 1', '"format_version": ' + "9" * 5001)
    (digits / "manifest.json").write_text(text)
    assert main(["info", str(digits)]) == 1
    assert "is not valid JSON" in capsys.readouterr().err
    swapped = _copy(tiny_bundle, tmp_path / "swapped")
    manifest = _manifest(swapped)
    manifest["graphs"]["int8"]["file"] = "model.fp32.onnx"
    _write(swapped, manifest)
    with pytest.raises(BundleError, match="names 'model.fp32.onnx', not the int8 graph"):
        flare_onnx.load(swapped)
