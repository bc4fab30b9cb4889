"""Which characters belong to scripts written without spaces between words.

One definition for the whole project: the ASR text joiner (``daemon.clients.asr_text``) and the
speech text stages (``states.speech_chars``) both ask it whether a space goes between two pieces.
"""

from __future__ import annotations

__all__ = ["is_cjk"]


def is_cjk(char: str) -> bool:
    """True for CJK ideographs, kana, hangul syllables, CJK and fullwidth punctuation."""
    code = ord(char)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, CJK punctuation, kana, bopomofo, ideographs
        or 0xAC00 <= code <= 0xD7AF  # hangul syllables
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFE30 <= code <= 0xFE4F  # CJK compatibility forms (vertical marks)
        or 0xFF00 <= code <= 0xFFEF  # fullwidth and halfwidth forms (，？！ ｡ ...)
        or 0x20000 <= code <= 0x3FFFF  # CJK extensions B to H
    )
