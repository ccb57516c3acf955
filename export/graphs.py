"""Torch modules that define each task's ONNX graph, and the ONNX export itself.

Every graph takes ``input_ids`` and ``attention_mask`` only: position ids are computed inside
(XLM-R numbers them from ``pad_token_id + 1`` and skips padding; the traced model does that
from ``input_ids``), and token type ids are all zeros, which keeps XLM-R's single-row
``type_vocab_size`` table in range. The fill-mask graph also takes ``mask_positions`` (flat
indices into ``batch × sequence``) and projects only those rows onto the vocabulary, through
a ``Gemm`` that reads the tied word-embedding matrix, so the bundle stores it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require

__all__ = ["GRAPH_IO", "export_graph", "OPSET"]

OPSET = 17

#: task -> (inputs, outputs) of its graph
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fill-mask": (("input_ids", "attention_mask", "mask_positions"), ("last_hidden_state", "mask_logits")),
    "feature-extraction": (("input_ids", "attention_mask"), ("last_hidden_state",)),
    "token-classification": (("input_ids", "attention_mask"), ("logits",)),
    "text-classification": (("input_ids", "attention_mask"), ("logits",)),
}


def _wrapper(task: str, model: Any) -> Any:
    torch = require("torch")

    class Encoder(torch.nn.Module):
        def __init__(self, base: Any) -> None:
            super().__init__()
            self.base = base

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class FillMask(torch.nn.Module):
        def __init__(self, mlm: Any) -> None:
            super().__init__()
            self.base = mlm.base_model
            self.head = mlm.lm_head if hasattr(mlm, "lm_head") else mlm.cls

        def forward(self, input_ids: Any, attention_mask: Any, mask_positions: Any) -> Any:
            hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mask_positions)
            return hidden, self.head(rows)

    class Logits(torch.nn.Module):
        def __init__(self, full: Any) -> None:
            super().__init__()
            self.full = full

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.full(input_ids=input_ids, attention_mask=attention_mask).logits

    if task == "fill-mask":
        module = FillMask(model)
    elif task == "feature-extraction":
        module = Encoder(model.base_model if hasattr(model, "base_model") else model)
    else:
        module = Logits(model)
    return module.eval()


def export_graph(task: str, model: Any, path: Path, *, pad_id: int) -> None:
    """Write the task's FP32 graph to ``path`` as one self-contained ONNX file."""
    torch = require("torch")
    module = _wrapper(task, model)
    inputs, outputs = GRAPH_IO[task]
    # A small batch with padding and two masks, so the trace sees every code path.
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, pad_id, pad_id]], dtype=torch.long)
    ids[0, 0] = ids[1, 0] = model.config.bos_token_id if model.config.bos_token_id is not None else 5
    attention = (ids != pad_id).long()
    args: tuple[Any, ...] = (ids, attention)
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
    }
    if task == "fill-mask":
        args += (torch.tensor([2, 9], dtype=torch.long),)
        dynamic["mask_positions"] = {0: "masks"}
        dynamic["last_hidden_state"] = {0: "batch", 1: "sequence"}
        dynamic["mask_logits"] = {0: "masks"}
    elif task == "feature-extraction":
        dynamic["last_hidden_state"] = {0: "batch", 1: "sequence"}
    elif task == "token-classification":
        dynamic["logits"] = {0: "batch", 1: "sequence"}
    else:
        dynamic["logits"] = {0: "batch"}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    module.eval()
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ExportError("the exported graph has external data; the model is too large for a bundle")
