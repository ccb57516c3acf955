"""Drop-in replacements for transformers' pipelines, torch-free.

``flare_onnx.pipeline(task, model)`` takes the place of ``transformers.pipeline(task, model=...)``
and answers with the same shapes, keys and values, so code written against the model card's
snippet keeps working::

    >>> import flare_onnx
    >>> fill = flare_onnx.pipeline("fill-mask", "flare-it-onnx")
    >>> fill("milano è una <mask> dell'italia")[0]["token_str"]
    'città'

What is the same as transformers (pinned by ``tests/test_pipelines.py`` against transformers'
own pipelines on the same checkpoint): the tasks and their aliases, single-string versus list
inputs, every result key, ``top_k``/``targets`` of fill-mask, the five ``aggregation_strategy``
values and ``ignore_labels`` of token classification, ``top_k``/``function_to_apply`` of text
classification, and the decoded ``token_str``/``sequence``/``word`` strings. What differs:
scores are Python floats, not numpy scalars; ``top_k`` is capped at
:data:`flare_onnx.tasks.MAX_TOP_K` as on every flare-onnx surface; long inputs are truncated to
the bundle's ``max_length`` (``stride`` turns on sliding windows for token classification);
``batch_size`` is accepted and ignored, as flare-onnx batches by a token budget itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .engine import MAX_TOP_K, FlareModel, class_scores, entity_runs, get_task, load

__all__ = [
    "pipeline",
    "FillMaskPipeline",
    "TokenClassificationPipeline",
    "TextClassificationPipeline",
    "FeatureExtractionPipeline",
]

AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")
FUNCTIONS = ("softmax", "sigmoid", "none")


def _clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization``: the spaces WordPiece decoding leaves before
    punctuation and English contractions."""
    for a, b in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(a, b)
    return text


def _top_k(value: Any) -> int:
    """``top_k`` checked by the registry's own option (its type and limits), with a message in
    the pipeline's words."""
    try:
        k: int = get_task("fill-mask").option("top_k").parse(value)
    except InputError as exc:
        raise InputError(f"top_k must be an integer from 1 to {MAX_TOP_K}, not {value!r}") from exc
    return k


class _Pipeline:
    """What every pipeline shares: the model, call-time options over construction-time ones,
    and single-string versus list inputs."""

    task = ""
    _options: tuple[str, ...] = ()

    def __init__(self, model: FlareModel, options: Mapping[str, Any]) -> None:
        self.model = model
        self._defaults = self._check(options)

    def _check(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [name for name in options if name not in (*self._options, "batch_size")]
        if unknown:
            raise InputError(
                f"the {self.task} pipeline has no option {unknown[0]!r}; it takes {', '.join(self._options)}"
            )
        return {name: value for name, value in options.items() if name != "batch_size"}

    def _inputs(self, inputs: object) -> tuple[list[str], bool]:
        """The texts, and whether one string (not a list) was given; the request checks them."""
        if isinstance(inputs, str):
            return [inputs], True
        if isinstance(inputs, Sequence):
            return list(inputs), False
        raise InputError(f"the {self.task} pipeline takes a string or a list of strings, not {type(inputs).__name__}")

    def _decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        text: str = self.model.tokenizer.tokenizer.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)
        if self.model.manifest.clean_up_tokenization_spaces:
            text = _clean_up(text)
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


class FillMaskPipeline(_Pipeline):
    """``fill-mask``: per mask, a list of ``{"score", "token", "token_str", "sequence"}``."""

    task = "fill-mask"
    _options = ("top_k", "targets")

    def __call__(self, inputs: str | Sequence[str], **options: Any) -> list[Any]:
        """Fill every ``<mask>``.

        Args:
            inputs: a text or a list of texts, each with one ``<mask>`` or more.
            top_k: candidates per mask (default 5).
            targets: a token or a list of tokens to score instead of the whole vocabulary
                (a word missing from the vocabulary stands for its first token, as in transformers).

        Returns:
            As transformers: for one text with one mask, a list of candidates; with several
            masks, a list per mask; for a list of texts, one such result per text (a list of
            one text gives that text's result).
        """
        opts = {**self._defaults, **self._check(options)}
        k = _top_k(opts.get("top_k", get_task("fill-mask").option("top_k").default))
        texts, _single = self._inputs(inputs)
        target_ids = self._target_ids(opts["targets"]) if opts.get("targets") is not None else None
        if target_ids is not None:
            k = min(k, len(target_ids))
        request = self.model.request("fill-mask", texts, {"top_k": k})
        pad = self.model.manifest.special.pad_id
        results: list[Any] = []
        for window, positions, probs in zip(
            request.windows, request.mask_rows or [], self.model.mask_probabilities(request)
        ):
            single_mask = len(positions) == 1
            per_mask = []
            for position, p in zip(positions, probs):
                p = p if target_ids is None else p[target_ids]
                candidates = []
                for j in np.argsort(-p, kind="stable")[:k]:
                    token = int(j) if target_ids is None else int(target_ids[j])
                    filled = window.ids.copy()
                    filled[position] = token
                    candidates.append(
                        {
                            "score": float(p[j]),
                            "token": token,
                            "token_str": self._decode([token], skip_special_tokens=False),
                            "sequence": self._decode(filled[filled != pad], skip_special_tokens=single_mask),
                        }
                    )
                per_mask.append(candidates)
            results.append(per_mask[0] if single_mask else per_mask)
        return results[0] if len(results) == 1 else results

    def _target_ids(self, targets: object) -> np.ndarray:
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, Sequence) or not targets or not all(isinstance(t, str) for t in targets):
            raise InputError(f"targets must be a token or a non-empty list of tokens, not {targets!r}")
        tokenizer = self.model.tokenizer.tokenizer
        ids: list[int] = []
        for target in targets:
            token_id = tokenizer.token_to_id(target)
            if token_id is None:
                pieces = tokenizer.encode(target, add_special_tokens=False).ids
                if not pieces:
                    continue
                token_id = pieces[0]
            ids.append(token_id)
        if not ids:
            raise InputError(f"none of the targets {list(targets)!r} is a token of this model's vocabulary")
        return np.array(sorted(set(ids)), dtype=np.int64)


class TokenClassificationPipeline(_Pipeline):
    """``token-classification`` (``ner``): entities or tokens with ``start``/``end`` offsets."""

    task = "token-classification"
    _options = ("aggregation_strategy", "ignore_labels", "stride")

    def __call__(self, inputs: str | Sequence[str], **options: Any) -> list[Any]:
        """Label the tokens of each text and group them as transformers does.

        Args:
            inputs: a text or a list of texts.
            aggregation_strategy: ``"none"`` (one dict per token, with ``entity`` and
                ``index``), ``"simple"`` (adjacent tokens of one type grouped), or ``"first"``,
                ``"average"``, ``"max"`` (words labelled as a whole, then grouped).
            ignore_labels: labels left out of the result (default ``["O"]``).
            stride: label the whole of a long text with windows sharing ``stride`` tokens.

        Returns:
            A list of dicts for one text; a list of such lists for a list of texts.
        """
        opts = {**self._defaults, **self._check(options)}
        strategy = opts.get("aggregation_strategy") or "none"
        if strategy not in AGGREGATION_STRATEGIES:
            raise InputError(
                f"aggregation_strategy must be one of {', '.join(AGGREGATION_STRATEGIES)}, not {strategy!r}"
            )
        ignore = opts.get("ignore_labels")
        ignore = ["O"] if ignore is None else ignore
        if not isinstance(ignore, Sequence) or isinstance(ignore, str) or not all(isinstance(x, str) for x in ignore):
            raise InputError(f"ignore_labels must be a list of labels, not {ignore!r}")
        stride = opts.get("stride")
        texts, single = self._inputs(inputs)
        window = "truncate" if stride is None else "sliding"
        outputs = self.model.label_probabilities(self.model.request("tag", texts, {"window": window, "stride": stride}))
        results = [
            self._entities(text, enc, probs, strategy, set(ignore)) for text, (enc, probs) in zip(texts, outputs)
        ]
        return results[0] if single else results

    def _convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self.model.tokenizer.tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _entities(
        self, text: str, enc: Any, probs: np.ndarray, strategy: str, ignore: set[str]
    ) -> list[dict[str, Any]]:
        labels = self.model.manifest.labels or ()
        unk = self.model.manifest.special.unk_id
        wordpiece = getattr(self.model.tokenizer.tokenizer.model, "continuing_subword_prefix", None)
        tokens = []
        for t in range(len(probs)):  # transformers' gather_pre_entities
            token, (start, end) = enc.tokens[t], enc.offsets[t]
            ref = text[start:end]
            if wordpiece:
                subword = len(token) != len(ref)
            else:
                subword = start > 0 and " " not in text[start - 1 : start + 1]
            if enc.ids[t] == unk:
                token, subword = ref, False
            tokens.append(
                {"word": token, "scores": probs[t], "start": start, "end": end, "index": t + 1, "is_subword": subword}
            )
        if strategy in ("none", "simple"):
            entities = []
            for tok in tokens:
                best = int(tok["scores"].argmax())
                entities.append(
                    {
                        "entity": labels[best],
                        "score": float(tok["scores"][best]),
                        "index": tok["index"],
                        "word": tok["word"],
                        "start": tok["start"],
                        "end": tok["end"],
                    }
                )
        else:
            entities = [self._word(group, strategy) for group in _words(tokens)]
        if strategy != "none":
            entities = [self._group(run) for run in _runs(entities)]
        return [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore]

    def _word(self, group: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        labels = self.model.manifest.labels or ()
        if strategy == "first":
            scores = group[0]["scores"]
        elif strategy == "max":
            scores = max(group, key=lambda tok: tok["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([tok["scores"] for tok in group]), axis=0)
        best = int(scores.argmax())
        return {
            "entity": labels[best],
            "score": float(scores[best]),
            "word": self._convert_tokens_to_string([tok["word"] for tok in group]),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        }

    def _group(self, run: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "entity_group": run[0]["entity"].split("-", 1)[-1],
            "score": float(np.nanmean([e["score"] for e in run])),
            "word": self._convert_tokens_to_string([e["word"] for e in run]),
            "start": run[0]["start"],
            "end": run[-1]["end"],
        }


def _words(tokens: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = []
    for tok in tokens:
        if groups and tok["is_subword"]:
            groups[-1].append(tok)
        else:
            groups.append([tok])
    return groups


def _runs(entities: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Adjacent entities of one type, a ``B-`` starting a new run: the engine's one grouping
    rule in transformers' reading (``iob2``), for parity with transformers' pipeline."""
    return [[entities[i] for i in idx] for _, idx in entity_runs([e["entity"] for e in entities], scheme="iob2")]


class TextClassificationPipeline(_Pipeline):
    """``text-classification`` (``sentiment-analysis``): ``{"label", "score"}``."""

    task = "text-classification"
    _options = ("top_k", "function_to_apply")

    def __call__(self, inputs: str | Sequence[str], **options: Any) -> list[Any]:
        """Classify each text.

        Args:
            inputs: a text or a list of texts.
            top_k: labels per text, most likely first (``None``: all). Without it, as in
                transformers, each text gets its best label as one dict.
            function_to_apply: ``"softmax"``, ``"sigmoid"`` or ``"none"`` (default: what the
                model's problem type calls for).
        """
        opts = {**self._defaults, **self._check(options)}
        legacy = "top_k" not in opts
        k: int | None = 1 if legacy else opts["top_k"]
        if k is not None:
            k = _top_k(k)
        function = opts.get("function_to_apply") or self.model.class_function
        if function not in FUNCTIONS:
            raise InputError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}, not {function!r}")
        texts, single = self._inputs(inputs)
        labels = self.model.manifest.labels or ()
        scores = class_scores(self.model.class_logits(self.model.request("classify", texts)), function)
        results: list[Any] = []
        for row in scores:
            order = np.argsort(-row, kind="stable")
            ranked = [{"label": labels[int(j)], "score": float(row[j])} for j in order[: k or len(labels)]]
            results.append(ranked[0] if legacy else ranked)
        return [results[0]] if single and legacy else (results[0] if single else results)


class FeatureExtractionPipeline(_Pipeline):
    """``feature-extraction``: every token's hidden state, ``[1][tokens][hidden_size]`` per text."""

    task = "feature-extraction"
    _options = ("return_tensors",)

    def __call__(self, inputs: str | Sequence[str], **options: Any) -> Any:
        """The last hidden states of each text's tokens (``<s>`` and ``</s>`` included).

        Args:
            return_tensors: numpy arrays ``[1, tokens, hidden_size]`` instead of nested lists.
        """
        opts = {**self._defaults, **self._check(options)}
        tensors = opts.get("return_tensors", False)
        if not isinstance(tensors, bool):
            raise InputError(f"return_tensors must be true or false, not {tensors!r}")
        texts, single = self._inputs(inputs)
        states = [s[None] if tensors else s[None].tolist() for s in self.model.hidden_states(texts)]
        return states[0] if single else states


_PIPELINES: dict[str, type[_Pipeline]] = {
    "fill-mask": FillMaskPipeline,
    "token-classification": TokenClassificationPipeline,
    "ner": TokenClassificationPipeline,
    "text-classification": TextClassificationPipeline,
    "sentiment-analysis": TextClassificationPipeline,
    "feature-extraction": FeatureExtractionPipeline,
}
_NEEDS = {
    FillMaskPipeline: "fill-mask",
    TokenClassificationPipeline: "tag",
    TextClassificationPipeline: "classify",
    FeatureExtractionPipeline: "embed",
}


def pipeline(
    task: str,
    model: str | Path | FlareModel,
    *,
    tokenizer: object = None,
    device: object = None,
    precision: str | None = None,
    threads: int | None = None,
    backend: str = "onnxruntime",
    spin: bool = False,
    **options: Any,
) -> Any:
    """A transformers-compatible pipeline over a flare-onnx bundle.

    Args:
        task: ``"fill-mask"``, ``"token-classification"`` (``"ner"``), ``"text-classification"``
            (``"sentiment-analysis"``) or ``"feature-extraction"``.
        model: a bundle directory (``flare-onnx export``'s output) or a loaded :class:`FlareModel`.
        tokenizer: leave out: a bundle carries its own tokenizer, checked against the original.
        device: ``None``, ``"cpu"`` or ``-1`` (transformers' CPU spellings); flare-onnx runs on CPUs.
        precision, threads, backend, spin: as for :func:`flare_onnx.load`.
        options: defaults for every call (``top_k=3``, ``aggregation_strategy="simple"``, ...).

    Raises:
        InputError: an unknown task or option, or a tokenizer passed.
        TaskNotAvailableError: the bundle was exported for another task.

    Example:
        >>> ner = flare_onnx.pipeline("ner", "flare-it-ner-onnx", aggregation_strategy="simple")
        >>> ner("Mario Rossi vive a Roma.")[0]["entity_group"]
        'PER'
    """
    cls = _PIPELINES.get(task) if isinstance(task, str) else None
    if cls is None:
        raise InputError(f"pipeline task must be one of {', '.join(_PIPELINES)}, not {task!r}")
    if tokenizer is not None:
        raise InputError(
            "a flare-onnx bundle carries its own tokenizer (checked id for id against the "
            "original at export): drop the tokenizer= argument"
        )
    if device not in (None, "cpu", -1) or isinstance(device, bool):
        raise InputError(f"flare-onnx runs on CPUs: device must be None, 'cpu' or -1, not {device!r}")
    if not isinstance(model, FlareModel):
        model = load(model, precision=precision, threads=threads, backend=backend, spin=spin)
    model.manifest.require(_NEEDS[cls])
    return cls(model, options)
