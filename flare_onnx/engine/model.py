"""The model object: one onnxruntime session and one tokenizer, and the four task verbs.

The engine is thin: it tokenizes, cuts windows, batches, runs the session and hands the raw
outputs to the pure functions of :mod:`flare_onnx.postprocess`. What a task is (its options,
defaults and limits) lives in :mod:`flare_onnx.tasks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding

from .bundle import VerifiedBundle, open_bundle
from ..errors import BundleError, InferenceError, InputError
from .postprocess import (
    Entity,
    WindowPool,
    WordLabel,
    aggregate_words,
    class_scores,
    group_entities,
    l2_normalize,
    softmax,
)
from .postprocess import top_k as _top_k
from .session import create_session
from .tasks import LOAD_OPTIONS, TASKS, parse_load_options
from .tokenization import TextEncoder, Window, check_texts, pad_batch, plan_batches

__all__ = ["FlareModel", "MaskPrediction", "Label", "TagResult", "load"]

_DEFAULTS = {o.name: o.default for o in LOAD_OPTIONS}


@dataclass(frozen=True)
class MaskPrediction:
    """One candidate for one ``<mask>``: the vocabulary token, its id and probability."""

    token: str
    token_id: int
    score: float


@dataclass(frozen=True)
class Label:
    """A class label and its probability."""

    label: str
    score: float


@dataclass(frozen=True)
class TagResult:
    """Token classification of one text: a label per word, and the grouped entities."""

    words: list[WordLabel]
    entities: list[Entity]


def _check_graph(bundle: VerifiedBundle, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """The graph must match the manifest and give every output the bundle's tasks need."""
    if set(inputs) != set(bundle.graph.inputs) or set(outputs) != set(bundle.graph.outputs):
        raise BundleError(
            f"the graph's inputs/outputs {inputs}/{outputs} differ from the manifest's "
            f"{bundle.graph.inputs}/{bundle.graph.outputs}; re-export the bundle"
        )
    specs = [TASKS[t] for t in bundle.manifest.tasks]
    allowed = {name for spec in specs for name in spec.graph_inputs}
    for spec in specs:
        missing = [o for o in spec.graph_outputs if o not in outputs]
        if missing:
            raise BundleError(
                f"manifest.json says the bundle offers {spec.name}, but its graph has no "
                f"{', '.join(missing)} output; the manifest does not belong to this graph "
                f"(re-export the bundle)"
            )
    odd = [i for i in inputs if i not in allowed] + [i for i in ("input_ids", "attention_mask") if i not in inputs]
    if odd:
        raise BundleError(
            f"the graph's inputs {inputs} do not fit the tasks {', '.join(bundle.manifest.tasks)}; "
            f"re-export the bundle"
        )


def _check_sizes(bundle: VerifiedBundle, vocab_size: int, outputs: Sequence[Any]) -> None:
    """Special ids within the tokenizer's vocabulary; the hidden size the graph says."""
    special = bundle.manifest.special
    ids = {"cls": special.cls_id, "sep": special.sep_id, "pad": special.pad_id, "unk": special.unk_id, "mask": special.mask_id}
    bad = {k: v for k, v in ids.items() if v is not None and v >= vocab_size}
    if bad:
        raise BundleError(
            f"manifest.json: special token ids {bad} are outside the tokenizer's {vocab_size} tokens; "
            f"the manifest does not belong to this tokenizer (re-export the bundle)"
        )
    for port in outputs:
        shape = getattr(port, "shape", None)
        if port.name == "last_hidden_state" and shape and isinstance(shape[-1], int) and shape[-1] != bundle.manifest.hidden_size:
            raise BundleError(
                f"manifest.json: model.hidden_size is {bundle.manifest.hidden_size} but the graph's "
                f"hidden states have {shape[-1]}; re-export the bundle"
            )


class FlareModel:
    """A loaded bundle. Create it with :func:`load`.

    Every verb takes a list of texts, sorts them into length batches under the token budget,
    and returns results in the input order.
    """

    def __init__(
        self,
        bundle: VerifiedBundle,
        *,
        threads: int | None = None,
        max_batch_tokens: int = _DEFAULTS["max_batch_tokens"],
        max_batch_size: int = _DEFAULTS["max_batch_size"],
        max_text_tokens: int | None = _DEFAULTS["max_text_tokens"],
        spin: bool = _DEFAULTS["spin"],
        arena: bool = True,
    ) -> None:
        opts = parse_load_options({
            "threads": threads, "max_batch_tokens": max_batch_tokens, "max_batch_size": max_batch_size,
            "max_text_tokens": max_text_tokens, "spin": spin,
        })
        self.manifest = bundle.manifest
        self.path = bundle.path
        self.precision = bundle.graph.precision
        self.max_batch_tokens: int = opts["max_batch_tokens"]
        self.max_batch_size: int = opts["max_batch_size"]
        self.max_text_tokens: int | None = opts["max_text_tokens"]
        # attention scores are batch × heads × length² floats: two full-length rows at most
        self.max_batch_cells = 2 * bundle.manifest.max_length**2
        self.backend = bundle.graph.backend
        self._session: Any
        if bundle.graph.backend == "openvino":
            from .openvino_session import create_openvino_session

            assert bundle.weights_bytes is not None  # open_bundle reads the IR's weights
            self._session = create_openvino_session(bundle.graph_bytes, bundle.weights_bytes, threads=opts["threads"])
        else:
            self._session = create_session(bundle.graph_bytes, threads=opts["threads"], arena=arena, spin=opts["spin"])
        self._inputs = tuple(i.name for i in self._session.get_inputs())
        self._outputs = tuple(o.name for o in self._session.get_outputs())
        _check_graph(bundle, self._inputs, self._outputs)
        self._encoder = TextEncoder(
            bundle.tokenizer_json, bundle.manifest.special, max_length=bundle.manifest.max_length
        )
        _check_sizes(bundle, self._encoder.tokenizer.get_vocab_size(), self._session.get_outputs())

    # -- shared machinery -------------------------------------------------------------

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this bundle offers, by registry name (for example ``("fill-mask", "embed")``)."""
        return self.manifest.tasks

    @property
    def tokenizer(self) -> TextEncoder:
        return self._encoder

    def predict(self, task: str, texts: Sequence[str], options: Mapping[str, Any] | None = None) -> list[Any]:
        """Run ``task`` (a registry name or alias) with ``options`` given by name; one result per text.

        This is what every surface calls: the options are checked against the registry
        (unknown names and wrong types raise :class:`InputError`).
        """
        spec = self.manifest.require(task)
        opts = spec.parse_options(options)
        verbs = {"fill_mask": self.fill_mask, "embed": self.embed, "tag": self.tag, "classify": self.classify}
        result = verbs[spec.verb](texts, **opts)  # type: ignore[operator]
        return list(result)

    def _batches(
        self, windows: list[Window], mask_rows: list[np.ndarray] | None = None
    ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """Run windows through the session in length batches; yield (window indices, outputs)."""
        lengths = [len(w.ids) for w in windows]
        plans = list(plan_batches(
            lengths, max_tokens=self.max_batch_tokens, max_batch=self.max_batch_size, max_cells=self.max_batch_cells
        ))
        streams = int(getattr(self._session, "streams", 1))
        if len(plans) < streams:  # OpenVINO: give every CPU stream a part of a lone batch
            plans = [list(part) for idx in plans for part in np.array_split(idx, min(streams, len(idx))) if len(part)]

        def feeds_of(idx: list[int]) -> dict[str, np.ndarray]:
            ids, attention = pad_batch([windows[i].ids for i in idx], self._encoder.special.pad_id)
            feeds = {"input_ids": ids, "attention_mask": attention}
            if "mask_positions" in self._inputs:
                width = ids.shape[1]
                rows = [row * width + mask_rows[i] for row, i in enumerate(idx)] if mask_rows else []
                feeds["mask_positions"] = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
            return feeds

        if len(plans) > 1 and hasattr(self._session, "run_many"):  # OpenVINO: every stream busy
            results: Iterator[list[np.ndarray]] = self._session.run_many(feeds_of(idx) for idx in plans)
        else:
            results = (self._session.run(None, feeds_of(idx)) for idx in plans)
        for idx in plans:
            try:
                values = next(results)
            except Exception as exc:  # onnxruntime and OpenVINO raise their own untyped exceptions
                raise InferenceError(f"the {self.backend} session failed on a batch of {len(idx)} texts: {exc}") from exc
            outputs = dict(zip(self._outputs, values))
            for name, value in outputs.items():
                if value.size and not np.isfinite(value).all():
                    raise InferenceError(
                        f"the model produced non-finite values in {name!r}; the graph or its "
                        f"quantization is broken for this input (try precision='fp32')"
                    )
            yield idx, outputs

    def _windows(self, texts: list[str], *, window: str, stride: int | None) -> tuple[list[Encoding], list[Window]]:
        if stride is None:
            stride = self.manifest.max_length // 4
        encodings = self._encoder.encode(texts)
        if window == "sliding" and self.max_text_tokens is not None:
            for i, enc in enumerate(encodings):
                if len(enc.ids) > self.max_text_tokens:
                    raise InputError(
                        f"text {i} holds {len(enc.ids)} tokens; sliding windows read at most "
                        f"{self.max_text_tokens} per text (the model option max_text_tokens; "
                        f"None lifts the cap for trusted batch jobs)"
                    )
        return encodings, self._encoder.windows(encodings, sliding=window == "sliding", stride=stride)

    # -- tasks --------------------------------------------------------------------------

    def fill_mask(self, texts: list[str], *, top_k: int = 5) -> list[list[list[MaskPrediction]]]:
        """The ``top_k`` most likely tokens for every ``<mask>`` of every text.

        Returns:
            ``result[i][m]`` is the list of predictions for the ``m``-th mask of text ``i``.

        Raises:
            InputError: a text has no mask, a mask lies past the ``max_length`` tokens kept,
                or ``top_k`` is not an integer from 1 to 100.

        Example:
            >>> model.fill_mask(["Roma è la <mask> d'Italia."])[0][0][0].token
            'capitale'
        """
        spec = self.manifest.require("fill-mask")
        k = spec.parse_options({"top_k": top_k})["top_k"]
        windows, mask_rows = self._mask_windows(check_texts(texts, verb="fill_mask"))
        results: list[list[list[MaskPrediction]]] = [[] for _ in windows]
        for idx, probs in self._mask_probabilities(windows, mask_rows):
            ids, scores = _top_k(probs, k)
            row = 0
            for i in idx:
                for _ in range(len(mask_rows[i])):
                    results[i].append(
                        [
                            MaskPrediction(self._encoder.id_to_token(int(t)), int(t), float(s))
                            for t, s in zip(ids[row], scores[row])
                        ]
                    )
                    row += 1
        return results

    def _mask_windows(self, texts: list[str]) -> tuple[list[Window], list[np.ndarray]]:
        """Each text's window and the positions of its masks in it (checked: one at least,
        none past what the model reads)."""
        special = self.manifest.special  # a fill-mask manifest always has a mask (checked at load)
        encodings, windows = self._windows(texts, window="truncate", stride=0)
        mask_rows: list[np.ndarray] = []
        for i, (enc, w) in enumerate(zip(encodings, windows)):
            positions = np.flatnonzero(np.asarray(enc.ids) == special.mask_id)
            if positions.size == 0:
                raise InputError(f"text {i} has no {special.mask_token} token to fill")
            kept = len(w.ids) - 2
            if positions[-1] >= kept:
                raise InputError(
                    f"text {i} has a {special.mask_token} at token {int(positions[-1])}, past the "
                    f"{kept} tokens the model reads; shorten the text around the mask"
                )
            mask_rows.append(positions + 1)  # +1 for <s>
        return windows, mask_rows

    def _mask_probabilities(
        self, windows: list[Window], mask_rows: list[np.ndarray]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Per batch: the window indices and the vocabulary probabilities of their masks, in order."""
        for idx, out in self._batches(windows, mask_rows):
            yield idx, softmax(out["mask_logits"])

    def embed(
        self,
        texts: list[str],
        *,
        pooling: str = "mean",
        normalize: bool = True,
        prefix: str = "",
        window: str = "truncate",
        stride: int | None = None,
    ) -> np.ndarray:
        """Sentence embeddings, ``float32`` of shape ``[len(texts), hidden_size]``.

        Args:
            pooling: ``"mean"`` over all tokens (``<s>``/``</s>`` included, as
                sentence-transformers does) or ``"cls"`` (the ``<s>`` vector).
            normalize: scale each embedding to unit L2 norm.
            prefix: put before every text (E5 models expect ``"query: "`` or ``"passage: "``).
            window: ``"truncate"`` reads the first ``max_length`` tokens; ``"sliding"``
                covers the whole text with overlapping windows and pools over all of it.
            stride: tokens shared by consecutive windows (default: a quarter of ``max_length``).

        Example:
            >>> model.embed(["Il gatto dorme.", "Piove a Milano."]).shape
            (2, 384)
        """
        spec = self.manifest.require("embed")
        opts = spec.parse_options(
            {"pooling": pooling, "normalize": normalize, "prefix": prefix, "window": window, "stride": stride}
        )
        texts = check_texts(texts, verb="embed")
        if prefix:
            texts = [prefix + t for t in texts]
        _, windows = self._windows(texts, window=window, stride=stride)
        pool = WindowPool(len(texts), self.manifest.hidden_size)
        for idx, out in self._batches(windows):
            hidden = out["last_hidden_state"]
            for row, wi in enumerate(idx):
                w = windows[wi]
                pool.add(w.text_index, hidden[row, : len(w.ids)], w.keep)
        emb = pool.result(opts["pooling"])
        return l2_normalize(emb) if normalize else emb

    def tag(
        self,
        texts: list[str],
        *,
        aggregation: str = "first",
        window: str = "truncate",
        stride: int | None = None,
    ) -> list[TagResult]:
        """Token classification: one label per word, and entities grouped from IOB tags.

        Word and entity ``start``/``end`` are character offsets into the original text.

        Args:
            aggregation: how sub-tokens vote for their word: ``"first"``, ``"average"``, ``"max"``.
            window: ``"truncate"`` labels the first ``max_length`` tokens' words; ``"sliding"``
                labels the whole text.
            stride: tokens shared by consecutive windows (default: a quarter of ``max_length``).

        Example:
            >>> model.tag(["Mario Rossi vive a Roma."])[0].entities[0].text
            'Mario Rossi'
        """
        spec = self.manifest.require("tag")
        spec.parse_options({"aggregation": aggregation, "window": window, "stride": stride})
        texts = check_texts(texts, verb="tag")
        labels = self.manifest.labels or ()
        results = []
        for text, (enc, probs) in zip(texts, self._label_probabilities(texts, window=window, stride=stride)):
            n = len(probs)
            words = aggregate_words(
                text, probs, enc.word_ids[:n], enc.offsets[:n], labels, aggregation=aggregation
            )
            results.append(TagResult(words=words, entities=group_entities(text, words)))
        return results

    def _label_probabilities(
        self, texts: list[str], *, window: str, stride: int | None
    ) -> list[tuple[Encoding, np.ndarray]]:
        """Each text's encoding (no special tokens) and the label probabilities of the
        tokens the windows cover, ``[covered, labels]``."""
        labels = self.manifest.labels or ()
        encodings, windows = self._windows(texts, window=window, stride=stride)
        probs_per_text = [np.zeros((len(enc.ids), len(labels)), dtype=np.float32) for enc in encodings]
        covered = [0] * len(texts)
        for idx, out in self._batches(windows):
            probs = softmax(out["logits"])
            for row, wi in enumerate(idx):
                w = windows[wi]
                lo, hi = w.keep
                probs_per_text[w.text_index][w.start + lo : w.start + hi] = probs[row, 1 + lo : 1 + hi]
                covered[w.text_index] = max(covered[w.text_index], w.start + hi)
        return [(enc, probs[:n]) for enc, probs, n in zip(encodings, probs_per_text, covered)]

    def classify(self, texts: list[str], *, top_k: int | None = 1) -> list[list[Label]]:
        """Text classification: the ``top_k`` labels of each text (all labels when ``None``).

        Multi-label models (``problem_type`` ``multi_label_classification``) score each
        label independently with a sigmoid; others use a softmax over labels.

        Example:
            >>> model.classify(["Che bella giornata!"])[0][0].label
            'positive'
        """
        spec = self.manifest.require("classify")
        spec.parse_options({"top_k": top_k})
        texts = check_texts(texts, verb="classify")
        labels = self.manifest.labels or ()
        k = len(labels) if top_k is None else top_k
        logits = self._class_logits(texts)
        ids, scores = _top_k(class_scores(logits, self.class_function), k)
        return [[Label(labels[int(j)], float(s)) for j, s in zip(i_row, s_row)] for i_row, s_row in zip(ids, scores)]

    @property
    def class_function(self) -> str:
        """How :meth:`classify` turns logits into scores, as transformers' text-classification
        pipeline does: ``"sigmoid"`` for multi-label models and single-logit models,
        ``"none"`` for regression, ``"softmax"`` otherwise."""
        problem = self.manifest.raw["model"].get("problem_type")
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or len(self.manifest.labels or ()) == 1:
            return "sigmoid"
        return "softmax"

    def _class_logits(self, texts: list[str]) -> np.ndarray:
        """``float32 [texts, labels]``: the classification logits of each text (first window)."""
        _, windows = self._windows(texts, window="truncate", stride=0)
        logits = np.zeros((len(texts), len(self.manifest.labels or ())), dtype=np.float32)
        for idx, out in self._batches(windows):
            logits[[windows[wi].text_index for wi in idx]] = out["logits"]
        return logits

    def hidden_states(self, texts: list[str]) -> list[np.ndarray]:
        """The last hidden state of every token the model reads: ``float32 [tokens, hidden_size]``
        per text, ``<s>`` and ``</s>`` included, the text truncated to ``max_length`` tokens.

        This is what transformers' feature-extraction pipeline returns; :meth:`embed` pools it.

        Example:
            >>> model.hidden_states(["Il gatto dorme."])[0].shape
            (6, 384)
        """
        self.manifest.require("embed")
        texts = check_texts(texts, verb="hidden_states")
        _, windows = self._windows(texts, window="truncate", stride=0)
        states: list[np.ndarray] = [np.zeros(0, np.float32)] * len(texts)
        for idx, out in self._batches(windows):
            for row, wi in enumerate(idx):
                states[windows[wi].text_index] = out["last_hidden_state"][row, : len(windows[wi].ids)].copy()
        return states

    def __repr__(self) -> str:
        return (
            f"FlareModel(path={str(self.path)!r}, task={self.manifest.task!r}, "
            f"precision={self.precision!r}, backend={self.backend!r})"
        )


def load(
    path: str | Path,
    *,
    precision: str | None = None,
    threads: int | None = None,
    max_batch_tokens: int = _DEFAULTS["max_batch_tokens"],
    max_batch_size: int = _DEFAULTS["max_batch_size"],
    max_text_tokens: int | None = _DEFAULTS["max_text_tokens"],
    spin: bool = _DEFAULTS["spin"],
    backend: str = _DEFAULTS["backend"],
    arena: bool = True,
) -> FlareModel:
    """Open a bundle directory, verify every file it uses, and create the session.

    Args:
        path: a directory written by ``flare-onnx export``.
        precision: ``"int8"`` or ``"fp32"``; by default INT8 when the bundle has it.
        threads: onnxruntime intra-op threads; by default the CPUs this process may use
            (affinity and cgroup quota, so a container's limit rather than the host's cores).
        max_batch_tokens: token budget of one batch (``batch × padded length``); bounds memory.
        max_batch_size: most texts in one batch.
        max_text_tokens: most tokens one text may hold when read in sliding windows (bounds the
            work of one text); ``None`` lifts the cap, for trusted batch jobs.
        spin: idle worker threads spin-wait between calls (fastest on a dedicated machine);
            pass ``False`` on shared machines, in containers and in serverless functions.
        backend: ``"onnxruntime"`` (the default: lean, fast start) or ``"openvino"`` (the
            NNCF INT8 IR of a bundle exported with ``--openvino``: the fastest on x86 servers).
        arena: keep onnxruntime's memory arena (faster; off keeps RSS flat as shapes vary).

    Raises:
        BundleError: not a bundle, a file missing or altered, or a graph with external data.
        InputError: an option out of range.

    Example:
        >>> import flare_onnx
        >>> model = flare_onnx.load("flare-it-onnx")
        >>> model.fill_mask(["Roma è la <mask> d'Italia."])
    """
    parse_load_options({"precision": precision, "backend": backend})
    bundle = open_bundle(path, precision=precision, backend=backend)
    return FlareModel(
        bundle,
        threads=threads,
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        max_text_tokens=max_text_tokens,
        spin=spin,
        arena=arena,
    )
