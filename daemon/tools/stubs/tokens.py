"""How the LLM stand-in cuts an answer into streamed tokens; the latency scenarios count with it too."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*[A-Za-z0-9]+|\s*[^\sA-Za-z0-9]|\s+")
_WORD_PIECE = 4


def tokenize(text: str) -> list[str]:
    """Split text into small pieces like an LLM tokenizer would stream them.

    CJK and punctuation: one character per token; English: words (with their leading space)
    cut into pieces of at most four letters. ``"".join(tokenize(t)) == t`` always.
    """
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        piece = match.group()
        stripped = piece.lstrip()
        lead = piece[: len(piece) - len(stripped)]
        if stripped.isascii() and stripped.isalnum() and len(stripped) > _WORD_PIECE:
            parts = [stripped[i : i + _WORD_PIECE] for i in range(0, len(stripped), _WORD_PIECE)]
            parts[0] = lead + parts[0]
            tokens.extend(parts)
        else:
            tokens.append(piece)
    return tokens
