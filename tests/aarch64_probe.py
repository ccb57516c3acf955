"""Every task of every bundle given, through the Python API, the CLI and the serverless handler,
as JSON: ``python aarch64_probe.py OUT.json NAME=BUNDLE ... [--api-only NAME ...]`` (the named
bundles through the Python API only: the CLI and the handler run the same kernels, and loading
a full-size graph twice more is most of an emulated run).

tests/test_aarch64.py runs it natively and on an emulated aarch64 interpreter and compares
the two. It imports only the runtime (flare_onnx, numpy), so it runs where pytest is not
installed; it also records which heavy modules ``import flare_onnx`` pulled in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
from typing import Any

SENTENCES = [
    "Il gatto dorme sul divano.",
    "Roma è la capitale d'Italia e conta quasi tre milioni di abitanti.",
    "Mario Rossi lavora alla Fiat di Torino dal 2019.",
    "Domani pioverà su Milano, Bologna e Firenze.",
    "Che bella giornata!",
    "La Divina Commedia fu scritta da Dante Alighieri nel Trecento.",
]
MASKED = ["Il gatto <mask> sul divano.", "Roma è la <mask> d'Italia.", "Domani <mask> su <mask>."]
HEAVY = ("torch", "transformers", "optimum", "onnx")


def _cli(args: list[str]) -> Any:
    from flare_onnx.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return {"code": code, "out": json.loads(out.getvalue())}


def probe(bundles: dict[str, str], api_only: frozenset[str] = frozenset()) -> dict[str, Any]:
    before = set(sys.modules)
    import flare_onnx

    heavy = sorted(m for m in HEAVY if m in sys.modules and m not in before)
    result: dict[str, Any] = {"machine": platform.machine(), "heavy_imports": heavy, "bundles": {}}
    for name, path in bundles.items():
        per: dict[str, Any] = {}
        for precision in ("fp32", "int8"):
            model = flare_onnx.load(path, precision=precision, threads=1)
            if "fill-mask" in model.tasks:
                per[f"fill-mask/{precision}"] = [[[(p.token_id, p.score) for p in preds] for preds in masks]
                                                 for masks in model.fill_mask(MASKED, top_k=5)]
            if "embed" in model.tasks:
                per[f"embed/{precision}"] = model.embed(SENTENCES).tolist()
            if "tag" in model.tasks:
                per[f"tag/{precision}"] = [[(w.word, w.label, w.score) for w in r.words] for r in model.tag(SENTENCES)]
            if "classify" in model.tasks:
                per[f"classify/{precision}"] = [[(lab.label, lab.score) for lab in r] for r in model.classify(SENTENCES, top_k=None)]
        result["bundles"][name] = per
        if name in api_only:
            continue
        task = next(t for t in ("fill-mask", "tag", "classify", "embed") if t in model.tasks)
        text = MASKED[1] if task == "fill-mask" else SENTENCES[2]
        per["cli"] = _cli([task, path, "--threads", "1", text])
        per["serverless"] = _serverless(path, task, text)
    return result


def _serverless(path: str, task: str, text: str) -> dict[str, Any]:
    """The handler's answer for ``path`` (set by the environment, as on Lambda); the caller's
    environment and the handler's cached model left as they were (the x86 side runs in pytest's
    process)."""
    from flare_onnx.serverless import _load, handler

    saved = {k: os.environ.get(k) for k in ("FLARE_ONNX_BUNDLE", "FLARE_ONNX_THREADS")}
    os.environ.update(FLARE_ONNX_BUNDLE=path, FLARE_ONNX_THREADS="1")
    _load.cache_clear()
    try:
        answer = handler({"body": json.dumps({"task": task, "texts": [text]})})
    finally:
        _load.cache_clear()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"status": answer["statusCode"], "body": json.loads(answer["body"])}


def main(argv: list[str]) -> int:
    out, rest = argv[0], argv[1:]
    api_only = frozenset(rest[i + 1] for i, a in enumerate(rest) if a == "--api-only")
    pairs = [a for i, a in enumerate(rest) if a != "--api-only" and (i == 0 or rest[i - 1] != "--api-only")]
    bundles = dict(p.split("=", 1) for p in pairs)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(probe(bundles, api_only), f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
