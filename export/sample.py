"""The Italian sentences shipped with the project (written for it; no third-party corpus)."""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

__all__ = ["italian_sentences", "read_corpus", "mask_sentences"]


def italian_sentences() -> list[str]:
    """The shipped sample: a few hundred Italian sentences, one per line."""
    text = resources.files(__package__).joinpath("data/italiano.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_corpus(path: str | Path, *, limit: int | None = None) -> list[str]:
    """Sentences from plain text (one per line) or CoNLL-U / CoNLL (``# text =`` or tokens)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    conll = any(line.startswith("# text") or "\t" in line for line in lines[:200])
    if not conll:
        out = [line.strip() for line in lines if line.strip()]
    else:
        tokens: list[str] = []
        has_text = any(line.startswith("# text =") for line in lines[:200])
        for line in lines + [""]:
            if line.startswith("# text ="):
                out.append(line.split("=", 1)[1].strip())
            elif not has_text and line and not line.startswith("#"):
                cols = line.split("\t")
                if len(cols) >= 2 and "-" not in cols[0] and "." not in cols[0]:
                    tokens.append(cols[1] if cols[0].isdigit() else cols[0])
            elif not line and tokens:
                out.append(" ".join(tokens))
                tokens = []
    out = [s for s in out if s]
    return out[:limit] if limit else out


def mask_sentences(sentences: list[str], mask_token: str, *, seed: int = 0) -> list[str]:
    """Each sentence with one word (of three or more letters) replaced by ``mask_token``."""
    rng = random.Random(seed)
    out = []
    for s in sentences:
        words = s.split(" ")
        candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3]
        if not candidates:
            continue
        i = rng.choice(candidates)
        word = words[i]
        core = "".join(c for c in word if c.isalpha() or c == "'")
        tail = word[len(word.rstrip(".,;:!?")) :]
        head = word[: len(word) - len(word.lstrip("«\"'("))]
        if "'" in core:  # keep an elision's article: l'<mask>
            pre, _, _ = word.partition("'")
            words[i] = f"{pre}'{mask_token}{tail}"
        else:
            words[i] = f"{head}{mask_token}{tail}"
        out.append(" ".join(words))
    return out
