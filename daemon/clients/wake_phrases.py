"""Finding configured wake phrases in recognised text, whatever the ASR did to case, spacing and
punctuation.

Text and phrases are cut into the same tokens: a word of letters and digits for spaced scripts,
one character for scripts written without spaces (hanzi, kana, hangul; ``states.cjk``). A phrase
is found when its tokens occur in a row in the text's tokens, so ``hello robot`` matches
"Hello, robot!" but not "hello robots", and ``你好摩斯`` matches "你好，摩斯。" and "你 好 摩 斯".
NFKC folds fullwidth letters and digits to ASCII first; ``_`` is a separator, so the
microWakeWord-style ``hey_robot`` means "hey robot".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from states.cjk import is_cjk

__all__ = ["PhraseMatcher", "wake_tokens"]


def wake_tokens(text: str) -> tuple[str, ...]:
    """The comparison units of ``text``: lower-case words, and single CJK characters."""
    tokens: list[str] = []
    word: list[str] = []
    for char in unicodedata.normalize("NFKC", text).casefold():
        category = unicodedata.category(char)
        if category[0] in "LN" and is_cjk(char):
            if word:
                tokens.append("".join(word))
                word.clear()
            tokens.append(char)
        elif category[0] in "LNM":  # letters, digits, and the combining marks that belong to them
            word.append(char)
        elif word:
            tokens.append("".join(word))
            word.clear()
    if word:
        tokens.append("".join(word))
    return tuple(tokens)


class PhraseMatcher:
    """Which configured phrase, if any, a recognised text contains."""

    def __init__(self, phrases: Sequence[str]) -> None:
        if isinstance(phrases, str):
            raise TypeError("phrases must be a sequence of strings, not one string")
        if not phrases:
            raise ValueError("asr wake engine: no wake phrases configured (wake.hotword.phrases)")
        self.phrases = tuple(phrases)
        self._tokens: list[tuple[str, tuple[str, ...]]] = []
        for phrase in self.phrases:
            tokens = wake_tokens(phrase)
            if not tokens:
                raise ValueError(f"asr wake engine: wake phrase {phrase!r} has no letters or digits")
            self._tokens.append((phrase, tokens))

    def find(self, text: str) -> str | None:
        """The configured phrase whose first occurrence in ``text`` ends earliest (of two ending
        together, the longer); None if none occurs."""
        heard = wake_tokens(text)
        best: tuple[int, int, str] | None = None
        for phrase, tokens in self._tokens:
            end = _first_end(heard, tokens)
            if end is not None and (best is None or (end, -len(tokens)) < best[:2]):
                best = (end, -len(tokens), phrase)
        return best[2] if best is not None else None


def _first_end(heard: tuple[str, ...], tokens: tuple[str, ...]) -> int | None:
    """The index just after the first run of ``tokens`` in ``heard``."""
    size = len(tokens)
    for start in range(len(heard) - size + 1):
        if heard[start : start + size] == tokens:
            return start + size
    return None
