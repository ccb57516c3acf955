"""The Flare-IT-shaped reference checkpoint: osiria/flare-it's layout and shape, random weights.

The Hugging Face Hub is not always reachable (it is not from this project's CI), so tests and
benchmarks run on a checkpoint with the same ``config.json``, tokenizer class and files as
osiria/flare-it: a 14,610-token WordPiece vocabulary trained with ``tokenizers`` on the
Italian sample shipped with flare-onnx (padded with ``[unusedN]`` tokens), XLM-R special
tokens, and seeded random weights - 16,618,770 parameters, saved as ``pytorch_model.bin``.
Speed and memory do not depend on the weights' values; fidelity checks need trained weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require
from .sample import italian_sentences

__all__ = ["write_reference", "FLARE_IT_CONFIG", "SPECIAL_TOKENS", "TINY"]

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
#: the full-size reference's vocabulary: the WordPiece trainer run once on the shipped sample
SHIPPED_VOCAB = Path(__file__).with_name("data") / "reference-vocab.txt"

#: osiria/flare-it's config.json
FLARE_IT_CONFIG: dict[str, Any] = {
    "architectures": ["XLMRobertaForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "classifier_dropout": None,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 384,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "xlm-roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 6,
    "pad_token_id": 1,
    "position_embedding_type": "absolute",
    "type_vocab_size": 1,
    "use_cache": True,
    "vocab_size": 14610,
}

#: A few-hundred-kB model of the same architecture, for fast tests.
TINY: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 130,
}

TOKENIZER_CONFIG = {
    "tokenizer_class": "BertTokenizer",
    "do_lower_case": True,
    "strip_accents": False,
    "tokenize_chinese_chars": True,
    "do_basic_tokenize": True,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "cls_token": "<s>",
    "sep_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
    "model_max_length": 512,
}

_ARCH = {
    "fill-mask": ("XLMRobertaForMaskedLM", "XLMRobertaForMaskedLM"),
    "token-classification": ("XLMRobertaForTokenClassification", "XLMRobertaForTokenClassification"),
    "text-classification": ("XLMRobertaForSequenceClassification", "XLMRobertaForSequenceClassification"),
}


def _train_vocab(sentences: list[str], size: int) -> list[str]:
    tk = require("tokenizers")
    tok = tk.Tokenizer(tk.models.WordPiece(unk_token="<unk>"))
    tok.normalizer = tk.normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    trainer = tk.trainers.WordPieceTrainer(vocab_size=size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(sentences, trainer=trainer)
    # The trainer numbers tokens of equal frequency in hash order, which changes from run to
    # run: order them by (whole words before ##pieces, text) so the file is the same bytes.
    learned = sorted((t for t in tok.get_vocab() if t not in SPECIAL_TOKENS), key=lambda t: (t.startswith("##"), t))
    tokens = (list(SPECIAL_TOKENS) + learned)[:size]
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    return tokens


def write_reference(
    out_dir: str | Path,
    *,
    task: str = "fill-mask",
    labels: list[str] | None = None,
    tiny: bool = False,
    seed: int = 0,
    corpus: list[str] | None = None,
) -> Path:
    """Write a Flare-IT-shaped checkpoint with seeded random weights.

    Args:
        task: ``fill-mask`` (like osiria/flare-it), or a fine-tuned head:
            ``token-classification`` / ``text-classification`` (needs ``labels``).
        labels: label names, written to ``id2label``.
        tiny: a 2-layer, 32-wide model with a small vocabulary, for fast tests.
        corpus: sentences to train the vocabulary on (default: the vocabulary trained once on
            the shipped sample, shipped beside it, so the checkpoint is the same bytes on every run).
    """
    torch = require("torch")
    transformers = require("transformers")
    if task not in _ARCH:
        raise ExportError(f"reference task must be one of {', '.join(_ARCH)}, not {task!r}")
    if task != "fill-mask" and not labels:
        raise ExportError(f"a {task} reference checkpoint needs labels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(FLARE_IT_CONFIG)
    sentences = corpus or italian_sentences()
    if tiny:
        cfg.update(TINY)
        vocab = _train_vocab(sentences, 1000)
        cfg["vocab_size"] = len(vocab)
    elif corpus is None:
        # tokenizers' WordPiece trainer breaks ties in a per-process hash order, so the same
        # sample trains a different vocabulary on every run: the full-size reference uses the
        # one trained once and shipped, and is the same bytes everywhere
        vocab = SHIPPED_VOCAB.read_text(encoding="utf-8").splitlines()
    else:
        vocab = _train_vocab(sentences, cfg["vocab_size"])
    arch, class_name = _ARCH[task]
    cfg.update(architectures=[arch], flare_onnx_random_weights=True)  # the bundle says its answers are noise
    if labels:
        cfg["id2label"] = dict(enumerate(labels))
        cfg["label2id"] = {label: i for i, label in enumerate(labels)}
    config = transformers.XLMRobertaConfig(**cfg)
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config).eval()
    model.save_pretrained(str(out), safe_serialization=False)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    special_map = {k: v for k, v in TOKENIZER_CONFIG.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    (out / "README.md").write_text(
        "# Flare-IT-shaped reference checkpoint (random weights)\n\n"
        "Written by `flare-onnx reference`: osiria/flare-it's config, tokenizer class and file "
        "layout, a WordPiece vocabulary trained on flare-onnx's Italian sample, and seeded "
        f"random weights (seed {seed}). For testing code paths, speed and memory only.\n"
    )
    return out
