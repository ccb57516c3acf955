"""The ``flare-onnx`` command: export, reference, the four task verbs, info and demo.

Runtime verbs import only the runtime; ``export``, ``reference`` and ``demo`` import the
export extra (``pip install "flare-onnx[export]"``) when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ._json import to_jsonable
from .errors import FlareOnnxError, InputError

TASK_VERBS = {"fill-mask": "fill_mask", "embed": "embed", "tag": "tag", "classify": "classify"}


def _texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return list(args.texts)
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def _run_task(args: argparse.Namespace) -> int:
    from .model import load

    model = load(args.bundle, precision=args.precision, threads=args.threads)
    texts = _texts(args)
    verb = TASK_VERBS[args.command]
    if verb == "fill_mask":
        results: Any = model.fill_mask(texts, top_k=args.top_k)
    elif verb == "embed":
        results = model.embed(
            texts, pooling=args.pooling, normalize=not args.no_normalize, window=args.window
        )
    elif verb == "tag":
        results = model.tag(texts, aggregation=args.aggregation, window=args.window)
    else:
        results = model.classify(texts, top_k=args.top_k)
    key = {"fill_mask": "masks", "embed": "embedding", "tag": "result", "classify": "labels"}[verb]
    out = [{"text": t, key: to_jsonable(r)} for t, r in zip(texts, results)]
    json.dump(out, sys.stdout, ensure_ascii=False, indent=2 if sys.stdout.isatty() else None)
    sys.stdout.write("\n")
    return 0


def _run_job(args: argparse.Namespace) -> int:
    from .batch import JobConfig, run_job

    extra: dict[str, Any] = {}
    if args.command_task == "embed":
        extra = {"pooling": args.pooling, "normalize": not args.no_normalize, "window": args.window}
    elif args.command_task == "tag":
        extra = {"window": args.window, "aggregation": args.aggregation}
    if args.engine == "ray":
        from .ray_data import run_ray_job

        if args.top_k is not None:
            extra["top_k"] = args.top_k
        return run_ray_job(
            args.command_task, args.bundle, args.input, args.output, address=args.address, actors=args.actors,
            threads=args.threads or 1, batch_size=args.chunk, text_column=args.text_field,
            precision=args.precision, options=extra,
        )
    cfg = JobConfig(
        task=args.command_task, bundle=args.bundle, input=args.input, output=args.output,
        text_field=args.text_field, input_format=args.format, errors=args.errors, npy=args.npy,
        precision=args.precision, workers=args.workers, threads=args.threads, chunk=args.chunk,
        top_k=args.top_k, progress=False if args.no_progress else None, resume=not args.restart, extra=extra,
    )
    return run_job(cfg)


def _serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    cfg = ServeConfig(
        max_body_bytes=args.max_body_bytes, max_texts=args.max_texts, max_chars=args.max_chars,
        queue_size=args.queue_size, max_batch_texts=args.max_batch_texts, max_wait_ms=args.max_wait_ms,
        deadline_s=args.deadline, api_key=args.api_key,
    )
    serve(args.bundle, host=args.host, port=args.port, precision=args.precision, threads=args.threads, cfg=cfg)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .bundle import open_bundle

    for precision in ("fp32", "int8"):
        try:
            open_bundle(args.bundle, precision=precision)
        except InputError:
            continue
    from .bundle import read_manifest

    manifest = read_manifest(args.bundle)
    raw = dict(manifest.raw)
    summary = {
        "task": manifest.task,
        "capabilities": list(manifest.capabilities),
        "source": raw.get("source"),
        "graphs": {p: {**g.__dict__, **raw["files"][g.file]} for p, g in manifest.graphs.items()},
        "verification": raw.get("verification"),
        "quantization": raw.get("quantization"),
        "verified": True,
    }
    json.dump(summary, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from flare_onnx_export import export_bundle

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    export_bundle(
        args.model,
        args.output,
        task=args.task,
        precisions=tuple(args.precision),
        revision=args.revision,
        calibration=args.calibration,
        overwrite=args.overwrite,
        fidelity_target=args.fidelity_target,
        target_cpu=args.target_cpu,
        log=log,
    )
    return 0


def _reference(args: argparse.Namespace) -> int:
    from flare_onnx_export import write_reference

    labels = args.labels.split(",") if args.labels else None
    out = write_reference(args.output, task=args.task, labels=labels, tiny=args.tiny, seed=args.seed)
    print(f"wrote a Flare-IT-shaped reference checkpoint (random weights) to {out}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flare_onnx_export.demo import run_demo

    return run_demo(args.work_dir, model=args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flare-onnx", description="Export osiria/flare-it to INT8 ONNX and run it without torch."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a checkpoint to a bundle (needs flare-onnx[export])")
    p.add_argument("model", nargs="?", default="osiria/flare-it", help="Hub id or local directory")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    p.add_argument(
        "--task",
        choices=["fill-mask", "feature-extraction", "token-classification", "text-classification"],
        help="default: the checkpoint's architecture",
    )
    p.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--calibration", help="Italian text (one sentence per line, or CoNLL-U) for checks")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--fidelity-target", type=float, default=0.995,
        help="least mean cosine of INT8 to PyTorch FP32 on the calibration text (default 0.995)",
    )
    p.add_argument(
        "--target-cpu", choices=["auto", "vnni", "avx2"], default="auto",
        help="CPU the INT8 graph is built for (default: this machine's)",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("reference", help="write the Flare-IT-shaped reference checkpoint (random weights)")
    p.add_argument("output")
    p.add_argument("--task", choices=["fill-mask", "token-classification", "text-classification"], default="fill-mask")
    p.add_argument("--labels", help="comma-separated labels for a classification head")
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same architecture, for tests")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_reference)

    for name, help_text in [
        ("fill-mask", "top-k tokens for each <mask>"),
        ("embed", "sentence embeddings"),
        ("tag", "word labels and entities"),
        ("classify", "text labels"),
    ]:
        p = sub.add_parser(name, help=help_text + " (texts from arguments, or stdin one per line)")
        p.add_argument("bundle")
        p.add_argument("texts", nargs="*")
        p.add_argument("--precision", choices=["int8", "fp32"], help="default: int8 when present")
        p.add_argument("--threads", type=int, help="default: the CPUs this process may use")
        if name in ("fill-mask", "classify"):
            p.add_argument("--top-k", type=int, default=5 if name == "fill-mask" else 1)
        if name == "embed":
            p.add_argument("--pooling", choices=["mean", "cls"], default="mean")
            p.add_argument("--no-normalize", action="store_true")
        if name in ("embed", "tag"):
            p.add_argument("--window", choices=["truncate", "sliding"], default="truncate")
        if name == "tag":
            p.add_argument("--aggregation", choices=["first", "average", "max"], default="first")
        p.set_defaults(func=_run_task)

    p = sub.add_parser("run", help="streaming, resumable batch job over a JSONL or text file")
    p.add_argument("command_task", metavar="TASK", choices=list(TASK_VERBS))
    p.add_argument("bundle")
    p.add_argument("--input", "-i", required=True, help="JSONL or text file, one record per line; - for stdin")
    p.add_argument("--output", "-o", required=True, help="JSONL results in input order; - for stdout")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--format", choices=["auto", "jsonl", "text"], default="auto")
    p.add_argument("--errors", help="bad records go here (default: OUTPUT.errors.jsonl)")
    p.add_argument("--npy", help="embed: write vectors to this .npy; records carry their row")
    p.add_argument("--precision", choices=["int8", "fp32"])
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own session")
    p.add_argument("--threads", type=int, help="threads per worker (default: CPUs / workers)")
    p.add_argument("--chunk", type=int, default=256, help="records per checkpoint")
    p.add_argument("--top-k", type=int)
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument("--window", choices=["truncate", "sliding"], default="truncate")
    p.add_argument("--aggregation", choices=["first", "average", "max"], default="first")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--restart", action="store_true", help="ignore a previous run's checkpoint")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: Ray Data reads, predicts and writes (OUTPUT is a directory; .jsonl name: JSON files, else Parquet)")
    p.add_argument("--address", help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=int, help="Ray actors (default: cluster CPUs / threads)")
    p.set_defaults(func=_run_job)

    p = sub.add_parser("serve", help="HTTP JSON service with micro-batching (needs flare-onnx[serve])")
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--precision", choices=["int8", "fp32"])
    p.add_argument("--threads", type=int)
    p.add_argument("--api-key", help="require this key (X-API-Key or Bearer); default $FLARE_ONNX_API_KEY")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument("--max-texts", type=int, default=64, help="texts per request")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text")
    p.add_argument("--queue-size", type=int, default=256, help="texts waiting before 503")
    p.add_argument("--max-batch-texts", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds per request before 504")
    p.set_defaults(func=_serve)

    p = sub.add_parser("info", help="verify a bundle and print its manifest summary")
    p.add_argument("bundle")
    p.set_defaults(func=_info)

    p = sub.add_parser("demo", help="export flare-it (or the reference checkpoint offline) and compare with PyTorch")
    p.add_argument("--work-dir", default="artifacts")
    p.add_argument("--model", default="osiria/flare-it")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"flare-onnx: error: {exc}", file=sys.stderr)
        return 2
    except FlareOnnxError as exc:
        print(f"flare-onnx: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"flare-onnx: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
