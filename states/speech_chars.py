"""The character classes and small text helpers shared by the speech cleaner and the clause splitter.

Pure functions and constants, stdlib only. Clause size is measured in *speech weight*, a rough
syllable count (see ``speech_weight``): each CJK/kana/hangul character counts 1, each Latin
word or number counts 2, punctuation and spaces count 0.
"""

from __future__ import annotations

import re
import unicodedata

from states.cjk import is_cjk

__all__ = [
    "ABBREVIATIONS",
    "ABBREV_TAIL",
    "ASCII_PUNCT",
    "AT_END",
    "BREAK_TAGS",
    "CLOSERS",
    "CUT_TOKEN",
    "END_SPECIALS",
    "END_TAGS",
    "MARKS",
    "NEWLINES",
    "NO_MATCH",
    "OPENERS",
    "SPACE_BEFORE_WIDE_MARK",
    "STRICT_CLOSERS",
    "STRONG_MARKS",
    "URL_PREFIXES",
    "URL_STOP",
    "URL_TRAIL",
    "WEAK_MARKS",
    "find_closer",
    "is_after_word",
    "is_blank",
    "is_dropped",
    "is_url_char",
    "is_word_char",
    "join_clauses",
    "peek",
    "run_len",
    "speech_weight",
]


NO_MATCH = -1  # a rule does not apply here (a rule may also return None: "need more input")
AT_END = -2  # a scan reached the end of the input at finish()

NEWLINES = frozenset("\r\n\u2028\u2029\x85")
ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
URL_PREFIXES = ("https://", "http://", "www.")
URL_STOP = frozenset("<>\"'`*[]{}|^\\")
URL_TRAIL = frozenset(".,;:!?")
OPENERS = {"(": ")", "（": "）", "【": "】"}
END_TAGS = frozenset({"eoa", "eom", "/s"})
END_SPECIALS = frozenset(
    {"end_of_assistant", "im_end", "endoftext", "eot_id", "end", "eoa", "eom", "human", "user", "im_start"}
)
BREAK_TAGS = frozenset({"br", "p", "/p", "div", "/div", "li", "/li", "tr", "/tr", "hr"})
CUT_TOKEN = re.compile(r"<[|/!]?[A-Za-z0-9_|/-]{0,30}")

STRONG_MARKS = frozenset("。！？；，、：｡!?;…⋯")
"""Marks that always end a clause."""
WEAK_MARKS = frozenset(".,:")
"""ASCII marks that end a clause only before whitespace, a non-ASCII character or the end."""
MARKS = STRONG_MARKS | WEAK_MARKS
CLOSERS = frozenset("”’」』）)】》〉]\"'")
STRICT_CLOSERS = CLOSERS - {'"', "'"}
"""Closers that can never open a clause (ASCII quotes can)."""
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "e.g", "i.e", "cf", "approx", "fig"}
)
ABBREV_TAIL = re.compile(r"([A-Za-z][A-Za-z.]*)$")


SPACE_BEFORE_WIDE_MARK = re.compile("[ ]+(?=[,{}])".format("".join(sorted(c for c in MARKS | CLOSERS if is_cjk(c)))))


def is_dropped(c: str) -> bool:
    """Emoji, pictographs and invisible characters: never spoken."""
    o = ord(c)
    if 0x1F000 <= o <= 0x1FAFF:  # emoji, mahjong, cards, enclosed alnum, flags, skin tones
        return True
    if 0xFE00 <= o <= 0xFE0F or 0xE0000 <= o <= 0xE01EF or o in (0x20E3, 0xFFFD, 0x3030, 0x303D):
        return True  # variation selectors, tags (subdivision flags), keycap, replacement char
    cat = unicodedata.category(c)
    if cat in ("Cc", "Cf", "Co", "Cs"):  # controls, ZWJ/ZWSP/bidi marks, private use, surrogates
        return True
    # Arrows, technical, box drawing, shapes, misc symbols, dingbats: drop the pictographs (So)
    # but keep math (Sm: → ≤ ∑) and numbers (No: ① ❶).
    return 0x2190 <= o <= 0x2BFF and cat == "So"


def run_len(buf: str, i: int) -> int:
    c = buf[i]
    j = i + 1
    while j < len(buf) and buf[j] == c:
        j += 1
    return j - i


def peek(buf: str, j: int, final: bool) -> str | None:
    """The character at ``j``; "" at the end of the input; None if it has not arrived yet."""
    if j < len(buf):
        return buf[j]
    return "" if final else None


def find_closer(buf: str, start: int, closer: str, limit: int, forbidden: str, final: bool) -> int | None:
    """Index of ``closer`` from ``start``; NO_MATCH if a forbidden char or the limit comes first."""
    j = start
    while j < len(buf):
        if buf.startswith(closer, j):
            return j
        if buf[j] in forbidden or j - start >= limit:
            return NO_MATCH
        j += 1
    return AT_END if final else None


def is_blank(c: str) -> bool:
    return c == "" or c.isspace()


def is_word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def is_url_char(c: str) -> bool:
    return 33 <= ord(c) <= 126 and c not in URL_STOP


def is_after_word(c: str) -> bool:
    """A previous character that makes "http"/"www" part of a word or path, not a URL start."""
    return c.isascii() and (c.isalnum() or c in "/.@-_%")


def speech_weight(text: str) -> int:
    """Rough syllable count: a CJK/kana/hangul character 1, a Latin word or number 2, else 0."""
    weight = 0
    in_word = False
    for ch in text:
        if ch.isalnum():
            if is_cjk(ch):
                weight += 1
                in_word = False
            elif not in_word:
                weight += 2
                in_word = True
        elif not (in_word and ch in "'’"):
            in_word = False
    return weight


def join_clauses(clauses: list[str] | tuple[str, ...]) -> str:
    """The clauses as one text: a space between two Latin sides, nothing next to CJK."""
    parts: list[str] = []
    for clause in clauses:
        if parts and not (is_cjk(parts[-1][-1]) or is_cjk(clause[0])):
            parts.append(" ")
        parts.append(clause)
    return "".join(parts)
