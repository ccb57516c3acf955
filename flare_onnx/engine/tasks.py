"""The task registry: the one place that says what each task is.

A :class:`~.options.TaskSpec` names a task (and its aliases), the verb that runs it, the graph inputs
and outputs it needs, its options (type, default, allowed values, limits), and the key its
result goes under. Every surface reads it: the Python verbs validate their options with it,
the CLI builds its flags from it, the file job, the HTTP service (and its OpenAPI document),
the serverless handler and Ray Data check requests against it, and bundles are checked
against it when they are opened. A task's ``run`` (in :mod:`.runners` for the built-in ones)
turns the graph's outputs into results. Adding a task is one :class:`TaskSpec` with its
runner, given to :func:`register_task` (``tests/test_layout.py`` adds one and finds it on the
CLI, over HTTP with its OpenAPI entry, and in the file job).

    >>> from flare_onnx.engine import get_task
    >>> spec = get_task("fill-mask")
    >>> spec.parse_options({"top_k": 3})
    {'top_k': 3}
"""

from __future__ import annotations

from ..errors import InputError
from .options import MAX_TOP_K, Option, TaskSpec
from .runners import run_classify, run_embed, run_fill_mask, run_tag

__all__ = ["TASKS", "EXPORT_TASKS", "get_task", "register_task", "unregister_task"]

_WINDOW = Option(
    "window",
    str,
    "truncate",
    "'truncate' reads the first max_length tokens; 'sliding' covers the whole text with overlapping windows",
    choices=("truncate", "sliding"),
)
_STRIDE = Option(
    "stride",
    int,
    None,
    "tokens shared by consecutive sliding windows (default: a quarter of max_length)",
    minimum=0,
    nullable=True,
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
            options=(Option("top_k", int, 5, f"candidates per mask, 1 to {MAX_TOP_K}", minimum=1, maximum=MAX_TOP_K),),
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
                Option(
                    "pooling",
                    str,
                    None,
                    "'mean' over all tokens, 'cls' (the <s> vector) or 'max' (each dimension's largest value); "
                    "default: the bundle's (its checkpoint's sentence-transformers pooling, else mean)",
                    choices=("mean", "cls", "max"),
                    nullable=True,
                ),
                Option(
                    "normalize",
                    bool,
                    None,
                    "scale each embedding to unit length; default: the bundle's (on, unless its "
                    "sentence-transformers checkpoint has no Normalize module)",
                    nullable=True,
                ),
                Option("prefix", str, "", "text put before every input (E5 models want 'query: ' or 'passage: ')"),
                Option(
                    "prompt",
                    str,
                    "",
                    "the name of a prompt stored with the model, put before every input "
                    "(E5: 'query' or 'passage'; flare-onnx info lists them)",
                ),
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
                    "aggregation",
                    str,
                    "first",
                    "how sub-tokens vote for their word",
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
                Option(
                    "top_k",
                    int,
                    1,
                    f"labels per text, 1 to {MAX_TOP_K} (null: all)",
                    minimum=1,
                    maximum=MAX_TOP_K,
                    nullable=True,
                ),
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
        raise InputError(
            f"offered_by must name export tasks among {', '.join(EXPORT_TASKS)}, not {list(spec.offered_by)}"
        )
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
