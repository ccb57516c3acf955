"""``export_bundle``: checkpoint -> verified bundle directory (FP32 and INT8 graphs)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_onnx.engine.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, file_record
from flare_onnx.engine.tasks import EXPORT_TASKS
from flare_onnx.errors import BundleError, ExportError

from ._deps import require
from .checkpoint import DEFAULT_MODEL, load_checkpoint, resolve_checkpoint
from .graphs import GRAPH_IO, OPSET, export_graph
from .guard import DEFAULT_TARGET, PRESETS, quantize_guarded
from .optimize import optimize_for_onnxruntime
from .prune import DEFAULT_MIN_DOC_FREQ, prune_checkpoint
from .sentence import sentence_settings
from .quantize import ACTIVATIONS, EMBEDDING_BITS, TARGETS, WEIGHT_ROUNDING, check_choices
from .sample import italian_sentences, mask_sentences, read_corpus
from .tokenizer import build_tokenizer, compare_tokenizers, load_reference_tokenizer, special_tokens
from .verify import compare, make_batches, onnx_outputs, torch_outputs

__all__ = ["export_bundle", "stored_prompts", "TOKENIZER_PROBES", "FP32_TOLERANCE"]

FP32_TOLERANCE = 1e-4
#: sentences of --calibration used (each goes through PyTorch and every guard attempt)
CALIBRATION_LIMIT = 1000
GRAPH_FILES = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx"}

#: Texts that exercise the tokenizer's corner cases on top of the calibration sentences.
TOKENIZER_PROBES = [
    "L'uomo è arrivato all'alba, più tardi del previsto: perché?",
    "Roma è la <mask> d'Italia.",
    "ROMA È LA <MASK> D'ITALIA!",
    "Caffè, però, città, virtù, perché, così: àèéìòù ÀÈÉÌÒÙ.",
    "Un po' d'acqua e quell'anno nell'ottobre del '68…",
    "Prezzo: 12,50 € (IVA inclusa) — 3° piano, n. 7/b; e-mail info@esempio.it",
    "Tab\there and  double  spaces\nnewline and\u00a0nbsp\u200bzero-width",
    "Parola" + "lunghissima" * 12 + " fine",
    "e\u0301 composta, ﬁne ligatura, ｆｕｌｌｗｉｄｔｈ, 東京 e emoji 🙂",
]


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("flare-onnx", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            pass
    return out


def _max_length(config: Any, tokenizer_max: int | None) -> int:
    positions = int(config.max_position_embeddings)
    if config.model_type in ("xlm-roberta", "roberta", "camembert"):
        positions -= int(config.pad_token_id) + 1  # positions start after the padding index
    if tokenizer_max and tokenizer_max < 100_000:
        positions = min(positions, int(tokenizer_max))
    return positions


def export_bundle(
    model: str = DEFAULT_MODEL,
    output: str | Path = "flare-it-onnx",
    *,
    task: str | None = None,
    precisions: tuple[str, ...] = ("fp32", "int8"),
    revision: str | None = None,
    calibration: str | Path | None = None,
    overwrite: bool = False,
    fidelity_target: float = DEFAULT_TARGET,
    target_cpu: str = "auto",
    embedding_bits: str = "auto",
    activations: str = "per-row",
    weight_rounding: str = "gptq",
    openvino: bool = False,
    fidelity: str = "fast",
    prune_vocab: str | Path | None = None,
    min_doc_freq: float = DEFAULT_MIN_DOC_FREQ,
    prune_words: int = 0,
    prompts: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export a checkpoint to a verified bundle directory (docs/export.md tells every option).

    Args:
        model: a Hub id (default ``osiria/flare-it``) or a local checkpoint directory.
        output: the bundle directory; it appears only when the export succeeded.
        task: an export task; by default the one the checkpoint's architecture names.
        precisions: graphs to write (``fp32``, ``int8``).
        calibration: Italian text for the checks (its first 1,000 sentences; default: the shipped sample).
        fidelity_target, fidelity: the INT8 guard's cosine floor and preset (docs/int8.md).
        target_cpu, embedding_bits, activations, weight_rounding, openvino: the INT8 graph's CPU (``auto``,
            ``vnni``, ``avx2``, ``arm64``), word table (``auto``, ``8``, ``4``), activation scales (``per-row``,
            batch-invariant; or ``per-tensor``) and weights' rounding (``gptq`` against the calibration text, or
            ``nearest``; the 0.2 recipe: ``per-tensor`` + ``nearest``; docs/int8.md); also write the NNCF INT8 IR.
        prune_vocab, min_doc_freq, prune_words: Flare-IT's pruning, to a corpus and frequent words (docs/export.md).
        prompts: named prompts to store (over the checkpoint's sentence-transformers ``prompts``).

    Raises:
        ExportError: a bad option or checkpoint; a tokenizer, FP32 or INT8 graph that fails its check.
    """
    out, build = Path(output), (target_cpu, str(embedding_bits), activations, weight_rounding)
    _check_options(out, overwrite, precisions, build, task, fidelity_target, openvino, fidelity)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        checkpoint, pruning = _pruned(model, revision, (prune_vocab, prune_words, prompts), min_doc_freq, work, log)
        prep = _prepare(checkpoint, revision=revision, task=task, calibration=calibration, prompts=prompts, log=log)
        graphs, quantization = _write_onnx_graphs(prep, work, precisions, (fidelity_target, fidelity), build, log)
        openvino_graphs = _write_openvino(prep, work, fidelity_target, log) if openvino else {}
        _drop_unrequested(work, graphs, precisions)
        parts = {"graphs": graphs, "openvino_graphs": openvino_graphs, "quantization": quantization}
        _write_files(prep, work, source=_source(model, revision, prep.config), vocabulary=pruning, **parts)
        _publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return out


def _write_files(prep: _Prepared, work: Path, **parts: Any) -> None:
    """The tokenizer, the config and the manifest (:func:`_manifest` of ``parts``) beside the graphs."""
    (work / "tokenizer.json").write_text(prep.fast.to_str(pretty=False), encoding="utf-8")
    prep.config.to_json_file(str(work / "config.json"))
    manifest = _manifest(prep, work, **parts)
    (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")


def _drop_unrequested(work: Path, graphs: dict[str, Any], precisions: tuple[str, ...]) -> None:
    """The FP32 graph is always written (INT8 and OpenVINO are made from it); gone if not asked for."""
    if "fp32" not in precisions:
        (work / GRAPH_FILES["fp32"]).unlink()
        del graphs["fp32"]


def _source(model: str, revision: str | None, config: Any) -> dict[str, Any]:
    """Where the bundle came from; ``random_weights`` for the reference checkpoint (the page says so)."""
    return {
        "model": model,
        "revision": revision,
        "architectures": config.architectures,
        "random_weights": bool(getattr(config, "flare_onnx_random_weights", False)),
    }


def _pruned(
    model: str,
    revision: str | None,
    text: tuple[str | Path | None, int, dict[str, str] | None],
    min_doc_freq: float,
    work: Path,
    log: Callable[[str], None],
) -> tuple[str, dict[str, Any] | None]:
    """The checkpoint to export: ``model`` itself, or its copy with the vocabulary pruned to
    ``text`` (a corpus, a number of frequent words, and the prompts the bundle will store;
    written under ``work``, removed before the bundle is published)."""
    corpus, words, prompts = text
    if corpus is None and not words:
        return model, None
    pruned, source = work / ".pruned-checkpoint", resolve_checkpoint(model, revision=revision)
    record = prune_checkpoint(
        source,
        pruned,
        corpus,
        min_doc_freq=min_doc_freq,
        words=words,
        prompts=[*stored_prompts(source).values(), *(prompts or {}).values()],
        log=log,
    )
    return str(pruned), {**record, "corpus": Path(str(corpus)).name if corpus is not None else None}


def _publish(work: Path, out: Path) -> None:
    """The finished bundle takes the output's place (it appears only when the export succeeded)."""
    shutil.rmtree(work / ".pruned-checkpoint", ignore_errors=True)
    work.chmod(0o755)  # mkdtemp makes it private; a bundle is ordinary data
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


def _check_options(
    out: Path,
    overwrite: bool,
    precisions: tuple[str, ...],
    build: tuple[str, str, str, str],
    task: str | None,
    fidelity_target: float,
    openvino: bool,
    fidelity: str,
) -> None:
    """Every option is checked before the expensive work (loading, tracing, PyTorch runs)."""
    target_cpu, embedding_bits, activations, weight_rounding = build
    check_choices(
        target_cpu=(target_cpu, TARGETS),
        embedding_bits=(embedding_bits, EMBEDDING_BITS),
        activations=(activations, ACTIVATIONS),
        weight_rounding=(weight_rounding, WEIGHT_ROUNDING),
    )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    bad = [p for p in precisions if p not in GRAPH_FILES]
    if bad or not precisions:
        raise ExportError(f"precisions must be among {', '.join(GRAPH_FILES)}, not {precisions}")
    if task is not None and task not in EXPORT_TASKS:
        raise ExportError(f"task must be one of {', '.join(EXPORT_TASKS)}, not {task!r}")
    if not 0.0 < fidelity_target <= 1.0:
        raise ExportError(f"fidelity_target must be in (0, 1], not {fidelity_target!r}")
    if fidelity not in PRESETS:
        raise ExportError(f"fidelity must be one of {', '.join(PRESETS)}, not {fidelity!r}")
    if openvino:
        from .openvino_ir import require_openvino

        require_openvino()  # a missing NNCF is said now, not after the FP32 export


@dataclass
class _Prepared:
    """A loaded checkpoint with its checked tokenizer, the verification batches and PyTorch's
    outputs on them."""

    ckpt: Any
    config: Any
    tokens: dict[str, str]
    ids: dict[str, int]
    fast: Any
    slow: Any
    check: dict[str, Any]
    max_length: int
    verify_texts: list[str]
    batches: Any
    reference: Any
    prompts: dict[str, str]
    sentence: dict[str, Any] | None  # pooling and normalization of a model that embeds
    verification: dict[str, Any]  # the manifest's: the text checked on, then each graph's figures on it


def _check_runtime_takes(tokenizer: Any) -> None:
    """Refuse at export a tokenizer that ``load()`` would refuse (the runtime's own checks)."""
    from flare_onnx.engine.tokenizer_check import check_tokenizer_json, probe_normalizer

    try:
        check_tokenizer_json(tokenizer.to_str(pretty=False))
        probe_normalizer(tokenizer)
    except BundleError as exc:
        raise ExportError(f"the checkpoint's tokenizer would be refused when the bundle is loaded: {exc}") from exc


def _prepare(
    model: str,
    *,
    revision: str | None,
    task: str | None,
    calibration: str | Path | None,
    prompts: dict[str, str] | None,
    log: Callable[[str], None],
) -> _Prepared:
    """Load the checkpoint, build and check the tokenizer, run PyTorch on the verification text."""
    source_dir = resolve_checkpoint(model, revision=revision)
    log(f"loading {model} from {source_dir}")
    ckpt = load_checkpoint(source_dir, source=model, task=task)
    config = ckpt.config
    tokens = special_tokens(source_dir)
    fast = build_tokenizer(source_dir, pair_type_id=0 if config.type_vocab_size == 1 else 1)
    _check_runtime_takes(fast)
    slow = load_reference_tokenizer(source_dir)
    texts = read_corpus(calibration, limit=CALIBRATION_LIMIT) if calibration else italian_sentences()
    if not texts:
        raise ExportError(f"the calibration text {calibration} holds no sentences")
    check = compare_tokenizers(fast, slow, texts + TOKENIZER_PROBES)
    if check["mismatches"]:
        raise ExportError(
            f"tokenizer.json disagrees with transformers' {type(slow).__name__}: {check['first_mismatch']}"
        )
    log(f"tokenizer matches transformers' {type(slow).__name__} on {check['texts']} texts and {check['pairs']} pairs")
    ids = {name: fast.token_to_id(tok) for name, tok in tokens.items()}
    if ids["pad"] != config.pad_token_id:
        raise ExportError(f"the tokenizer's pad id {ids['pad']} differs from config.pad_token_id {config.pad_token_id}")
    max_length = _max_length(config, getattr(slow, "model_max_length", None))
    mask_id = ids["mask"] if ckpt.task == "fill-mask" else None
    verify_texts = mask_sentences(texts, tokens["mask"]) if ckpt.task == "fill-mask" else texts
    batches = make_batches(fast, verify_texts, pad_id=ids["pad"], mask_id=mask_id, max_length=max_length)
    reference = torch_outputs(ckpt.task, ckpt.model, batches)
    sentence = sentence_settings(source_dir) if ckpt.task in ("fill-mask", "feature-extraction") else None
    if sentence:
        log(f"embeddings: {sentence['pooling']} pooling, normalize {sentence['normalize']} ({sentence['from']})")
    return _Prepared(
        ckpt,
        config,
        tokens,
        ids,
        fast,
        slow,
        check,
        max_length,
        verify_texts,
        batches,
        reference,
        {**stored_prompts(source_dir), **(prompts or {})},
        sentence,
        {"texts": len(verify_texts), "calibration": str(calibration or "shipped sample")},
    )


def stored_prompts(directory: Path) -> dict[str, str]:
    """The checkpoint's sentence-transformers prompts (``{"query": "query: ", ...}``), if any."""
    path = directory / "config_sentence_transformers.json"
    try:
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts") if path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} cannot be read: {exc}") from exc
    return {str(k): str(v) for k, v in prompts.items() if str(v)} if isinstance(prompts, dict) else {}


def _write_onnx_graphs(
    prep: _Prepared,
    work: Path,
    precisions: tuple[str, ...],
    fidelity: tuple[float, str],
    build: tuple[str, str, str, str],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], Any]:
    """The FP32 graph (checked against PyTorch) and, when asked, the guarded INT8 graph
    (``build``: the target CPU, the word table's bits, the activations' scales, the weights' rounding)."""
    ort = require("onnxruntime")
    inputs, outputs = GRAPH_IO[prep.ckpt.task]
    fp32_path = work / GRAPH_FILES["fp32"]
    log(f"exporting the {prep.ckpt.task} graph (opset {OPSET})")
    export_graph(prep.ckpt.task, prep.ckpt.model, fp32_path, pad_id=prep.ids["pad"])
    graphs: dict[str, Any] = {}
    quantization = None
    for precision in ("fp32", "int8"):
        path = work / GRAPH_FILES[precision]
        if precision == "int8":
            if "int8" not in precisions:
                continue
            quantization, figures = quantize_guarded(
                fp32_path,
                path,
                prep.batches,
                prep.reference,
                target=fidelity[0],
                fidelity=fidelity[1],
                target_cpu=build[0],
                embedding_bits=build[1],
                activations=build[2],
                weight_rounding=build[3],
                log=log,
            )
        else:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            figures = compare(prep.batches, prep.reference, onnx_outputs(session, prep.batches))
        prep.verification[precision] = figures
        log(f"{precision}: " + ", ".join(f"{k}={v:.6g}" for k, v in figures.items()))
        if precision == "fp32" and figures["max_abs_diff"] > FP32_TOLERANCE:
            raise ExportError(
                f"the FP32 graph differs from PyTorch by {figures['max_abs_diff']:.3g} "
                f"(more than {FP32_TOLERANCE}); the export is wrong"
            )
        graphs[precision] = {"file": GRAPH_FILES[precision], "inputs": list(inputs), "outputs": list(outputs)}
        if precision == "int8":  # the FP32 graph stays plain ONNX: OpenVINO and re-quantizing read it
            optimized = optimize_for_onnxruntime(path, prep.batches, log=log)
            if optimized:
                graphs[precision]["optimized"] = optimized
    return graphs, quantization


def _write_openvino(prep: _Prepared, work: Path, fidelity_target: float, log: Callable[[str], None]) -> dict[str, Any]:
    """The NNCF INT8 IR, held to the same fidelity target."""
    from .openvino_ir import IR_FILES, write_openvino_int8

    inputs, outputs = GRAPH_IO[prep.ckpt.task]
    recipe, figures = write_openvino_int8(
        work / GRAPH_FILES["fp32"], work, prep.batches, prep.reference, target=fidelity_target, log=log
    )
    prep.verification["openvino-int8"] = figures
    log("openvino int8: " + ", ".join(f"{k}={v:.6g}" for k, v in figures.items()))
    xml, weights = IR_FILES["int8"]
    return {
        "int8": {"file": xml, "weights": weights, "inputs": list(inputs), "outputs": list(outputs), "recipe": recipe}
    }


def _manifest(
    prep: _Prepared,
    work: Path,
    *,
    source: dict[str, Any],
    graphs: dict[str, Any],
    openvino_graphs: dict[str, Any],
    quantization: Any,
    vocabulary: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest of the files in ``work``: what they are, how they were checked, their hashes."""
    config, task = prep.config, prep.ckpt.task
    labels = None
    if task in ("token-classification", "text-classification"):
        labels = [config.id2label[i] for i in range(config.num_labels)]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "task": task,
        "tasks": list(EXPORT_TASKS[task]),
        "source": source,
        "model": {
            "model_type": config.model_type,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers,
            "max_length": prep.max_length,
            "labels": labels,
            "problem_type": getattr(config, "problem_type", None),
            "special_tokens": {k: [prep.tokens[k], prep.ids[k]] for k in prep.tokens},
            # transformers' decode() tidies " ." into "." when the checkpoint asks for it;
            # flare_onnx.pipeline decodes the same way
            "clean_up_tokenization_spaces": bool(getattr(prep.slow, "clean_up_tokenization_spaces", False)),
            "prompts": prep.prompts or None,
            "sentence": prep.sentence,  # embed's default pooling and normalization
        },
        "graphs": graphs,
        "openvino": openvino_graphs or None,
        "opset": OPSET,
        "quantization": quantization,
        "tokenizer_check": prep.check,
        "verification": prep.verification,
        "vocabulary": vocabulary,  # what --prune-vocab kept, or None
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {
            p.name: file_record(p.read_bytes())
            for p in sorted(work.iterdir())
            if p.name != MANIFEST_NAME and p.is_file()
        },
    }
