"""The model object: one backend session and one tokenizer, the request path, and the verbs.

The engine is thin: :meth:`FlareModel.request` checks and encodes a request once;
:meth:`FlareModel.run` hands it to the task's runner (:mod:`.runners`), which reads the graph's
outputs through the public engine API below (:meth:`~FlareModel.window_outputs` and the
probabilities built on it) and the pure functions of :mod:`.postprocess`. What a task is (its
options, defaults and limits) lives in :mod:`.tasks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Encoding

from ..errors import BundleError, InferenceError, InputError, TextError
from .batching import pad_batch, plan_batches
from .backends import choose_backend
from .bundle import VerifiedBundle, open_bundle
from .cache import bundle_dir, rebuild
from .postprocess import softmax
from .request import Limits, Request, merge_requests
from .runners import Label, MaskPrediction, TagResult
from .session import Session, available_cpus, create_session
from .options import LOAD_OPTIONS, parse_load_options
from .tasks import TASKS
from .tokenization import TextEncoder, Window, check_texts

__all__ = ["FlareModel", "Outcome", "MaskPrediction", "Label", "TagResult", "load"]


class Outcome(NamedTuple):
    """One text's result, or why the model refused the text (:meth:`FlareModel.predict_each`)."""

    result: Any
    error: str | None


_DEFAULTS = {o.name: o.default for o in LOAD_OPTIONS}


_FILL = TASKS["fill-mask"].defaults()
_EMBED = TASKS["embed"].defaults()
_TAG = TASKS["tag"].defaults()
_CLASSIFY = TASKS["classify"].defaults()


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
            f"the graph's inputs {inputs} do not fit the tasks {', '.join(bundle.manifest.tasks)}; re-export the bundle"
        )


def _check_sizes(bundle: VerifiedBundle, vocab_size: int, outputs: Sequence[Any]) -> None:
    """Special ids within the tokenizer's vocabulary; the hidden size the graph says."""
    special = bundle.manifest.special
    ids = {
        "cls": special.cls_id,
        "sep": special.sep_id,
        "pad": special.pad_id,
        "unk": special.unk_id,
        "mask": special.mask_id,
    }
    bad = {k: v for k, v in ids.items() if v is not None and v >= vocab_size}
    if bad:
        raise BundleError(
            f"manifest.json: special token ids {bad} are outside the tokenizer's {vocab_size} tokens; "
            f"the manifest does not belong to this tokenizer (re-export the bundle)"
        )
    for port in outputs:
        shape = getattr(port, "shape", None)
        if (
            port.name == "last_hidden_state"
            and shape
            and isinstance(shape[-1], int)
            and shape[-1] != bundle.manifest.hidden_size
        ):
            raise BundleError(
                f"manifest.json: model.hidden_size is {bundle.manifest.hidden_size} but the graph's "
                f"hidden states have {shape[-1]}; re-export the bundle"
            )


class FlareModel:
    """A loaded bundle. Create it with :func:`load`.

    Every verb takes a list of texts, sorts them into length batches under the token budget,
    and returns results in the input order. Surfaces use the request path instead:
    :meth:`request` (checked and encoded once) then :meth:`run`.
    """

    def __init__(self, bundle: VerifiedBundle, options: Mapping[str, Any] | None = None) -> None:
        """``options``: :func:`load`'s model options by name (threads, batch budgets, spin,
        arena), checked here; the bundle's precision and backend were chosen when it was opened."""
        opts = _DEFAULTS | parse_load_options(options or {})
        self.manifest = bundle.manifest
        self.path = bundle.path
        self.precision = bundle.graph.precision
        self.backend = bundle.graph.backend
        self.backend_choice = "asked for"  # load() records why, when backend="auto" chose
        self.max_batch_tokens: int = opts["max_batch_tokens"]
        self.max_batch_size: int = opts["max_batch_size"]
        self.max_text_tokens: int | None = opts["max_text_tokens"]
        # attention scores are batch × heads × length² floats: two full-length rows at most
        self.max_batch_cells = 2 * bundle.manifest.max_length**2
        self.session: Session = _create_backend_session(bundle, opts)
        self._inputs = tuple(i.name for i in self.session.get_inputs())
        self._outputs = tuple(o.name for o in self.session.get_outputs())
        _check_graph(bundle, self._inputs, self._outputs)
        self._encoder = TextEncoder(
            bundle.tokenizer_json, bundle.manifest.special, max_length=bundle.manifest.max_length
        )
        _check_sizes(bundle, self._encoder.tokenizer.get_vocab_size(), self.session.get_outputs())

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this bundle offers, by registry name (for example ``("fill-mask", "embed")``)."""
        return self.manifest.tasks

    @property
    def streams(self) -> int:
        """Batches run at once: OpenVINO's THROUGHPUT streams, or onnxruntime's for bulk work."""
        return self.session.streams

    @property
    def tokenizer(self) -> TextEncoder:
        """The bundle's checked tokenizer (``.tokenizer`` is the ``tokenizers.Tokenizer``)."""
        return self._encoder

    # -- the request path -------------------------------------------------------------------

    def request(
        self,
        task: str,
        texts: Sequence[object],
        options: Mapping[str, Any] | None = None,
        *,
        limits: Limits = Limits.TRUSTED,
    ) -> Request:
        """Check a request once and encode it: the task is offered, the options valid (defaults
        filled in), the texts within ``limits`` (cheap checks before tokenization, work after),
        masks present for fill-mask, sliding windows within ``max_text_tokens``.

        Raises:
            TaskNotAvailableError: the bundle does not offer ``task``.
            InputError: a bad option or text, or over a limit (:class:`RequestTooLarge`
                for work: characters, tokens, fill-mask candidates).
        """
        spec = self.manifest.require(task)
        opts = spec.resolve(options)
        checked = check_texts(texts, verb=spec.verb)
        # the prefix and a stored prompt are part of every text: counted before any work
        prefix = self._prompt(opts.get("prompt") or "") + (opts.get("prefix") or "")
        limits.check_texts(checked, prefix=len(prefix))
        full = [prefix + t for t in checked] if prefix else checked
        encodings = self._encoder.encode(full)
        sliding = opts.get("window", "truncate") == "sliding"
        stride = self._stride(encodings, sliding=sliding, stride=opts.get("stride"))
        # what the model will read of each text, every window counted, checked before the
        # windows are made: a small stride over a long text multiplies the work
        text_tokens = tuple(self._encoder.read_tokens(len(e), sliding=sliding, stride=stride) for e in encodings)
        limits.check_work(sum(text_tokens), 0)
        windows = self._encoder.windows(encodings, sliding=sliding, stride=stride)
        mask_rows = self._mask_rows(encodings, windows) if "mask_positions" in spec.graph_inputs else None
        req = Request(spec, full, opts, encodings, windows, mask_rows, text_tokens=text_tokens)
        limits.check_work(0, req.candidates)  # its tokens were checked above, before the windows
        return req

    @property
    def prompts(self) -> dict[str, str]:
        """Prompts stored with the model at export, by name (E5: ``query``, ``passage``)."""
        return dict(self.manifest.prompts)

    def _prompt(self, name: str) -> str:
        if not name:
            return ""
        if name not in self.prompts:
            known = ", ".join(map(repr, self.prompts)) or "none (export with --prompt NAME=TEXT)"
            raise InputError(f"this model has no prompt {name!r}; its prompts: {known}")
        return self.prompts[name]

    def run(self, request: Request) -> list[Any]:
        """The results of a checked request, one per text, from its task's runner."""
        return request.spec.run(self, request)

    def predict(
        self,
        task: str,
        texts: Sequence[object],
        options: Mapping[str, Any] | None = None,
        *,
        limits: Limits = Limits.TRUSTED,
    ) -> list[Any]:
        """Run ``task`` (a registry name or alias) with ``options`` given by name; one result
        per text. ``request`` then ``run``, for callers that need not keep the request."""
        return self.run(self.request(task, texts, options, limits=limits))

    def predict_each(
        self,
        task: str,
        texts: Sequence[object],
        options: Mapping[str, Any] | None = None,
        *,
        limits: Limits = Limits.TRUSTED,
    ) -> list[Outcome]:
        """Run ``task`` on every text that the model can take, and say why for the others: one
        :class:`Outcome` per text, in order. What the file job and Ray Data do with a chunk.

        The chunk runs as one request; only when a text in it is refused is each text checked
        and encoded alone (the refused ones get their reason, the rest still run as one batch).

        Raises:
            TaskNotAvailableError: the bundle does not offer ``task``.
            InputError: a bad option (it would refuse every text alike).
        """
        spec = self.manifest.require(task)
        opts = spec.resolve(options)
        try:
            return [Outcome(result, None) for result in self.predict(spec.name, texts, opts, limits=limits)]
        except TextError:
            pass
        outcomes: list[Outcome | None] = [None] * len(texts)
        good: list[tuple[int, Request]] = []
        for i, text in enumerate(texts):
            try:
                good.append((i, self.request(spec.name, [text], opts, limits=limits)))
            except TextError as exc:
                outcomes[i] = Outcome(None, "the text " + exc.reason)
        if good:
            for (i, _), result in zip(good, self.run(merge_requests([r for _, r in good]))):
                outcomes[i] = Outcome(result, None)
        return [o for o in outcomes if o is not None]

    def _stride(self, encodings: list[Encoding], *, sliding: bool, stride: int | None) -> int:
        """The stride sliding windows take (checked), after the model's cap on one text."""
        if sliding and self.max_text_tokens is not None:
            for i, enc in enumerate(encodings):
                if len(enc.ids) > self.max_text_tokens:
                    raise TextError(
                        i,
                        f"holds {len(enc.ids)} tokens; sliding windows read at most "
                        f"{self.max_text_tokens} per text (the model option max_text_tokens; "
                        f"None lifts the cap for trusted batch jobs)",
                    )
        return self.manifest.max_length // 4 if stride is None else stride

    def _mask_rows(self, encodings: list[Encoding], windows: list[Window]) -> list[np.ndarray]:
        """Where each text's masks sit in its window (one at least, none past what the model reads)."""
        special = self.manifest.special  # a fill-mask manifest always has a mask (checked at load)
        rows: list[np.ndarray] = []
        for i, (enc, w) in enumerate(zip(encodings, windows)):
            positions = np.flatnonzero(np.asarray(enc.ids) == special.mask_id)
            if positions.size == 0:
                raise TextError(i, f"has no {special.mask_token} token to fill")
            kept = len(w.ids) - 2
            if positions[-1] >= kept:
                raise TextError(
                    i,
                    f"has a {special.mask_token} at token {int(positions[-1])}, past the "
                    f"{kept} tokens the model reads; shorten the text around the mask",
                )
            rows.append(positions + 1)  # +1 for <s>
        return rows

    # -- the public engine API: what runners and the pipelines read ------------------------

    def window_outputs(self, request: Request) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
        """Each window of ``request`` with the graph's outputs for it: token-level outputs
        (``[batch, length, …]``) cut to the window's tokens, ``mask_logits`` to its masks,
        others (``[batch, …]``) to its row. Windows come in batch order, not input order."""
        masks = request.mask_rows
        for idx, outputs in self._run_batches(request.windows, masks):
            first_mask = 0
            for row, wi in enumerate(idx):
                window, mine = request.windows[wi], {}
                for name, value in outputs.items():
                    if name == "mask_logits":
                        count = len(masks[wi]) if masks is not None else 0
                        mine[name] = value[first_mask : first_mask + count]
                    elif value.ndim == 3:
                        mine[name] = value[row, : len(window.ids)]
                    else:
                        mine[name] = value[row]
                first_mask += len(masks[wi]) if masks is not None else 0
                yield window, mine

    def mask_probabilities(self, request: Request) -> list[np.ndarray]:
        """Per text of a fill-mask request: ``float32 [masks, vocabulary]`` probabilities."""
        probs: list[np.ndarray] = [np.zeros(0, np.float32)] * len(request.texts)
        for window, out in self.window_outputs(request):
            probs[window.text_index] = softmax(out["mask_logits"])
        return probs

    def label_probabilities(self, request: Request) -> list[tuple[Encoding, np.ndarray]]:
        """Per text of a token-classification request: its encoding and the label
        probabilities of the tokens its windows cover, ``float32 [covered, labels]``."""
        labels = self.manifest.labels or ()
        probs_per_text = [np.zeros((len(enc.ids), len(labels)), dtype=np.float32) for enc in request.encodings]
        covered = [0] * len(request.texts)
        for w, out in self.window_outputs(request):
            lo, hi = w.keep
            probs_per_text[w.text_index][w.start + lo : w.start + hi] = softmax(out["logits"])[1 + lo : 1 + hi]
            covered[w.text_index] = max(covered[w.text_index], w.start + hi)
        return [(enc, probs[:n]) for enc, probs, n in zip(request.encodings, probs_per_text, covered)]

    def class_logits(self, request: Request) -> np.ndarray:
        """``float32 [texts, labels]``: the classification logits of each text (first window)."""
        logits = np.zeros((len(request.texts), len(self.manifest.labels or ())), dtype=np.float32)
        for window, out in self.window_outputs(request):
            logits[window.text_index] = out["logits"]
        return logits

    @property
    def class_function(self) -> str:
        """How :meth:`classify` turns logits into scores, as transformers' text-classification
        pipeline does: ``"sigmoid"`` for multi-label models and single-logit models,
        ``"none"`` for regression, ``"softmax"`` otherwise."""
        problem = self.manifest.problem_type
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or len(self.manifest.labels or ()) == 1:
            return "sigmoid"
        return "softmax"

    def hidden_states(self, texts: list[str]) -> list[np.ndarray]:
        """The last hidden state of every token the model reads: ``float32 [tokens, hidden_size]``
        per text, ``<s>`` and ``</s>`` included, the text truncated to ``max_length`` tokens.

        This is what transformers' feature-extraction pipeline returns; :meth:`embed` pools it.

        Example:
            >>> model.hidden_states(["Il gatto dorme."])[0].shape
            (6, 384)
        """
        request = self.request("embed", texts, {"window": "truncate"})
        states: list[np.ndarray] = [np.zeros(0, np.float32)] * len(texts)
        for window, out in self.window_outputs(request):
            states[window.text_index] = out["last_hidden_state"].copy()
        return states

    def _run_batches(
        self, windows: list[Window], mask_rows: list[np.ndarray] | None
    ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """Run windows through the session in length batches; yield (window indices, outputs)."""
        lengths = [len(w.ids) for w in windows]
        plans = list(
            plan_batches(
                lengths, max_tokens=self.max_batch_tokens, max_batch=self.max_batch_size, max_cells=self.max_batch_cells
            )
        )
        if self.streams > 1:  # each batch in one part per stream, alike in length: none waits for another
            plans = [idx[i :: self.streams] for idx in plans for i in range(min(self.streams, len(idx)))]
        feeds = (self._feeds(windows, mask_rows, idx) for idx in plans)
        results = self.session.run_many(feeds)
        for idx in plans:
            try:
                values = next(results)
            except Exception as exc:  # onnxruntime and OpenVINO raise their own untyped exceptions
                raise InferenceError(
                    f"the {self.backend} session failed on a batch of {len(idx)} texts: {exc}"
                ) from exc
            outputs = dict(zip(self._outputs, values))
            for name, value in outputs.items():
                if value.size and not np.isfinite(value).all():
                    raise InferenceError(
                        f"the model produced non-finite values in {name!r}; the graph or its "
                        f"quantization is broken for this input (try precision='fp32')"
                    )
            yield idx, outputs

    def _feeds(
        self, windows: list[Window], mask_rows: list[np.ndarray] | None, idx: list[int]
    ) -> dict[str, np.ndarray]:
        ids, attention = pad_batch([windows[i].ids for i in idx], self._encoder.special.pad_id)
        feeds = {"input_ids": ids, "attention_mask": attention}
        if "mask_positions" in self._inputs:
            width = ids.shape[1]
            rows = [row * width + mask_rows[i] for row, i in enumerate(idx)] if mask_rows else []
            feeds["mask_positions"] = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
        return feeds

    # -- the verbs ----------------------------------------------------------------------------

    def fill_mask(self, texts: list[str], *, top_k: int = _FILL["top_k"]) -> list[list[list[MaskPrediction]]]:
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
        return self.predict("fill-mask", texts, {"top_k": top_k})

    def embed(
        self,
        texts: list[str] | str,
        *,
        pooling: str | None = _EMBED["pooling"],
        normalize: bool | None = _EMBED["normalize"],
        prefix: str = _EMBED["prefix"],
        prompt: str = _EMBED["prompt"],
        window: str = _EMBED["window"],
        stride: int | None = _EMBED["stride"],
    ) -> np.ndarray:
        """Sentence embeddings, ``float32`` of shape ``[len(texts), hidden_size]`` (one text
        given as a string: one vector ``[hidden_size]``, as sentence-transformers answers).

        Args:
            pooling: ``"mean"`` over all tokens (``<s>``/``</s>`` included, as
                sentence-transformers does), ``"cls"`` (the ``<s>`` vector) or ``"max"``; by
                default the bundle's (:attr:`Manifest.pooling`: the checkpoint's
                sentence-transformers pooling, read at export; else mean).
            normalize: scale each embedding to unit L2 norm; by default the bundle's (on,
                unless its sentence-transformers checkpoint has no ``Normalize`` module).
            prefix: put before every text (E5 models expect ``"query: "`` or ``"passage: "``).
            prompt: the name of a prompt stored with the model (:attr:`prompts`), put before
                the prefix: ``embed(texts, prompt="query")`` on an E5 bundle.
            window: ``"truncate"`` reads the first ``max_length`` tokens; ``"sliding"``
                covers the whole text with overlapping windows and pools over all of it.
            stride: tokens shared by consecutive windows (default: a quarter of ``max_length``).

        Example:
            >>> model.embed(["Il gatto dorme.", "Piove a Milano."]).shape
            (2, 384)
        """
        options = {
            "pooling": pooling,
            "normalize": normalize,
            "prefix": prefix,
            "prompt": prompt,
            "window": window,
            "stride": stride,
        }
        if isinstance(texts, str):
            return np.asarray(self.predict("embed", [texts], options)[0], dtype=np.float32)
        return np.stack(self.predict("embed", texts, options)).astype(np.float32, copy=False)

    def tag(
        self,
        texts: list[str],
        *,
        aggregation: str = _TAG["aggregation"],
        window: str = _TAG["window"],
        stride: int | None = _TAG["stride"],
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
        return self.predict("tag", texts, {"aggregation": aggregation, "window": window, "stride": stride})

    def classify(self, texts: list[str], *, top_k: int | None = _CLASSIFY["top_k"]) -> list[list[Label]]:
        """Text classification: the ``top_k`` labels of each text (all labels when ``None``).

        Multi-label models (``problem_type`` ``multi_label_classification``) score each
        label independently with a sigmoid; others use a softmax over labels.

        Example:
            >>> model.classify(["Che bella giornata!"])[0][0].label
            'positive'
        """
        return self.predict("classify", texts, {"top_k": top_k})

    def __repr__(self) -> str:
        return (
            f"FlareModel(path={str(self.path)!r}, task={self.manifest.task!r}, "
            f"precision={self.precision!r}, backend={self.backend!r})"
        )


def _create_backend_session(bundle: VerifiedBundle, opts: Mapping[str, Any]) -> Session:
    """The bundle's graph in its backend: onnxruntime, or OpenVINO for an IR."""
    if bundle.graph.backend == "openvino":
        from .openvino_session import create_openvino_session

        if bundle.weights_bytes is None:
            raise BundleError("the OpenVINO IR has no weights file; re-export with --openvino")
        return create_openvino_session(bundle.graph_bytes, bundle.weights_bytes, threads=opts["threads"])
    threads = opts["threads"] or available_cpus()
    settings = {"arena": opts["arena"], "spin": opts["spin"]}
    if opts["workload"] == "bulk" and threads > 1:  # one batch per thread (OrtSession's streams)
        return create_session(bundle, threads=1, streams=threads, **settings)
    return create_session(bundle, threads=threads, **settings)


def _open(path: str | Path, precision: str | None, backend: str) -> VerifiedBundle:
    """The verified bundle at ``path``; a cached export of a model id or checkpoint that fails
    its check is exported again (:func:`rebuild`)."""
    directory, entry = bundle_dir(path)
    try:
        return open_bundle(directory, precision=precision, backend=backend)
    except BundleError as exc:
        if entry is None:
            raise
        return open_bundle(rebuild(entry, exc), precision=precision, backend=backend)


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
    arena: bool = _DEFAULTS["arena"],
    workload: str = _DEFAULTS["workload"],
) -> FlareModel:
    """Open a bundle directory, verify every file it uses, and create the session.

    Args:
        path: a directory written by ``flare-onnx export``; or a Hugging Face model id or a
            checkpoint directory, exported once into ``$FLARE_ONNX_CACHE`` (default
            ``~/.cache/flare-onnx``) when the export extra is installed.
        precision: ``"int8"`` or ``"fp32"``; by default INT8 when the bundle has it.
        threads: onnxruntime's threads; by default the CPUs this process may use (affinity and
            cgroup quota: a container's limit, not the host's cores).
        max_batch_tokens: token budget of one batch (``batch × padded length``); bounds memory.
        max_batch_size: most texts in one batch.
        max_text_tokens: most tokens one text may hold when read in sliding windows (bounds the
            work of one text); ``None`` lifts the cap, for trusted batch jobs.
        spin: worker threads spin-wait between a call's operators (fastest on a dedicated machine;
            leave it off on shared machines, in containers and in serverless functions).
        backend: ``"onnxruntime"`` (lean, fast to start and at batch 1), ``"openvino"`` (the NNCF
            INT8 IR of a bundle exported with ``--openvino``) or ``"auto"`` (the default):
            onnxruntime for either workload (``model.backend_choice`` says why; docs/benchmarks.md).
        arena: keep onnxruntime's memory arena (faster; off keeps RSS flat as shapes vary).
        workload: ``"interactive"`` (each batch split over all threads: lowest latency for one
            long text) or ``"bulk"`` (one batch per thread at once, ``model.streams`` of them);
            measured in docs/benchmarks.md.

    Raises:
        BundleError: not a bundle, a file missing or altered, or a graph with external data.
        InputError: an option out of range.

    Example:
        >>> import flare_onnx
        >>> model = flare_onnx.load("flare-it-onnx")
        >>> model.fill_mask(["Roma è la <mask> d'Italia."])
    """
    choice = parse_load_options({"precision": precision, "backend": backend, "workload": workload})
    engine = choose_backend(choice["backend"], choice["workload"])
    limits = {
        "max_batch_tokens": max_batch_tokens,
        "max_batch_size": max_batch_size,
        "max_text_tokens": max_text_tokens,
    }
    session = {"threads": threads, "spin": spin, "arena": arena, "workload": choice["workload"]}
    model = FlareModel(_open(path, choice["precision"], engine.backend), {**session, **limits})
    model.backend_choice = engine.reason
    return model
