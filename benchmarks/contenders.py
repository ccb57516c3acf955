"""The contenders, each behind the same small interface, and the artifacts they need.

Every contender takes a list of texts and returns, for fill-mask, the top-5 token ids of each
``<mask>``, and for embeddings, mean-pooled L2-normalised vectors. Heavy libraries are
imported in ``load()``, so a fresh process measures only what its contender needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOP = 5


@dataclass
class Artifacts:
    """Paths every contender loads from (JSON-serialisable, passed to worker processes)."""

    checkpoint: str  # transformers checkpoint (torch contenders)
    bundle: str  # flare-onnx bundle (fill-mask or feature-extraction)
    optimum: dict[str, str]  # task -> optimum avx2 dynamic INT8 directory
    mask_token: str | None
    label: str  # which model this is, for the report
    peers: dict[str, str] = field(
        default_factory=dict
    )  # "ort-dynamic" / "nncf": graphs made from the bundle's FP32 graph

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, text: str) -> "Artifacts":
        return cls(**json.loads(text))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def _top_ids(logits: np.ndarray) -> list[list[int]]:
    return np.argsort(-logits, axis=-1)[:, :TOP].tolist()


def _split_masks(ids: np.ndarray, mask_id: int, rows: list[list[int]]) -> list[list[list[int]]]:
    out, r = [], 0
    for seq in ids:
        n = int((seq == mask_id).sum())
        out.append(rows[r : r + n])
        r += n
    return out


class Contender:
    key = ""
    name = ""
    artifact_file: str | None = None
    tasks: tuple[str, ...] = ("fill-mask", "embed")

    def __init__(self, art: Artifacts, threads: int) -> None:
        self.art = art
        self.threads = threads

    def load(self) -> None:
        raise NotImplementedError

    def fill_mask(self, texts: list[str]) -> list[list[list[int]]]:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def size_bytes(self) -> int | None:
        return None


class TorchContender(Contender):
    key, name = "torch-fp32", "PyTorch FP32"
    quantize = False

    def load(self) -> None:
        import torch
        from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

        torch.set_num_threads(self.threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(self.art.checkpoint)
        auto = AutoModelForMaskedLM if self.art.mask_token else AutoModel
        model = auto.from_pretrained(self.art.checkpoint).eval()
        if self.quantize:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.base = model.base_model if self.art.mask_token else model

    def _enc(self, texts: list[str]) -> Any:
        # CTranslate2 sets the process's OpenMP thread count when its encoder is created
        # (intra_threads=1 for its one-batch-per-thread peer), and torch shares that runtime:
        # without this, PyTorch ran on one thread after that peer loaded (5x slower here).
        if self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)
        return self.tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")

    def fill_mask(self, texts: list[str]) -> list[list[list[int]]]:
        enc = self._enc(texts)
        with self.torch.inference_mode():
            logits = self.model(**enc).logits
        ids = enc["input_ids"].numpy()
        rows = _top_ids(logits.numpy()[ids == self.tok.mask_token_id])
        return _split_masks(ids, self.tok.mask_token_id, rows)

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self._enc(texts)
        with self.torch.inference_mode():
            hidden = self.base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return _normalize(_mean_pool(hidden.numpy(), enc["attention_mask"].numpy()))

    def size_bytes(self) -> int | None:
        files = list(Path(self.art.checkpoint).glob("*.bin")) + list(Path(self.art.checkpoint).glob("*.safetensors"))
        return sum(f.stat().st_size for f in files) if not self.quantize else None


class TorchInt8Contender(TorchContender):
    key, name = "torch-int8", "PyTorch dynamic INT8"
    quantize = True


class OptimumContender(Contender):
    """optimum-cli export onnx + ORTQuantizer avx2 dynamic INT8, run with onnxruntime."""

    key, name = "optimum-int8", "optimum avx2 dynamic INT8"

    def load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.sessions = {}
        self.toks = {}
        for task, directory in self.art.optimum.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            self.sessions[task] = ort.InferenceSession(
                str(Path(directory) / "model_quantized.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
            pad = json.loads((Path(directory) / "special_tokens_map.json").read_text())["pad_token"]
            pad = pad if isinstance(pad, str) else pad["content"]
            tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad)
            tok.enable_truncation(512)
            self.toks[task] = tok

    def _feeds(self, task: str, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        encs = self.toks[task].encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        names = {i.name for i in self.sessions[task].get_inputs()}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds, mask

    def fill_mask(self, texts: list[str]) -> list[list[list[int]]]:
        feeds, _ = self._feeds("fill-mask", texts)
        (logits,) = self.sessions["fill-mask"].run(None, feeds)
        mask_id = self.toks["fill-mask"].token_to_id(self.art.mask_token)
        ids = feeds["input_ids"]
        return _split_masks(ids, mask_id, _top_ids(logits[ids == mask_id]))

    def embed(self, texts: list[str]) -> np.ndarray:
        feeds, mask = self._feeds("feature-extraction", texts)
        hidden = self.sessions["feature-extraction"].run(None, feeds)[0]
        return _normalize(_mean_pool(hidden, mask))

    def size_bytes(self) -> int | None:
        directory = self.art.optimum.get("fill-mask") or self.art.optimum.get("feature-extraction")
        return (Path(directory) / "model_quantized.onnx").stat().st_size if directory else None


class FlareContender(Contender):
    key, name = "flare-fp32", "flare-onnx FP32"
    precision = "fp32"

    def load(self) -> None:
        import flare_onnx

        self.model = flare_onnx.load(self.art.bundle, precision=self.precision, threads=self.threads)

    def fill_mask(self, texts: list[str]) -> list[list[list[int]]]:
        return [[[p.token_id for p in preds] for preds in masks] for masks in self.model.fill_mask(texts, top_k=TOP)]

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.embed(texts)

    def size_bytes(self) -> int | None:
        manifest = json.loads((Path(self.art.bundle) / "manifest.json").read_text())
        return manifest["files"][manifest["graphs"][self.precision]["file"]]["size"]


class FlareInt8Contender(FlareContender):
    key, name = "flare-int8", "flare-onnx INT8"
    precision = "int8"


class FlareBulkContender(FlareInt8Contender):
    """flare-onnx INT8 as its file job and Ray run it on onnxruntime (``workload="bulk"``): one
    batch per thread at once, each on one onnxruntime thread. The backend is pinned, so this row
    stays onnxruntime's whatever ``auto`` chooses (it once chose OpenVINO on VNNI CPUs)."""

    key, name = "flare-int8-bulk", "flare-onnx INT8, bulk workload (one batch per thread)"

    def load(self) -> None:
        import flare_onnx

        self.model = flare_onnx.load(
            self.art.bundle, precision="int8", threads=self.threads, workload="bulk", backend="onnxruntime"
        )


class FlareLeanContender(FlareInt8Contender):
    """flare-onnx's INT8 graph in a session with no prepacked weights and no memory arena: a
    "lean" setting measured for memory (it held more, and ran slower; not offered)."""

    key, name = "flare-int8-lean", "flare-onnx INT8, no prepacking, no arena"

    def load(self) -> None:
        import flare_onnx
        import onnxruntime as ort
        from flare_onnx.engine.session import OrtSession

        self.model = flare_onnx.load(self.art.bundle, precision="int8", threads=self.threads, arena=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
        graph = Path(self.art.bundle) / "model.int8.onnx"
        self.model.session = OrtSession(ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"]))


class FlareOpenVinoContender(FlareContender):
    key, name = "flare-openvino", "flare-onnx OpenVINO INT8 (backend)"

    def load(self) -> None:
        import flare_onnx

        self.model = flare_onnx.load(self.art.bundle, backend="openvino", threads=self.threads)

    def size_bytes(self) -> int | None:
        manifest = json.loads((Path(self.art.bundle) / "manifest.json").read_text())
        ir = manifest["openvino"]["int8"]
        return sum(manifest["files"][ir[k]]["size"] for k in ("file", "weights"))


class GraphContender(Contender):
    """A peer running a graph made from flare-onnx's FP32 graph, with flare-onnx's tokenizer and
    padding, so every contender sees the same token ids."""

    def load(self) -> None:
        from flare_onnx.engine.bundle import read_manifest
        from flare_onnx.engine.tokenization import TextEncoder

        # flare-onnx's tokenizer only: no flare-onnx session in this process, so the memory
        # and cold start measured are the peer's own
        manifest = read_manifest(self.art.bundle)
        tokenizer_json = (Path(self.art.bundle) / "tokenizer.json").read_text(encoding="utf-8")
        self.encoder = TextEncoder(tokenizer_json, manifest.special, max_length=manifest.max_length)
        self.special = manifest.special
        self.compile()

    def compile(self) -> None:
        raise NotImplementedError

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _run(self, texts: list[str], masks: bool) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        from flare_onnx.engine.batching import pad_batch

        encs = self.encoder.encode(texts)
        windows = self.encoder.windows(encs, sliding=False, stride=0)
        ids, attention = pad_batch([w.ids for w in windows], self.special.pad_id)
        feeds = {"input_ids": ids, "attention_mask": attention}
        if self.has_masks:
            positions = np.flatnonzero(ids.reshape(-1) == self.special.mask_id) if masks else np.zeros(0, np.int64)
            feeds["mask_positions"] = positions.astype(np.int64)
        return self.infer(feeds), ids, attention

    def fill_mask(self, texts: list[str]) -> list[list[list[int]]]:
        out, ids, _ = self._run(texts, masks=True)
        return _split_masks(ids, self.special.mask_id, _top_ids(out["mask_logits"]))

    def embed(self, texts: list[str]) -> np.ndarray:
        out, _, attention = self._run(texts, masks=False)
        return _normalize(_mean_pool(out["last_hidden_state"], attention))


class OpenVinoContender(GraphContender):
    """OpenVINO compiling flare-onnx's FP32 graph. Its default inference precision on a CPU
    with AVX-512 BF16 (or AMX) is bf16, so this row runs in BF16 there."""

    key, name = "openvino-fp32", "OpenVINO, FP32 graph (default hint: BF16 here)"
    hint: dict[str, str] = {}
    graph = "model.fp32.onnx"

    def path(self) -> str:
        return str(Path(self.art.bundle) / self.graph)

    def compile(self) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", **self.hint}
        self.compiled = core.compile_model(self.path(), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.has_masks = any(i.get_any_name() == "mask_positions" for i in self.compiled.inputs)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k.get_any_name(): v for k, v in self.request.infer(feeds).items()}

    def size_bytes(self) -> int | None:
        path = Path(self.path())
        return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


class OpenVinoF32Contender(OpenVinoContender):
    key, name = "openvino-f32", "OpenVINO, FP32 graph, f32 hint"
    hint = {"INFERENCE_PRECISION_HINT": "f32"}


class NncfContender(OpenVinoContender):
    """NNCF static INT8 (transformer preset, calibrated on Italian text that is not measured)."""

    key, name = "nncf-latency", "OpenVINO + NNCF INT8, LATENCY hint"

    def path(self) -> str:
        return self.art.peers["nncf"]


class NncfThroughputContender(NncfContender):
    """The THROUGHPUT hint as a user drives it: a batch split over the compiled model's
    optimal number of infer requests, run asynchronously."""

    key, name = "nncf-throughput", "OpenVINO + NNCF INT8, THROUGHPUT hint"

    def compile(self) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "THROUGHPUT"}
        self.compiled = core.compile_model(self.path(), "CPU", config)
        self.requests = [
            self.compiled.create_infer_request()
            for _ in range(max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))))
        ]
        self.has_masks = any(i.get_any_name() == "mask_positions" for i in self.compiled.inputs)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, width = feeds["input_ids"].shape
        parts = np.array_split(np.arange(rows), min(len(self.requests), rows))
        started = []
        for request, idx in zip(self.requests, parts):
            sub = {k: v[idx] for k, v in feeds.items() if k != "mask_positions"}
            if self.has_masks:  # flat positions into this part's rows
                flat = feeds["mask_positions"]
                mine = flat[(flat // width >= idx[0]) & (flat // width <= idx[-1])]
                sub["mask_positions"] = (mine - idx[0] * width).astype(np.int64)
            request.start_async(sub)
            started.append(request)
        results = []
        for request in started:
            request.wait()
            results.append({p.get_any_name(): np.array(request.get_tensor(p).data) for p in self.compiled.outputs})
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}


class OrtDynamicContender(GraphContender):
    """onnxruntime ``quantize_dynamic`` (per-channel) of flare-onnx's FP32 graph: what a
    fastembed-style user gets."""

    key, name = "ort-dynamic", "onnxruntime quantize_dynamic per-channel"

    def compile(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.art.peers["ort-dynamic"], opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.has_masks = any(i.name == "mask_positions" for i in self.session.get_inputs())

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, feeds)))

    def size_bytes(self) -> int | None:
        return Path(self.art.peers["ort-dynamic"]).stat().st_size


class Ct2Contender(GraphContender):
    """CTranslate2's int8 encoder, converted from the checkpoint as its users convert it
    (``ct2-transformers-converter --quantization int8``), fed flare-onnx's token ids unpadded
    (CTranslate2 pads and masks itself). Its encoder has no MLM head: embeddings only."""

    key, name = "ct2-int8", "CTranslate2 int8 encoder"
    tasks = ("embed",)

    def compile(self) -> None:
        import ctranslate2

        self.ct2 = ctranslate2.Encoder(
            self.art.peers["ct2"], device="cpu", compute_type="int8", intra_threads=self.threads, inter_threads=1
        )

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [w.ids for w in self.encoder.windows(self.encoder.encode(texts), sliding=False, stride=0)]

    def _pooled(self, ids: list[list[int]]) -> np.ndarray:
        """Mean-pooled hidden states of one CTranslate2 batch (it pads; the lengths mask)."""
        hidden = np.array(self.ct2.forward_batch(ids).last_hidden_state)
        lengths = np.array([len(row) for row in ids])
        return _mean_pool(hidden, np.arange(hidden.shape[1])[None, :] < lengths[:, None])

    def embed(self, texts: list[str]) -> np.ndarray:
        return _normalize(self._pooled(self._ids(texts)))

    def size_bytes(self) -> int | None:
        return (Path(self.art.peers["ct2"]) / "model.bin").stat().st_size


class Ct2StreamsContender(Ct2Contender):
    """CTranslate2's own way to run batches side by side: ``inter_threads`` = the threads,
    ``intra_threads=1``, each call's texts cut into one part per thread and sent at once (the
    same work flare-onnx's bulk workload does: every other text, so the parts are alike in length)."""

    key, name = "ct2-int8-streams", "CTranslate2 int8 encoder, one batch per thread (inter_threads)"

    def compile(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import ctranslate2

        self.ct2 = ctranslate2.Encoder(
            self.art.peers["ct2"], device="cpu", compute_type="int8", intra_threads=1, inter_threads=self.threads
        )
        self.pool = ThreadPoolExecutor(self.threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        ids = self._ids(texts)
        parts = [np.arange(i, len(ids), self.threads) for i in range(min(self.threads, len(ids)))]
        pooled = np.concatenate(list(self.pool.map(lambda rows: self._pooled([ids[i] for i in rows]), parts)))
        out = np.empty_like(pooled)
        out[np.concatenate(parts)] = pooled
        return _normalize(out)


CONTENDERS: dict[str, type[Contender]] = {
    c.key: c
    for c in (
        TorchContender,
        TorchInt8Contender,
        OptimumContender,
        OrtDynamicContender,
        OpenVinoContender,
        OpenVinoF32Contender,
        NncfContender,
        NncfThroughputContender,
        FlareContender,
        FlareInt8Contender,
        FlareLeanContender,
        FlareOpenVinoContender,
        FlareBulkContender,
        Ct2Contender,
        Ct2StreamsContender,
    )
}
BASELINE = "torch-fp32"


def available(keys: list[str]) -> list[str]:
    """The contenders whose libraries are installed."""
    import importlib.util

    needs = {
        "optimum-int8": "optimum",
        "openvino-fp32": "openvino",
        "openvino-f32": "openvino",
        "nncf-latency": "nncf",
        "nncf-throughput": "nncf",
        "flare-openvino": "nncf",
        "ct2-int8": "ctranslate2",
    }
    return [k for k in keys if k not in needs or importlib.util.find_spec(needs[k]) is not None]
