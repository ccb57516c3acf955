"""The task registry: the one place that says what each task is.

A :class:`TaskSpec` names a task (and its aliases), the verb that runs it, the graph inputs
and outputs it needs, its options (type, default, allowed values, limits), and the key its
result goes under. Every surface reads it: the Python verbs validate their options with it,
the CLI builds its flags from it, the file job, the HTTP service (and its OpenAPI document),
the serverless handler and Ray Data check requests against it, and bundles are checked
against it when they are opened. A task's ``run`` (in :mod:`.runners` for the built-in ones)
turns the graph's outputs into results. Adding a task is one :class:`TaskSpec` with its
runner, given to :func:`register_task` (``tests/test_layout.py`` adds one and finds it on the
CLI, over HTTP with its OpenAPI entry, and in the file job).

    >>> from flare_onnx.tasks import get_task
    >>> spec = get_task("fill-mask")
    >>> spec.parse_options({"top_k": 3})
    {'top_k': 3}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ._json import to_jsonable
from .runners import run_classify, run_embed, run_fill_mask, run_tag

__all__ = [
    "Option",
    "TaskSpec",
    "TASKS",
    "EXPORT_TASKS",
    "LOAD_OPTIONS",
    "get_task",
    "register_task",
    "unregister_task",
    "parse_load_options",
    "MAX_TOP_K",
]

#: The most candidates one ``<mask>`` (or one text's labels) may ask for. Bounds the work
#: and the answer of a single request: 14,610 candidates per mask × 500 masks is ~35 GB.
MAX_TOP_K = 100

_UNSET: Any = object()


@dataclass(frozen=True)
class Option:
    """One option of a task: its JSON type, default, allowed values and limits."""

    name: str
    kind: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    nullable: bool = False  # None is a valid value (and means what ``help`` says)

    @property
    def flag(self) -> str:
        """The command-line flag: ``top_k`` -> ``--top-k``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """Check one value (from Python, JSON or the CLI) and return it.

        Raises:
            InputError: the wrong type (``"no"`` is not a boolean, ``True`` is not an
                integer), not one of the choices, or out of range.
        """
        if value is None:
            if self.nullable:
                return None
            raise InputError(f"option {self.name} may not be null; {self.help}")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, self.kind):
            raise InputError(
                f"option {self.name} must be {_kind_name(self.kind)}, not {value!r}; {self.help}"
            )
        if self.choices is not None and value not in self.choices:
            raise InputError(
                f"option {self.name} must be one of {', '.join(map(repr, self.choices))}, not {value!r}"
            )
        if self.minimum is not None and value < self.minimum:  # type: ignore[operator]
            raise InputError(f"option {self.name} must be at least {self.minimum}, not {value!r}")
        if self.maximum is not None and value > self.maximum:  # type: ignore[operator]
            raise InputError(f"option {self.name} must be at most {self.maximum}, not {value!r}")
        return value

    def parse_text(self, raw: str) -> Any:
        """Check a value given as text (an environment variable): ``"2"``, ``"false"``, ``"none"``."""
        text = raw.strip()
        if self.nullable and text.lower() in ("", "none", "null"):
            return None
        value: Any = text
        if self.kind is bool:
            truth = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
            if text.lower() not in truth:
                raise InputError(f"option {self.name} must be true or false, not {raw!r}")
            value = truth[text.lower()]
        elif self.kind in (int, float):
            try:
                value = self.kind(text)
            except ValueError as exc:
                raise InputError(f"option {self.name} must be {_kind_name(self.kind)}, not {raw!r}") from exc
        return self.parse(value)

    def json_schema(self) -> dict[str, Any]:
        """The option as an OpenAPI 3.0 schema."""
        schema: dict[str, Any] = {"type": _JSON_TYPES[self.kind], "description": self.help}
        if self.default is not None:
            schema["default"] = self.default
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.nullable:
            schema["nullable"] = True
        return schema


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


@dataclass(frozen=True)
class TaskSpec:
    """What one task is, for every surface."""

    name: str  # the public name: CLI verb, HTTP route, serverless "task", file job task
    verb: str  # the FlareModel method (or, for a registered task, its Python name)
    summary: str
    aliases: tuple[str, ...]
    graph_inputs: tuple[str, ...]  # what the graph must take (beyond these, nothing)
    graph_outputs: tuple[str, ...]  # what the graph must give for this verb
    result_key: str  # a result record is {result_key: value} on every surface
    run: Callable[[Any, Any], list[Any]]  # (FlareModel, Request) -> one result per text
    options: tuple[Option, ...] = field(default=())
    offered_by: tuple[str, ...] = ()  # the export tasks (EXPORT_TASKS keys) whose bundles offer it

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise InputError(self._unknown(name))

    def _unknown(self, name: str) -> str:
        takes = ", ".join(self.option_names) or "no options"
        return f"{self.name} has no option {name!r}; it takes {takes}"

    def parse_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Validate ``options`` and return them (unknown names and bad values raise).

        Defaults are not filled in: the verbs' own keyword defaults are the registry's.
        """
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            raise InputError(f"{self.name} options must be an object, not {type(options).__name__}")
        out: dict[str, Any] = {}
        for name, value in options.items():
            if not isinstance(name, str) or name not in self.option_names:
                raise InputError(self._unknown(str(name)))
            out[name] = self.option(name).parse(value)
        return out

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def resolve(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option of the task: the defaults, overridden by ``options`` (checked)."""
        return {**self.defaults(), **self.parse_options(options)}

    def record(self, value: Any) -> dict[str, Any]:
        """One text's result as the JSON record every surface writes: ``{result_key: value}``."""
        return {self.result_key: to_jsonable(value)}


_WINDOW = Option(
    "window", str, "truncate",
    "'truncate' reads the first max_length tokens; 'sliding' covers the whole text with overlapping windows",
    choices=("truncate", "sliding"),
)
_STRIDE = Option(
    "stride", int, None,
    "tokens shared by consecutive sliding windows (default: a quarter of max_length)",
    minimum=0, nullable=True,
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="fill-mask",
            verb="fill_mask",
            summary="the most likely tokens for each <mask>",
            aliases=("fill_mask", "fillmask"),
            graph_inputs=("input_ids", "attention_mask", "mask_positions"),
            graph_outputs=("mask_logits",),
            result_key="masks",
            run=run_fill_mask,
            offered_by=("fill-mask",),
            options=(
                Option("top_k", int, 5, f"candidates per mask, 1 to {MAX_TOP_K}", minimum=1, maximum=MAX_TOP_K),
            ),
        ),
        TaskSpec(
            name="embed",
            verb="embed",
            summary="sentence embeddings",
            aliases=("embedding", "embeddings", "feature-extraction"),
            graph_inputs=("input_ids", "attention_mask"),
            graph_outputs=("last_hidden_state",),
            result_key="embedding",
            run=run_embed,
            offered_by=("fill-mask", "feature-extraction"),
            options=(
                Option("pooling", str, "mean", "'mean' over all tokens or 'cls' (the <s> vector)", choices=("mean", "cls")),
                Option("normalize", bool, True, "scale each embedding to unit length"),
                Option("prefix", str, "", "text put before every input (E5 models want 'query: ' or 'passage: ')"),
                Option("prompt", str, "", "the name of a prompt stored with the model, put before every input "
                                          "(E5: 'query' or 'passage'; flare-onnx info lists them)"),
                _WINDOW,
                _STRIDE,
            ),
        ),
        TaskSpec(
            name="tag",
            verb="tag",
            summary="a label per word and the entities they form (PoS, NER)",
            aliases=("token-classification", "ner", "pos"),
            graph_inputs=("input_ids", "attention_mask"),
            graph_outputs=("logits",),
            result_key="tags",
            run=run_tag,
            offered_by=("token-classification",),
            options=(
                Option(
                    "aggregation", str, "first", "how sub-tokens vote for their word",
                    choices=("first", "average", "max"),
                ),
                _WINDOW,
                _STRIDE,
            ),
        ),
        TaskSpec(
            name="classify",
            verb="classify",
            summary="labels of each text with their probabilities",
            aliases=("text-classification", "classification"),
            graph_inputs=("input_ids", "attention_mask"),
            graph_outputs=("logits",),
            result_key="labels",
            run=run_classify,
            offered_by=("text-classification",),
            options=(
                Option("top_k", int, 1, f"labels per text, 1 to {MAX_TOP_K} (null: all)", minimum=1, maximum=MAX_TOP_K, nullable=True),
            ),
        ),
    )
}

#: Export task (what a bundle was exported for) -> the tasks it offers, in registry order.
EXPORT_TASKS: dict[str, tuple[str, ...]] = {
    export: tuple(spec.name for spec in TASKS.values() if export in spec.offered_by)
    for export in ("fill-mask", "feature-extraction", "token-classification", "text-classification")
}

_BY_ALIAS = {alias: spec for spec in TASKS.values() for alias in (spec.name, spec.verb, *spec.aliases)}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry: every surface built afterwards offers it (CLI verb, HTTP
    route and OpenAPI entry, file job, serverless, Ray Data) on bundles of ``spec.offered_by``.

    Raises:
        InputError: the name or an alias is taken, or an export task is unknown.
    """
    taken = [a for a in (spec.name, spec.verb, *spec.aliases) if a in _BY_ALIAS]
    if taken:
        raise InputError(f"task name(s) {', '.join(map(repr, taken))} are taken; choose others")
    unknown = [t for t in spec.offered_by if t not in EXPORT_TASKS]
    if unknown or not spec.offered_by:
        raise InputError(f"offered_by must name export tasks among {', '.join(EXPORT_TASKS)}, not {list(spec.offered_by)}")
    TASKS[spec.name] = spec
    for alias in (spec.name, spec.verb, *spec.aliases):
        _BY_ALIAS[alias] = spec
    for export in spec.offered_by:
        EXPORT_TASKS[export] = (*EXPORT_TASKS[export], spec.name)
    return spec


def unregister_task(name: str) -> None:
    """Remove a task added with :func:`register_task` (built-in tasks stay)."""
    spec = TASKS.get(name)
    if spec is None or spec.run in _BUILT_IN_RUNNERS:
        raise InputError(f"{name!r} is not a registered task")
    del TASKS[name]
    for alias in (spec.name, spec.verb, *spec.aliases):
        _BY_ALIAS.pop(alias, None)
    for export in spec.offered_by:
        EXPORT_TASKS[export] = tuple(t for t in EXPORT_TASKS[export] if t != name)


_BUILT_IN_RUNNERS = (run_fill_mask, run_embed, run_tag, run_classify)


def get_task(name: object) -> TaskSpec:
    """The spec of a task by its name, verb or alias (``"fill-mask"``, ``"fill_mask"``).

    Raises:
        InputError: no such task.
    """
    spec = _BY_ALIAS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InputError(f"task must be one of {', '.join(TASKS)}, not {name!r}")
    return spec


#: Options of the model itself (how it runs), the same on every surface.
LOAD_OPTIONS: tuple[Option, ...] = (
    Option("precision", str, None, "'int8' or 'fp32' (default: int8 when the bundle has it)", choices=("int8", "fp32"), nullable=True),
    Option(
        "backend", str, "auto",
        "'onnxruntime' (lean, quick to start), 'openvino' (the bundle's OpenVINO IR; export with "
        "--openvino) or 'auto': onnxruntime, for interactive and bulk work alike",
        choices=("auto", "onnxruntime", "openvino"),
    ),
    Option(
        "workload", str, "interactive",
        "'interactive' (requests, batch 1) or 'bulk' (the file job and Ray set it): "
        "bulk work on onnxruntime runs one batch per thread at once",
        choices=("interactive", "bulk"),
    ),
    Option("threads", int, None, "onnxruntime threads (default: the CPUs this process may use)", minimum=1, maximum=1024, nullable=True),
    Option("max_batch_tokens", int, 1024, "tokens in one batch (batch x padded length); bounds memory", minimum=16, maximum=1 << 20),
    Option("max_batch_size", int, 64, "texts in one batch", minimum=1, maximum=4096),
    Option(
        "max_text_tokens", int, 65_536,
        "tokens one text may hold, read in sliding windows (null: no cap, for trusted batch jobs)",
        minimum=16, maximum=1 << 26, nullable=True,
    ),
    Option(
        "arena", bool, True,
        "keep onnxruntime's memory arena (faster; off keeps RSS from holding its high-water mark)",
    ),
    Option(
        "spin", bool, False,
        "let onnxruntime's threads spin while a call runs instead of sleeping (faster on a "
        "machine of its own, slower for everyone on a shared one; turn on only on a dedicated machine)",
    ),
)


def parse_load_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate options of :func:`flare_onnx.load` given by name (from any surface)."""
    known = {o.name: o for o in LOAD_OPTIONS}
    out = {}
    for name, value in options.items():
        if name not in known:
            raise InputError(f"unknown model option {name!r}; the model takes {', '.join(known)}")
        out[name] = known[name].parse(value)
    return out
