"""The README's main job: export flare-it (or, offline, the reference checkpoint), run
fill-mask, and compare flare-onnx with PyTorch on the shipped Italian sentences."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from flare_onnx.errors import BundleError, ExportError

from ._deps import require
from .checkpoint import load_checkpoint, resolve_checkpoint
from .exporter import export_bundle
from .reference import write_reference
from .sample import italian_sentences, mask_sentences

EXAMPLES = [
    "Roma è la <mask> d'Italia.",
    "Dante Alighieri scrisse la Divina <mask>.",
    "L'Etna è il <mask> attivo più alto d'Europa.",
]


def _bundle(work: Path, model: str) -> tuple[Path, Path, bool]:
    """(checkpoint dir, bundle dir, is_reference) for ``model``, reusing an earlier export."""
    from flare_onnx import InputError
    from flare_onnx.bundle import open_bundle

    try:
        source = resolve_checkpoint(model)
        reference = False
        name = model.replace("/", "--")
    except ExportError as exc:
        print(f"{exc}\n-> using the Flare-IT-shaped reference checkpoint instead (random weights:"
              " fill-mask answers are noise; speed, memory and PyTorch agreement are real)\n")
        source = work / "flare-it-reference"
        if not (source / "pytorch_model.bin").exists():
            write_reference(source)
        reference = True
        name = "flare-it-reference"
    bundle = work / f"{name}-onnx"
    try:
        open_bundle(bundle, precision="fp32")  # hashes only; the sessions are created once, later
        open_bundle(bundle, precision="int8")
        print(f"reusing the verified bundle {bundle}")
    except (BundleError, InputError):
        export_bundle(str(source), bundle, overwrite=True)
    return source, bundle, reference


def run_demo(work_dir: str | Path = "artifacts", *, model: str = "osiria/flare-it") -> int:
    """Export, fill masks, and print a short PyTorch-vs-ONNX comparison. Returns an exit code."""
    import flare_onnx

    torch = require("torch")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    source, bundle, reference = _bundle(work, model)
    threads = 2
    torch.set_num_threads(threads)
    int8 = flare_onnx.load(bundle, threads=threads)
    fp32 = flare_onnx.load(bundle, precision="fp32", threads=threads)
    print("\nfill-mask (INT8):")
    for text, masks in zip(EXAMPLES, int8.fill_mask(EXAMPLES, top_k=3)):
        print(f"  {text}  ->  " + " | ".join(f"{p.token} {p.score:.3f}" for p in masks[0]))

    ckpt = load_checkpoint(source, source=str(source), task="fill-mask")
    tok = int8.tokenizer.tokenizer
    mask_id = int8.manifest.special.mask_id
    texts = mask_sentences(italian_sentences(), int8.manifest.special.mask_token or "<mask>")

    def torch_top1(text: str) -> int:
        enc = tok.encode(text)
        ids = torch.tensor([enc.ids])
        with torch.inference_mode():
            logits = ckpt.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        return int(logits[enc.ids.index(mask_id)].argmax())

    def onnx_top1(m: flare_onnx.FlareModel) -> Any:
        return lambda text: m.fill_mask([text], top_k=1)[0][0][0].token_id

    contenders = {"pytorch fp32": torch_top1, "flare-onnx fp32": onnx_top1(fp32), "flare-onnx int8": onnx_top1(int8)}
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    answers: dict[str, list[int]] = {}
    # Whole passes per contender, in rotating order, each after an untimed call: runtimes'
    # worker threads keep spinning after a call and would slow whoever runs next.
    names = list(contenders)
    for round_ in range(2):
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            fn = contenders[name]
            fn(texts[0])
            got = []
            for text in texts:
                t0 = time.perf_counter()
                got.append(fn(text))
                timings[name].append(time.perf_counter() - t0)
            answers[name] = got
    agree = {name: sum(a == b for a, b in zip(answers[name], answers["pytorch fp32"])) for name in names[1:]}
    base = statistics.median(timings["pytorch fp32"])
    files = int8.manifest.raw["files"]
    size = {
        "pytorch fp32": sum(p.stat().st_size for p in source.glob("*.bin")) or None,
        "flare-onnx fp32": files["model.fp32.onnx"]["size"],
        "flare-onnx int8": files["model.int8.onnx"]["size"],
    }
    print(f"\n{len(texts)} masked Italian sentences, batch 1, {threads} threads"
          f"{' (reference checkpoint)' if reference else ''}:")
    print("| contender | p50 latency | speed-up | top-1 = PyTorch | weights |")
    print("|---|---|---|---|---|")
    for name, values in timings.items():
        p50 = statistics.median(values)
        agreement = "—" if name == "pytorch fp32" else f"{agree[name] / len(texts):.1%}"
        mb = f"{size[name] / 1e6:.1f} MB" if size[name] else "—"
        print(f"| {name} | {p50 * 1e3:.2f} ms | {base / p50:.2f}× | {agreement} | {mb} |")
    verification = int8.manifest.raw["verification"]
    print(f"\nexport verification: fp32 max |Δ| {verification['fp32']['max_abs_diff']:.2e}, "
          f"int8 embedding cosine mean {verification['int8'].get('embedding_cosine_mean', float('nan')):.4f}")
    return 0
