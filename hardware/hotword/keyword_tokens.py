"""Spell a wake phrase in the tokens of a sherpa-onnx keyword-spotting model.

A keyword line for sherpa-onnx is the phrase's tokens separated by spaces. The published
Chinese models use pinyin split into initial and final, the final carrying the tone mark
(你好摩斯 -> ``n ǐ h ǎo m ó s ī``); others use whole syllables or the characters themselves.
A phrase written in hanzi is converted with pypinyin (the reading pypinyin picks for the whole
phrase) and each spelling is tried against the model's ``tokens.txt`` in that order; a phrase
without hanzi is taken as tokens already (how English BPE models' keywords are written, and how
a user fixes a reading pypinyin gets wrong).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path

_HANZI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class KeywordSpellingError(ValueError):
    """The phrase cannot be written in the model's tokens; the message says which are missing."""


def load_tokens(path: Path) -> dict[str, int]:
    """``tokens.txt``: one ``symbol id`` pair a line. ``ValueError`` names the first bad line."""
    table: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError(f"line {number} is {line!r}, not 'symbol id'")
        table[fields[0]] = int(fields[1])
    if not table:
        raise ValueError("it holds no tokens")
    return table


def has_hanzi(phrase: str) -> bool:
    return _HANZI.search(phrase) is not None


def spell(phrase: str, tokens: Collection[str] | Mapping[str, int]) -> list[str]:
    """The tokens that spell ``phrase`` in a model whose token table is ``tokens``."""
    words = phrase.split()
    if not words:
        raise KeywordSpellingError("the phrase is empty")
    if not has_hanzi(phrase):
        missing = [w for w in words if w not in tokens]
        if missing:
            raise KeywordSpellingError(f"{' '.join(missing)} not in the model's tokens.txt")
        return words
    text = "".join(words)
    stray = list(dict.fromkeys(ch for ch in text if not has_hanzi(ch)))
    if stray:
        raise KeywordSpellingError(
            f"it mixes hanzi with {''.join(stray)!r}; write it all in hanzi or all in the model's tokens"
        )
    spellings = [_split_pinyin(text), _whole_pinyin(text), list(text)]
    for tried in spellings:
        if all(t in tokens for t in tried):
            return tried
    first = spellings[0]
    missing = [t for t in first if t not in tokens]
    raise KeywordSpellingError(
        f"spelt {' '.join(first)} (also tried whole syllables and the characters), but"
        f" {' '.join(missing)} not in the model's tokens.txt"
    )


def _syllables(text: str) -> list[str]:
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError as exc:
        raise KeywordSpellingError(
            "pypinyin is needed to spell hanzi (pip install 'moss-voice[hotword]'), or write the phrase in tokens"
        ) from exc
    return list(lazy_pinyin(text, style=Style.TONE))


def _whole_pinyin(text: str) -> list[str]:
    return _syllables(text)


def _split_pinyin(text: str) -> list[str]:
    syllables = _syllables(text)
    from pypinyin.contrib.tone_convert import to_finals_tone, to_initials

    # strict=False: y and w count as initials (yín -> y ín), as the published models' tokens do.
    parts = ((to_initials(s, strict=False), to_finals_tone(s, strict=False)) for s in syllables)
    return [token for pair in parts for token in pair if token]
