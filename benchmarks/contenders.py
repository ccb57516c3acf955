"""The contenders, each behind the same small interface, and the artifacts they need.

Every contender takes a list of texts and returns, for fill-mask, the top-5 token ids of each
``<mask>``, and for embeddings, mean-pooled L2-normalised vectors. Heavy libraries are
imported in ``load()``, so a fresh process measures only what its contender needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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


class OpenVinoContender(Contender):
    """OpenVINO compiling flare-onnx's FP32 graph for the CPU (same tokenizer and batching)."""

    key, name = "openvino-fp32", "OpenVINO FP32"

    def load(self) -> None:
        import openvino as ov

        from flare_onnx.bundle import read_manifest
        from flare_onnx.tokenization import TextEncoder

        # flare-onnx's tokenizer only: no onnxruntime session in this process, so the memory
        # and cold start measured are OpenVINO's own
        manifest = read_manifest(self.art.bundle)
        tokenizer_json = (Path(self.art.bundle) / "tokenizer.json").read_text(encoding="utf-8")
        self.encoder = TextEncoder(tokenizer_json, manifest.special, max_length=manifest.max_length)
        core = ov.Core()
        path = Path(self.art.bundle) / "model.fp32.onnx"
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.special = manifest.special
        self.has_masks = any(i.get_any_name() == "mask_positions" for i in self.compiled.inputs)

    def _run(self, texts: list[str], masks: bool) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        from flare_onnx.tokenization import pad_batch

        encs = self.encoder.encode(texts)
        windows = self.encoder.windows(encs, sliding=False, stride=0)
        ids, attention = pad_batch([w.ids for w in windows], self.special.pad_id)
        feeds = {"input_ids": ids, "attention_mask": attention}
        if self.has_masks:
            positions = np.flatnonzero(ids.reshape(-1) == self.special.mask_id) if masks else np.zeros(0, np.int64)
            feeds["mask_positions"] = positions.astype(np.int64)
        result = self.request.infer(feeds)
        return {k.get_any_name(): v for k, v in result.items()}, ids, attention

    def fill_mask(self, texts: list[str]) -> list[list[list[int]]]:
        out, ids, _ = self._run(texts, masks=True)
        return _split_masks(ids, self.special.mask_id, _top_ids(out["mask_logits"]))

    def embed(self, texts: list[str]) -> np.ndarray:
        out, _, attention = self._run(texts, masks=False)
        return _normalize(_mean_pool(out["last_hidden_state"], attention))

    def size_bytes(self) -> int | None:
        return (Path(self.art.bundle) / "model.fp32.onnx").stat().st_size


CONTENDERS: dict[str, type[Contender]] = {
    c.key: c
    for c in (TorchContender, TorchInt8Contender, OptimumContender, FlareContender, FlareInt8Contender, OpenVinoContender)
}
BASELINE = "torch-fp32"


def available(keys: list[str]) -> list[str]:
    """The contenders whose libraries are installed."""
    import importlib.util

    needs = {"optimum-int8": "optimum", "openvino-fp32": "openvino"}
    return [k for k in keys if k not in needs or importlib.util.find_spec(needs[k]) is not None]
