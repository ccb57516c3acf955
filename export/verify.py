"""Run the exported graph and the PyTorch model on the same real sentences and compare."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ._deps import require

__all__ = ["make_batches", "torch_outputs", "onnx_outputs", "compare"]

Batch = dict[str, np.ndarray]


def make_batches(
    tokenizer: Any, texts: list[str], *, pad_id: int, mask_id: int | None, max_length: int, batch_size: int = 16
) -> list[Batch]:
    """Length-sorted, padded batches of ``texts`` (with special tokens), as graph feeds."""
    encodings = [e.ids[:max_length] for e in tokenizer.encode_batch(texts)]
    encodings.sort(key=len)
    batches = []
    for start in range(0, len(encodings), batch_size):
        chunk = encodings[start : start + batch_size]
        width = max(map(len, chunk))
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = seq
        batch = {"input_ids": ids, "attention_mask": (ids != pad_id).astype(np.int64)}
        if mask_id is not None:
            batch["mask_positions"] = np.flatnonzero(ids.reshape(-1) == mask_id).astype(np.int64)
        batches.append(batch)
    return batches


def torch_outputs(task: str, model: Any, batches: list[Batch]) -> list[dict[str, np.ndarray]]:
    """The PyTorch model's outputs, named like the graph's."""
    torch = require("torch")
    out = []
    with torch.inference_mode():
        for b in batches:
            ids = torch.from_numpy(b["input_ids"])
            attention = torch.from_numpy(b["attention_mask"])
            if task == "fill-mask":
                res = model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
                logits = res.logits.reshape(-1, res.logits.shape[-1])[torch.from_numpy(b["mask_positions"])]
                out.append({"last_hidden_state": res.hidden_states[-1].numpy(), "mask_logits": logits.numpy()})
            elif task == "feature-extraction":
                res = model(input_ids=ids, attention_mask=attention)
                out.append({"last_hidden_state": res.last_hidden_state.numpy()})
            else:
                out.append({"logits": model(input_ids=ids, attention_mask=attention).logits.numpy()})
    return out


def onnx_outputs(session: Any, batches: list[Batch]) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return [dict(zip(names, session.run(None, {k: v for k, v in b.items() if k in wanted}))) for b in batches]


def tensor_rows(model: Any, names: list[str], batches: list[Batch]) -> Iterator[dict[str, np.ndarray]]:
    """Per batch, ``{tensor: its rows}`` for the ``names`` of ``model`` (an ONNX ModelProto, which
    gains them as outputs), run by onnxruntime; pad positions are left out of ``[batch, seq, …]``
    tensors, other tensors are flattened to rows of their last axis."""
    onnx, ort = require("onnx"), require("onnxruntime")
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in names if x not in have)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    for batch in batches:
        keep = batch["attention_mask"].astype(bool)
        values = session.run(names, {k: v for k, v in batch.items() if k in wanted})
        yield {
            x: value[keep] if value.shape[:2] == keep.shape else value.reshape(-1, value.shape[-1])
            for x, value in zip(names, values)
        }


def calibration_statistics(
    model: Any, batches: list[Batch], *, peaks: Iterable[str] = (), moments: Iterable[str] = ()
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One pass of ``batches`` through ``model`` (the FP32 graph, an ONNX ModelProto) for what the
    INT8 pass calibrates on, pad positions left out: by tensor, the per-channel peak ``max |x|``
    for each of ``peaks`` (SmoothQuant's) and ``XᵀX`` in float64 for each of ``moments`` (GPTQ's)."""
    seen: dict[str, np.ndarray] = {x: np.zeros(0, np.float32) for x in peaks}
    sums: dict[str, Any] = dict.fromkeys(moments, 0.0)
    names = sorted(set(seen) | set(sums))
    for rows in tensor_rows(model, names, batches) if names else ():
        for x, value in rows.items():
            if x in seen:
                peak = np.abs(value).max(axis=0)
                seen[x] = peak if seen[x].size == 0 else np.maximum(seen[x], peak)
            if x in sums:
                value = value.astype(np.float64)
                sums[x] = sums[x] + value.T @ value
    return seen, {x: np.asarray(h) for x, h in sums.items()}


def _pooled(hidden: np.ndarray, attention: np.ndarray) -> np.ndarray:
    m = attention[..., None].astype(np.float64)
    return (hidden * m).sum(1) / m.sum(1)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def _nn_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Share of sentences whose nearest other sentence (cosine) is the same under both."""
    if len(ref) < 3:
        return 1.0
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = got / np.linalg.norm(got, axis=1, keepdims=True)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    return float((sa.argmax(1) == sb.argmax(1)).mean())


def _max_abs_diff(name: str, rv: np.ndarray, gv: np.ndarray, keep: np.ndarray) -> float:
    """The largest difference of one output, over real tokens for token-level outputs."""
    token_level = name == "last_hidden_state" or (name == "logits" and rv.ndim == 3)
    diff = np.abs(rv - gv)[keep] if token_level else np.abs(rv - gv)
    return float(diff.max()) if diff.size else 0.0


def _label_agreement(ref: np.ndarray, got: np.ndarray, keep: np.ndarray) -> tuple[int, int]:
    """(labels agreeing, labels compared): per real token for token classification."""
    rl, gl = ref.argmax(-1), got.argmax(-1)
    if rl.ndim == 2:
        return int((rl == gl)[keep].sum()), int(keep.sum())
    return int((rl == gl).sum()), int(rl.size)


def compare(batches: list[Batch], ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Agreement figures of ``got`` against ``ref`` (real tokens only; padding ignored)."""
    max_diff = 0.0
    pooled_ref, pooled_got = [], []
    top1 = top5 = masks = 0
    label_agree = label_total = 0
    for b, r, g in zip(batches, ref, got):
        keep = b["attention_mask"].astype(bool)
        max_diff = max([max_diff] + [_max_abs_diff(name, r[name], g[name], keep) for name in r])
        if "last_hidden_state" in r:
            pooled_ref.append(_pooled(r["last_hidden_state"], b["attention_mask"]))
            pooled_got.append(_pooled(g["last_hidden_state"], b["attention_mask"]))
        if "mask_logits" in r and len(r["mask_logits"]):
            ra, ga = r["mask_logits"], g["mask_logits"]
            best = ra.argmax(-1)
            top1 += int((ga.argmax(-1) == best).sum())
            top5_got = np.argsort(-ga, axis=-1)[:, :5]
            top5 += int(sum(best[i] in top5_got[i] for i in range(len(best))))
            masks += len(best)
        if "logits" in r:
            agree, total = _label_agreement(r["logits"], g["logits"], keep)
            label_agree, label_total = label_agree + agree, label_total + total
    result: dict[str, Any] = {"max_abs_diff": max_diff}
    if pooled_ref:
        ref_all, got_all = np.concatenate(pooled_ref), np.concatenate(pooled_got)
        cos = _cos(ref_all, got_all)
        result["embedding_cosine_mean"] = float(cos.mean())
        result["embedding_cosine_min"] = float(cos.min())
        result["embedding_nn_agreement"] = _nn_agreement(ref_all, got_all)
        result["sentences"] = int(len(cos))
    if masks:
        result["masks"] = masks
        result["top1_agreement"] = top1 / masks
        result["top1_in_top5"] = top5 / masks
    if label_total:
        result["label_agreement"] = label_agree / label_total
    return result
