"""The ``flare-onnx`` command: export, reference, the task verbs, run, serve, info and demo.

The task verbs and their flags are built from the task registry (:mod:`flare_onnx.tasks`),
so the command line takes the same options, with the same defaults and limits, as Python,
the file job, HTTP, serverless and Ray. Options may come before or after the texts.

Runtime verbs import only the runtime; ``export``, ``reference`` and ``demo`` import the
export extra when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from .errors import FlareOnnxError, InputError
from .engine import EXPORT_TASKS, LOAD_OPTIONS, TASKS, Limits, Option

INSTALL_EXPORT = 'pip install ".[export]"  (from a clone of flare-onnx; torch==2.13.0 CPU build first)'


def _version() -> str:
    from . import __version__

    return __version__


def _nullable_int(text: str) -> int | None:
    if text.lower() in ("all", "none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, or null (also: none, all), not {text!r}") from None


def _add_option(parser: argparse.ArgumentParser, opt: Option, *, show_default: bool = True) -> None:
    """Add ``opt`` as a flag whose value is left out of the namespace unless given."""
    default = f" (default: {opt.default})" if show_default and opt.default not in (None, "") else ""
    # the default is left out of the namespace (argparse.SUPPRESS): the help says it once, here
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": opt.help + default, "dest": opt.name}
    if opt.kind is bool:
        parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if opt.choices is not None:
        kwargs["choices"] = opt.choices
    elif opt.kind is int:
        kwargs["type"] = _nullable_int if opt.nullable else int
    elif opt.kind is float:
        kwargs["type"] = float
    parser.add_argument(opt.flag, **kwargs)


def _given(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    return {o.name: getattr(args, o.name) for o in options if hasattr(args, o.name)}


def _texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return list(args.texts)
    # stdin: undecodable bytes become U+FFFD (one text per line), never a crash
    stream = open(sys.stdin.fileno(), encoding="utf-8-sig", errors="replace", closefd=False)
    texts = [line.rstrip("\r\n") for line in stream if line.strip()]
    if not texts:
        raise InputError("no texts: give them as arguments, or one per line on standard input")
    return texts


def _run_task(args: argparse.Namespace) -> int:
    from .engine import load

    spec = TASKS[args.command]
    model = load(args.bundle, **_given(args, LOAD_OPTIONS))
    texts = _texts(args)
    results = model.predict(spec.name, texts, _given(args, spec.options))
    out = [{"text": t, **spec.record(r)} for t, r in zip(texts, results)]
    json.dump(out, sys.stdout, ensure_ascii=False, indent=2 if sys.stdout.isatty() else None)
    sys.stdout.write("\n")
    return 0


def _job_options() -> list[Option]:
    """Every task option once (by name), for ``run``, whose task is an argument: the flag
    takes what any task's option of that name takes (``--top-k all`` is classify's), and
    the task's own spec checks the value."""
    seen: dict[str, Option] = {}
    for spec in TASKS.values():
        for o in spec.options:
            first = seen.setdefault(o.name, o)
            choices = (
                None if first.choices is None or o.choices is None else tuple(dict.fromkeys(first.choices + o.choices))
            )
            seen[o.name] = dataclasses.replace(
                first,
                nullable=first.nullable or o.nullable,
                choices=choices,
                minimum=None,
                maximum=None,
                help=first.help if o.help in first.help else f"{first.help}; for {spec.name}: {o.help}",
            )
    return list(seen.values())


def _run_job(args: argparse.Namespace) -> int:
    from .engine import get_task

    spec = get_task(args.task)
    if args.engine == "local":
        ignored = [flag for flag, given in _LOCAL_IGNORES.items() if given(args)]
        if ignored:
            raise InputError(f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} for --engine ray")
    options = _given(args, _job_options())  # checked once, by the job against the task's spec
    model_options = _given(args, LOAD_OPTIONS)
    if args.engine == "ray":
        ignored = [flag for flag, given in _RAY_IGNORES.items() if given(args)]
        if ignored:
            raise InputError(
                f"--engine ray does not take {', '.join(ignored)} (the local engine does); leave "
                f"{'it' if len(ignored) == 1 else 'them'} out or run without --engine ray"
            )
        if importlib.util.find_spec("ray") is None:
            raise ImportError('--engine ray needs Ray Data: pip install ".[ray]" (Ray is not installed)')
        from .ray_data import run_ray_job

        return run_ray_job(
            spec.name,
            args.bundle,
            args.input,
            args.output,
            address=args.address,
            actors=args.actors,
            batch_size=args.chunk,
            text_column=args.text_field,
            options=options,
            model_options=model_options,
            replace=args.restart,
        )
    from .job import JobConfig, run_job

    cfg = JobConfig(
        task=spec.name,
        bundle=args.bundle,
        input=args.input,
        output=args.output,
        options=options,
        model_options=model_options,
        text_field=args.text_field,
        input_format=args.format,
        errors=args.errors,
        npy=args.npy,
        workers=args.workers,
        chunk=args.chunk,
        progress=False if args.no_progress else None,
        resume=not args.restart,
    )
    return run_job(cfg)


#: flags of `run` that only the local engine honours, and whether each was given
_RAY_IGNORES: dict[str, Callable[[argparse.Namespace], bool]] = {
    "--npy": lambda a: a.npy is not None,
    "--errors": lambda a: a.errors is not None,
    "--format": lambda a: a.format != "auto",
    "--workers": lambda a: a.workers != 1,
    "--no-progress": lambda a: a.no_progress,
}
_LOCAL_IGNORES: dict[str, Callable[[argparse.Namespace], bool]] = {
    "--address": lambda a: a.address is not None,
    "--actors": lambda a: a.actors is not None,
}


def _model_limits(given: list[str], names: list[str], base: Limits) -> dict[str, Limits]:
    """``--limit NAME.FIELD=N`` flags as each named model's limits (the others keep ``base``)."""
    fields: dict[str, dict[str, int | None]] = {}
    for item in given:
        key, sep, value = item.partition("=")
        name, dot, field = key.rpartition(".")
        if not sep or not dot or field not in _SERVICE_LIMITS:
            raise InputError(f"--limit takes NAME.FIELD=N with FIELD one of {', '.join(_SERVICE_LIMITS)}, not {item!r}")
        if name not in names:
            raise InputError(f"--limit {item!r}: no model {name!r} is served (models: {', '.join(names)})")
        try:
            fields.setdefault(name, {})[field] = _nullable_int(value)
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"--limit {item!r}: {exc}") from None
    return {name: dataclasses.replace(base, **values) for name, values in fields.items()}


def _serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve
    from .serve.models import parse_model_args

    limits = dataclasses.replace(Limits.SERVICE, **{name: getattr(args, name) for name in _SERVICE_LIMITS})
    entries, named = parse_model_args(args.bundles, args.name)
    per_model = _model_limits(args.limit or [], [e.name for e in entries], limits)
    entries = [dataclasses.replace(e, limits=per_model.get(e.name)) for e in entries]
    cfg = ServeConfig(
        max_body_bytes=args.max_body_bytes,
        limits=limits,
        queue_size=args.queue_size,
        max_batch_texts=args.max_batch_texts,
        max_wait_ms=args.max_wait_ms,
        slice_ms=args.slice_ms,
        lanes=args.lanes,
        slice_tokens=None if args.slice_tokens is None else max(16, args.slice_tokens),
        deadline_s=args.deadline,
        api_key=_api_key(args.api_key_file),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections_per_ip=max(0, args.max_connections_per_ip),
        http=args.http,
        loop=args.loop,
        reference_fp32=args.reference_fp32,
        allowed_hosts=tuple(h.strip() for h in args.allowed_hosts.split(",")) if args.allowed_hosts else None,
    )
    bundles = entries[0].bundle if len(entries) == 1 and not named else entries
    serve(bundles, host=args.host, port=args.port, cfg=cfg, model_options=_given(args, LOAD_OPTIONS))
    return 0


#: the service's request limits (flare_onnx.engine.Limits, whose defaults these flags show)
_SERVICE_LIMITS = {
    "max_texts": "texts per request",
    "max_chars": "characters per text",
    "max_request_chars": "characters in all texts of a request, prefix included (before tokenizing)",
    "max_tokens": "tokens per request, every window counted",
    "max_candidates": "fill-mask candidates (masks x top_k) per request",
}


def _positive_int(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def _api_key(path: str | None) -> str | None:
    """The API key from a file (first line), so it never shows in the process list."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline().strip()  # a trailing newline or spaces are not part of the key
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the API key file {path!r}: {exc}") from exc
    if not key:
        raise InputError(f"the API key file {path!r} is empty")
    return key


def _info(args: argparse.Namespace) -> int:
    from .engine import choose_backend, verify_bundle

    manifest = verify_bundle(args.bundle)  # every file it can run hashed; the tokenizer probed, as load() does
    summary = {
        "task": manifest.task,
        "tasks": list(manifest.tasks),
        "source": manifest.source or None,
        "graphs": {p: {**g.__dict__, **manifest.files[g.file]} for p, g in manifest.graphs.items()},
        "openvino": {p: {**g.__dict__, **manifest.files[g.file]} for p, g in manifest.openvino.items()} or None,
        "verification": manifest.verification or None,
        "quantization": manifest.quantization or None,
        "vocabulary": manifest.vocabulary,
        "prompts": dict(manifest.prompts),
        "embedding": {"pooling": manifest.pooling, "normalize": manifest.normalize}
        if "embed" in manifest.tasks
        else None,
        "engine": {
            work: {"backend": c.backend, "why": c.reason}
            for work in ("interactive", "bulk")
            for c in [choose_backend("auto", work)]
        },
        "verified": True,
    }
    json.dump(summary, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


def _add_package(sub: Any) -> None:
    p = _command(sub, "package", "a bundle and the runtime as an AWS Lambda package (docs/serverless.md)")
    p.add_argument("bundle")
    p.add_argument("-o", "--output", required=True, help="the zip to write (with --layer: a folder for two zips)")
    p.add_argument(
        "--target",
        choices=["aws-lambda", "gcp", "azure"],
        default="aws-lambda",
        help="where the function runs: a Lambda zip, or a folder for Google Cloud Run functions or Azure "
        "Functions (their build installs requirements.txt; the Lambda-only flags do not apply)",
    )
    p.add_argument("--arch", choices=["x86_64", "arm64"], default="x86_64", help="the function's architecture")
    p.add_argument("--python", choices=["3.11", "3.12", "3.13"], default="3.12", help="the function's runtime")
    p.add_argument(
        "--glibc",
        type=_glibc,
        metavar="X.Y",
        help="the C library of the machine that runs it, for a container image or a test "
        "(default: the Lambda runtime's: 2.26 for python3.11, 2.34 for 3.12 and 3.13)",
    )
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8", help="the graph to ship")
    p.add_argument(
        "--layer", action="store_true", help="a layer zip (the runtime) and a function zip (handler, bundle)"
    )
    p.add_argument("--via-s3", action="store_true", help="accept a zip over the 50 MiB direct-upload limit")
    p.add_argument("--dir", action="store_true", help="write an unzipped folder instead of a zip")
    p.set_defaults(func=_package)


def _glibc(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a glibc version like 2.34, not {text!r}")
    return int(match.group(1)), int(match.group(2))


def _package(args: argparse.Namespace) -> int:
    from .package import build_package, build_source_package

    if args.target != "aws-lambda":
        for flag, given in (("--layer", args.layer), ("--via-s3", args.via_s3), ("--dir", args.dir),
                            ("--glibc", args.glibc is not None)):  # fmt: skip
            if given:
                raise InputError(f"{flag} is for --target aws-lambda")
        folder = build_source_package(args.bundle, args.output, target=args.target, precision=args.precision)
        print(f"{folder}: {sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()) / 1e6:.1f} MB")
        return 0
    made = build_package(
        args.bundle, args.output, arch=args.arch, python=args.python, glibc=args.glibc, precision=args.precision,
        layer=args.layer, via_s3=args.via_s3, keep_dir=args.dir, log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    for path, zipped, unzipped in zip(made.paths, made.zipped, made.unzipped):
        size = f"{zipped / 1e6:.1f} MB zipped, " if zipped else ""
        print(f"{path}: {size}{unzipped / 1e6:.1f} MB unzipped")
    print(f"wheels: {', '.join(made.wheels)}; handler: handler.handler", file=sys.stderr)
    return 0


def _export_api() -> Any:
    try:
        import flare_onnx_export
    except ImportError as exc:
        raise ImportError(f"exporting needs the export extra: {INSTALL_EXPORT} ({exc})") from exc
    return flare_onnx_export


def _export(args: argparse.Namespace) -> int:
    if args.min_doc_freq is not None and not args.prune_vocab:
        raise InputError("--min-doc-freq counts lines of --prune-vocab's corpus; give --prune-vocab CORPUS too")
    api = _export_api()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    api.export_bundle(
        args.model,
        args.output,
        task=args.task,
        precisions=tuple(args.precision),
        revision=args.revision,
        calibration=args.calibration,
        overwrite=args.overwrite,
        fidelity_target=args.fidelity_target,
        target_cpu=args.target_cpu,
        embedding_bits=args.embedding_bits,
        activations=args.activations,
        weight_rounding=args.weight_rounding,
        openvino=args.openvino,
        fidelity=args.fidelity,
        prune_vocab=args.prune_vocab,
        min_doc_freq=1 if args.min_doc_freq is None else args.min_doc_freq,
        prune_words=args.prune_words or 0,
        prompts=_prompts(args.prompt),
        log=log,
    )
    return 0


def _prompts(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--prompt takes NAME=TEXT (for example query='query: '), not {pair!r}")
        out[name.strip()] = text
    return out


def _task_name(text: str) -> str:
    """A runtime task by its name, verb or alias (``ner`` -> ``tag``), as Python and HTTP take it."""
    from .engine import get_task

    try:
        return get_task(text).name
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _export_task(text: str) -> str:
    """An export task, also by a runtime task's name or alias: ``ner`` -> token-classification."""
    if text in EXPORT_TASKS:
        return text
    for export, offered in EXPORT_TASKS.items():
        if offered and text in (offered[0], *TASKS[offered[0]].aliases, TASKS[offered[0]].verb):
            return export
    raise argparse.ArgumentTypeError(
        f"unknown task {text!r}; choose from {', '.join(EXPORT_TASKS)} (or ner, pos, embed, classify)"
    )


def _reference(args: argparse.Namespace) -> int:
    api = _export_api()
    labels = args.labels.split(",") if args.labels else None
    out = api.write_reference(args.output, task=args.task, labels=labels, tiny=args.tiny, seed=args.seed)
    print(f"wrote a Flare-IT-shaped reference checkpoint (random weights) to {out}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    _export_api()
    from flare_onnx_export.demo import run_demo

    return int(run_demo(args.work_dir, model=args.model))


def _add_load_options(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """The model's options as flags; ``defaults`` names those a command sets otherwise (the
    file job runs bulk work), so its help shows what it does."""
    for opt in LOAD_OPTIONS:
        _add_option(p, dataclasses.replace(opt, default=defaults[opt.name]) if opt.name in defaults else opt)


class _Parser(argparse.ArgumentParser):
    """argparse with short errors: the problem, the nearest command or option when it looks
    like a typo, and where the help is (not the whole usage). It keeps its own list of flags and
    commands, so nothing reads argparse's private parts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: list[str] = []  # set before argparse's own __init__ adds --help
        self.commands: Mapping[str, argparse.ArgumentParser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags += action.option_strings
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{_did_you_mean(self, message)}\n(see `{self.prog} --help`)\n")


def _did_you_mean(parser: _Parser, message: str) -> str:
    wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if wrong:
        word, known = wrong.group(1), re.findall(r"'?([\w.-]+)'?", wrong.group(2))
    else:
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if not unknown:
            return ""
        word = unknown.group(1).split("=")[0]
        known = parser.flags
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_parser() -> _Parser:
    parser = _Parser(prog="flare-onnx", description="Export osiria/flare-it to INT8 ONNX and run it without torch.")
    parser.add_argument("--version", action="version", version=f"flare-onnx {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export(sub)
    _add_reference(sub)
    for spec in TASKS.values():
        p = _command(sub, spec.name, f"{spec.summary} (texts as arguments, or stdin one per line)")
        p.add_argument("bundle")
        p.add_argument("texts", nargs="*")
        for opt in spec.options:
            _add_option(p, opt)
        _add_load_options(p)
        p.set_defaults(func=_run_task)
    _add_run(sub)
    _add_serve(sub)
    p = _command(sub, "info", "verify a bundle and print its manifest summary")
    p.add_argument("bundle")
    p.set_defaults(func=_info)
    _add_package(sub)
    parser.commands = sub.choices
    p = _command(sub, "demo", "export flare-it (or the reference checkpoint offline) and compare with PyTorch")
    p.add_argument("--work-dir", default="artifacts")
    p.add_argument("--model", default="osiria/flare-it")
    p.set_defaults(func=_demo)
    return parser


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every option's default."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, formatter_class=_DefaultsShown)
    return parser


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, once; none where there is nothing to show (a flag
    that is off, an option that is unset unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _add_export(sub: Any) -> None:
    p = _command(sub, "export", "export a checkpoint to a bundle (needs the export extra)")
    p.add_argument("model", nargs="?", default="osiria/flare-it", help="Hub id or local directory")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    p.add_argument(
        "--task",
        type=_export_task,
        metavar="TASK",
        help=f"{', '.join(EXPORT_TASKS)}, or a runtime task or alias (ner, pos, embed, classify...); "
        f"default: the checkpoint's architecture",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "int8"],
        default=["fp32", "int8"],
        help="graphs to write; --precision int8 leaves out the FP32 graph (a bundle about 5x smaller)",
    )
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--calibration", help="Italian text (one sentence per line, or CoNLL-U) for checks")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--fidelity-target",
        type=float,
        default=0.995,
        help="least mean cosine of INT8 to PyTorch FP32 on the calibration text",
    )
    p.add_argument(
        "--prune-vocab",
        metavar="CORPUS",
        help="cut the vocabulary to the tokens this text uses (a file, a folder, or - for stdin), "
        "as flare-it was made from mMiniLMv2",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="a prompt to store with the model, used as embed --prompt NAME (E5: query='query: ')",
    )
    p.add_argument(
        "--prune-words",
        type=_positive_int,
        metavar="N",
        help="prune to (--prune-vocab's corpus and) the N most frequent Italian words, as text writes "
        'them (wordfreq; pip install ".[prune]"); 400000 takes the whole list (docs/export.md)',
    )
    p.add_argument(
        "--min-doc-freq",
        type=float,
        metavar="COUNT_OR_SHARE",
        help="with --prune-vocab: lines a token must appear in (a count, or a share below 1; when not given: 1)",
    )
    _add_int8_options(p)
    p.add_argument(
        "--openvino",
        action="store_true",
        help="also write an OpenVINO INT8 IR (NNCF) for --backend openvino (docs/benchmarks.md compares the engines)",
    )
    p.set_defaults(func=_export)


def _add_int8_options(p: Any) -> None:
    """export's options for the INT8 graph's recipe (docs/int8.md)."""
    p.add_argument(
        "--fidelity",
        choices=["fast", "balanced", "faithful"],
        default="fast",
        help="INT8 preset: fast (every MatMul dynamic INT8), balanced (FFN outputs block-quantized), "
        "faithful (every FFN MatMul and more block-quantized, nearest neighbours kept); docs/int8.md",
    )
    p.add_argument(
        "--target-cpu",
        choices=["auto", "vnni", "avx2", "arm64"],
        default="auto",
        help="CPU the INT8 graph is built for (default: this machine's; arm64 and vnni keep full-range "
        "weights, avx2 halves their range for its saturating kernel; docs/edge.md)",
    )
    p.add_argument(
        "--embedding-bits",
        choices=["auto", "8", "4"],
        default="auto",
        help="the INT8 graph's word-embedding table: 8-bit rows, or 4-bit blocks of 32 (half the size; "
        "auto: 4 where that loses nothing, as for weights already in 4-bit blocks; docs/int8.md)",
    )
    p.add_argument(
        "--activations",
        choices=["per-row", "per-tensor"],
        default="per-row",
        help="how the INT8 graph quantizes each MatMul's input: per-row (the default) quantizes every token on "
        "its own — LayerNorm outputs smoothed into the weights with a scale fixed at export, the others with "
        "the token's own scale — so a text's vector never depends on its batch; per-tensor is the 0.2 recipe, "
        "one scale per call (e5 nearest neighbours 79%% with it, 95%% per row, same speed; docs/int8.md)",
    )
    p.add_argument(
        "--weight-rounding",
        choices=["gptq", "nearest"],
        default="gptq",
        help="the INT8 weights' integers: gptq (the default) rounds them against the calibration text's "
        "activations, so each layer's output error is what is minimized (the same grid, size and speed); "
        "nearest rounds each weight on its own, as 0.2 did; docs/int8.md",
    )


def _add_reference(sub: Any) -> None:
    p = _command(sub, "reference", "write the Flare-IT-shaped reference checkpoint (random weights)")
    p.add_argument("output")
    p.add_argument("--task", choices=["fill-mask", "token-classification", "text-classification"], default="fill-mask")
    p.add_argument("--labels", help="comma-separated labels for a classification head")
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same architecture, for tests")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_reference)


def _add_run(sub: Any) -> None:
    p = _command(sub, "run", "streaming, resumable batch job over a JSONL or text file")
    p.add_argument(
        "task",
        metavar="TASK",
        type=_task_name,
        help=f"{', '.join(TASKS)}, or an alias (ner, pos, embedding, ...): as every surface takes them",
    )
    p.add_argument("bundle")
    p.add_argument("--input", "-i", required=True, help="JSONL or text file, one record per line; - for stdin")
    p.add_argument("--output", "-o", required=True, help="JSONL results in input order; - for stdout")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--format", choices=["auto", "jsonl", "text"], default="auto")
    p.add_argument("--errors", help="bad records go here (when not given: OUTPUT.errors.jsonl)")
    p.add_argument("--npy", help="embed: write vectors to this .npy; records carry their row")
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own session")
    p.add_argument("--chunk", type=int, default=256, help="records per checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--restart",
        action="store_true",
        help="ignore a previous run's checkpoint and replace its output (with --engine ray: replace the output folder)",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: Ray Data reads, predicts and writes (OUTPUT is a directory; .jsonl name: JSON files, else Parquet)",
    )
    p.add_argument("--address", help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=int, help="Ray actors (default: cluster CPUs / threads)")
    for opt in _job_options():
        _add_option(p, opt, show_default=False)
    _add_load_options(p, workload="bulk")
    p.set_defaults(func=_run_job)


def _add_scheduling(p: argparse.ArgumentParser) -> None:
    """serve's queue, batching, fairness and deadline flags."""
    p.add_argument("--queue-size", type=int, default=256, help="texts waiting before 503")
    p.add_argument("--max-batch-texts", type=int, default=64, help="texts in one round of the inference thread")
    p.add_argument(
        "--slice-ms",
        type=float,
        default=25.0,
        help="a request is served in slices of about this much model time, one per request per round (fairness); "
        "each model's speed is measured at start and as it serves",
    )
    p.add_argument("--slice-tokens", type=int, help="slices of a fixed token count instead of --slice-ms")
    p.add_argument(
        "--lanes",
        type=_positive_int,
        help="inference threads, each with threads/lanes onnxruntime threads: with 2, a long text holds one lane "
        "while the other serves everyone else (default: 2 for several models on 2+ CPUs, else 1; docs/serving.md)",
    )
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds per request before 504")


def _add_door(p: argparse.ArgumentParser) -> None:
    """serve's address, key and Host names."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--api-key-file", help="require the key on this file's first line (or set $FLARE_ONNX_API_KEY)")
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated Host names the service answers ('*': any; 'loopback': every loopback address); "
        "default: the loopback names on a loopback bind, any otherwise",
    )


def _add_serve(sub: Any) -> None:
    p = _command(sub, "serve", "HTTP JSON service with micro-batching (needs the serve extra)")
    p.add_argument(
        "bundles",
        nargs="+",
        metavar="[NAME=]BUNDLE",
        help="the bundle(s) to serve: one, or several as NAME=PATH (ner=./ner pos=./pos embed=./e5), one process "
        "and one CPU budget for all; the first is also served at /v1/{task}",
    )
    p.add_argument("--name", help="the name of a single bundle (/v1/models/NAME/..., the OpenAI 'model' field)")
    p.add_argument(
        "--limit",
        action="append",
        metavar="NAME.FIELD=N",
        help="a limit of one model (repeatable), e.g. ner.max_texts=16; FIELD is one of the --max-* limits below",
    )
    _add_door(p)
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    for name, help in _SERVICE_LIMITS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_nullable_int,
            default=getattr(Limits.SERVICE, name),
            metavar="N",
            help=f"{help} (none: no limit)",
        )
    _add_scheduling(p)
    p.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP parser (auto: httptools where installed)",
    )
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop (auto: uvloop where installed)",
    )
    p.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=128,
        help="open connections from one client address (0: no cap, e.g. behind a proxy)",
    )
    p.add_argument(
        "--reference-fp32",
        action="store_true",
        help="also serve the bundle's FP32 graph at /v1/reference/... (the page shows INT8 beside FP32; more memory)",
    )
    for flag, what in (
        ("--header-timeout", "head to arrive (slow clients are cut off)"),
        ("--body-timeout", "body to arrive, then 408"),
    ):
        p.add_argument(flag, type=_seconds, default=10.0, help=f"seconds for a request's {what}")
    _add_load_options(p)
    p.set_defaults(func=_serve)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; a command's options may stand before or after its texts."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in parser.commands:
        return parser.parse_args(argv)  # --help, --version, or an error naming the commands
    # argparse cannot intermix options and positionals through subparsers: the command's own
    # parser takes everything after the command name, in intermixed mode.
    args: argparse.Namespace = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.func(args))
    except FlareOnnxError as exc:
        print(f"flare-onnx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:
        print(f"flare-onnx: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"flare-onnx: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "; run the same command again to resume where it stopped" if args.command == "run" else ""
        print(f"flare-onnx: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
