"""What a task is and what a model takes, as data: :class:`Option`, :class:`TaskSpec` and
the model's own :data:`LOAD_OPTIONS`. This module imports nothing of the engine, so every
layer (the request, the registry, the bundle reader, the surfaces) can read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ._json import to_jsonable

__all__ = ["Option", "TaskSpec", "ResolvedOptions", "LOAD_OPTIONS", "parse_load_options", "MAX_TOP_K"]

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
            raise InputError(f"option {self.name} must be {_kind_name(self.kind)}, not {value!r}; {self.help}")
        if self.choices is not None and value not in self.choices:
            raise InputError(f"option {self.name} must be one of {', '.join(map(repr, self.choices))}, not {value!r}")
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
            truth = {
                "1": True,
                "true": True,
                "yes": True,
                "on": True,
                "0": False,
                "false": False,
                "no": False,
                "off": False,
            }
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


class ResolvedOptions(dict[str, Any]):
    """A task's options, checked and with every default filled in (:meth:`TaskSpec.resolve`)."""

    def __init__(self, task: str, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.task = task


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

    def resolve(self, options: Mapping[str, Any] | None = None) -> ResolvedOptions:
        """Every option of the task: the defaults, overridden by ``options`` (checked). Options
        this spec resolved already come back as they are: a job or a Ray actor parses its
        options once and hands the result to every chunk."""
        if isinstance(options, ResolvedOptions) and options.task == self.name:
            return options
        return ResolvedOptions(self.name, {**self.defaults(), **self.parse_options(options)})

    def record(self, value: Any) -> dict[str, Any]:
        """One text's result as the JSON record every surface writes: ``{result_key: value}``."""
        return {self.result_key: to_jsonable(value)}


#: Options of the model itself (how it runs), the same on every surface.
LOAD_OPTIONS: tuple[Option, ...] = (
    Option(
        "precision",
        str,
        None,
        "'int8' or 'fp32' (default: int8 when the bundle has it)",
        choices=("int8", "fp32"),
        nullable=True,
    ),
    Option(
        "backend",
        str,
        "auto",
        "'onnxruntime' (lean, quick to start), 'openvino' (the bundle's OpenVINO IR; export with "
        "--openvino) or 'auto': onnxruntime, for interactive and bulk work alike",
        choices=("auto", "onnxruntime", "openvino"),
    ),
    Option(
        "workload",
        str,
        "interactive",
        "'interactive' (requests, batch 1) or 'bulk' (the file job and Ray set it): "
        "bulk work on onnxruntime runs one batch per thread at once",
        choices=("interactive", "bulk"),
    ),
    Option(
        "threads",
        int,
        None,
        "onnxruntime threads (default: the CPUs this process may use)",
        minimum=1,
        maximum=1024,
        nullable=True,
    ),
    Option(
        "max_batch_tokens",
        int,
        1024,
        "tokens in one batch (batch x padded length); bounds memory",
        minimum=16,
        maximum=1 << 20,
    ),
    Option("max_batch_size", int, 64, "texts in one batch", minimum=1, maximum=4096),
    Option(
        "max_text_tokens",
        int,
        65_536,
        "tokens one text may hold, read in sliding windows (null: no cap, for trusted batch jobs)",
        minimum=16,
        maximum=1 << 26,
        nullable=True,
    ),
    Option(
        "arena",
        bool,
        True,
        "keep onnxruntime's memory arena (faster; off keeps RSS from holding its high-water mark)",
    ),
    Option(
        "spin",
        bool,
        False,
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
