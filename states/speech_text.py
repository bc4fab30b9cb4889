"""Streamed LLM text -> clauses a streaming TTS can speak. Pure logic, stdlib only.

    deltas -> SpeechCleaner -> ClauseSplitter -> SpeechText (reply cap) -> one TTS request per clause

``SpeechText`` is what the caller uses::

    st = SpeechText(SpeechTextSettings())
    async for delta in llm_stream:
        for clause in st.feed(delta):
            ...  # synthesize and play at once
        if st.done:
            break  # end-of-turn token or reply cap: stop reading (closing the stream aborts generation)
    for clause in st.finish():
        ...

Streaming contract, for every stage: the output does not depend on where the input was cut
into deltas. A stage holds back only a tail that might still begin a construct ("<eo",
"htt", "**" before its next character, an English "." before its next character) and
decides it when more text or ``finish()`` arrives.

What the cleaner removes (everything else passes, in order, with whitespace normalised and
line breaks kept as clause boundaries):

* fenced code blocks (``` or ~~~ at a line start, any indent; unterminated: the rest is dropped);
* ``<think>...</think>`` reasoning blocks;
* markdown markers: inline-code backticks (the code is read), ``**`` ``*`` ``__`` ``_`` ``~~``
  emphasis (not ``snake_case``, ``2*3``, ``2 * 3``, ``3~5``), and at a line start headings
  ``#``, quotes ``>``, bullets ``- * + •`` and ``1.``/``1)`` numbers, rules and table separator rows;
* links ``[text](url)`` and images ``![alt](url)`` -> text/alt; square brackets themselves are
  never spoken, so ``[1]`` -> ``1``;
* bare URLs (``http://``, ``https://``, ``www.``); a sentence mark after a URL is kept;
* HTML tags (``<br>``, ``<p>``, ``<li>``... become line breaks) and special tokens ``<|...|>``,
  ``<eoa>``... An end-of-turn token (``<eom>``, ``<eoa>``, ``</s>``, ``<|im_end|>``,
  ``<|end_of_assistant|>``, ``<|Human|>``...) ends the reply: text after it is not spoken;
* emoji and pictographs (incl. ZWJ sequences, skin tones, flags, keycaps, variation
  selectors), control and format characters, U+FFFD; CJK, letters, digits, currency,
  math signs, ``°`` and ``℃`` stay;
* empty brackets left behind by a removed URL: ``官网(https://x.cn)`` -> ``官网``.

Table pipes become a pause (``，`` after CJK, ``, `` otherwise). Known simplifications: ``*``
between letters (``x*y``) is taken for emphasis and removed; ``<tag`` followed by a space and
``>`` later on the same line is taken for an HTML tag; HTML entities and LaTeX are not decoded.

Clause size is measured in *speech weight*, a rough syllable count (see ``speech_weight``):
each CJK/kana/hangul character counts 1, each Latin word or number counts 2, punctuation and
spaces count 0. ``max_clause_chars`` and ``max_reply_chars`` count plain characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from states.settings import Checked, setting

__all__ = [
    "ClauseSplitter",
    "SpeechCleaner",
    "SpeechText",
    "SpeechTextSettings",
    "clean_for_speech",
    "join_clauses",
    "speech_weight",
    "split_for_speech",
]


@dataclass(frozen=True)
class SpeechTextSettings(Checked):
    """How replies are cut into clauses for the TTS (the ``[reply]`` table)."""

    min_clause_weight: int = setting(8, gt=0)
    """A clause lighter than this (``speech_weight``) is merged with the next one: very short
    TTS requests sound choppy. 8 is about 8 hanzi or 4 English words."""
    first_clause_min_weight: int = setting(4, gt=0)
    """The same for the first clause, smaller so that the first audio starts early."""
    max_clause_chars: int = setting(120, ge=2)
    """Run-on text without punctuation is cut at the last space before this many characters
    (or at this many characters if there is no space in its second half)."""
    max_reply_chars: int = setting(1200, not_below="max_clause_chars")
    """Cap on the characters spoken per reply. The clause that would cross it is not spoken,
    and the reply is ``truncated``."""
    wait_for_closers: bool = setting(False, in_file=False)
    """False: a Chinese mark and ``! ? ;`` end a clause at once (lowest latency); closing
    quotes/brackets that arrive after such a split are dropped (they are not spoken).
    True: every mark waits for the next character so that closers (``”」』）)``) stay with
    their clause; this costs at most one LLM token of latency per clause."""


# ---------------------------------------------------------------------------------------------
# Characters

_NO = -1  # a rule does not apply here (a rule may also return None: "need more input")
_EOF = -2  # a scan reached the end of the input at finish()

_NEWLINES = frozenset("\r\n\u2028\u2029\x85")
_ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_URL_PREFIXES = ("https://", "http://", "www.")
_URL_STOP = frozenset("<>\"'`*[]{}|^\\")
_URL_TRAIL = frozenset(".,;:!?")
_OPENERS = {"(": ")", "（": "）", "【": "】"}
_END_TAGS = frozenset({"eoa", "eom", "/s"})
_END_SPECIALS = frozenset(
    {"end_of_assistant", "im_end", "endoftext", "eot_id", "end", "eoa", "eom", "human", "user", "im_start"}
)
_BREAK_TAGS = frozenset({"br", "p", "/p", "div", "/div", "li", "/li", "tr", "/tr", "hr"})
_CUT_TOKEN = re.compile(r"<[|/!]?[A-Za-z0-9_|/-]{0,30}")

_STRONG = frozenset("。！？；，、：｡!?;…⋯")
"""Marks that always end a clause."""
_WEAK = frozenset(".,:")
"""ASCII marks that end a clause only before whitespace, a non-ASCII character or the end."""
_MARKS = _STRONG | _WEAK
_CLOSERS = frozenset("”’」』）)】》〉]\"'")
_CLOSERS_STRICT = _CLOSERS - {'"', "'"}
"""Closers that can never open a clause (ASCII quotes can)."""
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "e.g", "i.e", "cf", "approx", "fig"}
)
_ABBREV_TAIL = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _wide(c: str) -> bool:
    """CJK, kana, hangul, CJK and full-width punctuation."""
    return ord(c) >= 0x2E80


_SPACE_BEFORE_WIDE_MARK = re.compile("[ ]+(?=[,{}])".format("".join(sorted(c for c in _MARKS | _CLOSERS if _wide(c)))))


def _is_dropped(c: str) -> bool:
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


def _run_len(buf: str, i: int) -> int:
    c = buf[i]
    j = i + 1
    while j < len(buf) and buf[j] == c:
        j += 1
    return j - i


def _peek(buf: str, j: int, final: bool) -> str | None:
    """The character at ``j``; "" at the end of the input; None if it has not arrived yet."""
    if j < len(buf):
        return buf[j]
    return "" if final else None


def _find(buf: str, start: int, closer: str, limit: int, forbidden: str, final: bool) -> int | None:
    """Index of ``closer`` from ``start``; _NO if a forbidden char or the limit comes first."""
    j = start
    while j < len(buf):
        if buf.startswith(closer, j):
            return j
        if buf[j] in forbidden or j - start >= limit:
            return _NO
        j += 1
    return _EOF if final else None


def _blank(c: str) -> bool:
    return c == "" or c.isspace()


def _word(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _url_char(c: str) -> bool:
    return 33 <= ord(c) <= 126 and c not in _URL_STOP


def _after_word(c: str) -> bool:
    """A previous character that makes "http"/"www" part of a word or path, not a URL start."""
    return c.isascii() and (c.isalnum() or c in "/.@-_%")


def speech_weight(text: str) -> int:
    """Rough syllable count: a CJK/kana/hangul character 1, a Latin word or number 2, else 0."""
    weight = 0
    in_word = False
    for ch in text:
        if ch.isalnum():
            if _wide(ch):
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
        if parts and not (_wide(parts[-1][-1]) or _wide(clause[0])):
            parts.append(" ")
        parts.append(clause)
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Cleaner

_TEXT, _FENCE, _TARGET, _URL, _THINK, _ENDED = "text", "fence", "target", "url", "think", "ended"


class SpeechCleaner:
    """Streaming markdown/emoji/token remover. ``feed`` and ``finish`` return cleaned text.

    The output uses single spaces and ``\\n`` for line breaks (each one a clause boundary).
    It may have a space before a line break; ``clean_for_speech`` tidies that for one-shot use.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._out: list[str] = []
        self._last = ""  # last character emitted, "" before any
        self._visible = ""  # last non-space character emitted
        self._opener = ""  # "(" held back until we know the brackets do not end up empty
        self._prev = ""  # last input character consumed
        self._line_start = True
        self._mode = _TEXT
        self._fence = ("`", 3)
        self._code = 0  # backtick run length of the open inline code span, 0 outside
        self._brackets = 0  # open "[" on this line, for link detection
        self._depth = 0  # parenthesis depth inside a link target or URL
        self._after_token = False  # just after a <|special|> token
        self._finished = False

    @property
    def ended(self) -> bool:
        """An end-of-turn token was seen: everything after it is ignored."""
        return self._mode == _ENDED

    def feed(self, delta: str) -> str:
        if self._finished:
            raise RuntimeError("SpeechCleaner.feed after finish")
        self._buf += delta
        return self._run(final=False)

    def finish(self) -> str:
        """Decide everything held back; the end of the input closes every open construct."""
        if self._finished:
            return ""
        out = self._run(final=True)
        self._finished = True
        return out

    # -- driver ---------------------------------------------------------------------------------

    def _run(self, final: bool) -> str:
        buf = self._buf
        i = 0
        while i < len(buf):
            mode = self._mode
            j = self._step(buf, i, final)
            if j is None or (j == i and self._mode == mode):
                break
            if j > i:
                self._prev = buf[j - 1]
            i = j
        self._buf = buf[i:]
        if final:
            self._opener = ""
        out = "".join(self._out)
        self._out.clear()
        return out

    def _step(self, buf: str, i: int, final: bool) -> int | None:
        """Consume from ``i``; return the new index, or None to wait for more input."""
        mode = self._mode
        if mode == _TEXT:
            return self._text(buf, i, final)
        if mode == _FENCE:
            return self._in_fence(buf, i, final)
        if mode == _URL:
            return self._in_url(buf, i, final)
        if mode == _TARGET:
            return self._in_target(buf, i)
        if mode == _THINK:
            return self._in_think(buf, i, final)
        return len(buf)  # _ENDED

    # -- output ---------------------------------------------------------------------------------

    def _put(self, s: str) -> None:
        self._out.append(s)
        self._last = s[-1]
        if not s[-1].isspace():
            self._visible = s[-1]

    def _emit(self, s: str) -> None:
        if self._opener:
            opener, self._opener = self._opener, ""
            if s[0] == _OPENERS[opener]:  # "()" left after removing what was inside
                s = s[1:]
                if not s:
                    return
            else:
                self._put(opener)
        if s in _OPENERS:
            self._opener = s
            return
        self._put(s)

    def _space(self) -> None:
        if self._opener or self._last in ("", " ", "\n"):
            return
        if _wide(self._last) and not self._last.isalnum():
            return  # no space after CJK punctuation
        self._put(" ")

    def _newline(self) -> None:
        self._opener = ""
        self._after_token = False
        self._code = 0
        self._brackets = 0
        self._line_start = True
        if self._last not in ("", "\n"):
            self._put("\n")

    def _pause(self) -> None:
        """A table cell border: a comma, unless at a line start or after a mark already."""
        if self._last in ("", "\n") or self._visible in _MARKS:
            return
        if _wide(self._visible):
            self._emit("，")
        else:
            self._emit(",")
            self._space()

    # -- plain text -----------------------------------------------------------------------------

    def _text(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        if c in _NEWLINES:
            self._newline()
            return i + 1
        if c.isspace():
            self._space()
            return i + 1
        if _is_dropped(c):
            return i + 1
        if self._after_token:  # "<|MOSS|>: 你好": the role's colon goes with the token
            self._after_token = False
            if c in ":：":
                return i + 1
        if self._code:
            return self._in_code(buf, i, final)
        if self._line_start:
            j = self._line_rules(buf, i, final)
            if j != _NO:
                return j
            self._line_start = False
        return self._inline(buf, i, final)

    def _line_rules(self, buf: str, i: int, final: bool) -> int | None:
        """Markdown that only counts at the start of a line (after any indent)."""
        c = buf[i]
        if c in "`~":
            n = _run_len(buf, i)
            if i + n == len(buf) and not final:
                return None
            if n < 3:
                return _NO
            self._mode = _FENCE
            self._fence = (c, n)
            self._line_start = False  # the rest of this line is the info string
            return i + n
        if c in "-*_=|:":
            j = self._rule_line(buf, i, final)
            if j != _NO:
                return j
        if c == "#":
            n = _run_len(buf, i)
            q = _peek(buf, i + n, final)
            if q is None:
                return None
            if n <= 6 and _blank(q):
                self._line_start = False
                return i + n
            return _NO
        if c == ">":
            return i + 1  # blockquote: still at the line start (quotes nest lists and fences)
        if c in "-*+•·":
            q = _peek(buf, i + 1, final)
            if q is None:
                return None
            if _blank(q):
                self._line_start = False
                return i + 1
            return _NO
        if "0" <= c <= "9":
            j = i
            while j < len(buf) and "0" <= buf[j] <= "9":
                j += 1
            if j - i > 3:
                return _NO
            if j == len(buf):
                return _NO if final else None
            if buf[j] not in ".)）":
                return _NO
            q = _peek(buf, j + 1, final)
            if q is None:
                return None
            if _blank(q) or not q.isascii():  # "1. 打开" and "1.打开", not "3.14"
                self._line_start = False
                return j + 1
        return _NO

    def _rule_line(self, buf: str, i: int, final: bool) -> int | None:
        """A horizontal rule (---, ***) or a table separator row (|---|:--:|): dropped."""
        j = i
        marks = 0
        pipe = dash = False
        while j < len(buf) and buf[j] not in _NEWLINES:
            ch = buf[j]
            if ch in "-*_=":
                marks += 1
                dash = dash or ch == "-"
            elif ch == "|":
                pipe = True
            elif ch not in ": \t":
                return _NO
            j += 1
        if j == len(buf) and not final:
            return None
        return j if marks >= 3 or (pipe and dash) else _NO

    def _inline(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        if c == "\\":
            q = _peek(buf, i + 1, final)
            if q is None:
                return None
            if q in _ASCII_PUNCT and q:
                self._emit(q)
                return i + 2
        elif c == "`":
            n = _run_len(buf, i)
            if i + n == len(buf) and not final:
                return None
            self._code = n
            return i + n
        elif c == "<":
            return self._angle(buf, i, final, tags=True)
        elif c == "!":
            q = _peek(buf, i + 1, final)
            if q is None:
                return None
            if q == "[":  # image: the alt text is read like a link's text
                return i + 1
        elif c == "[":
            self._brackets += 1
            return i + 1
        elif c == "]":
            q = _peek(buf, i + 1, final)
            if q is None:
                return None
            if q == "(" and self._brackets:
                self._brackets -= 1
                self._mode = _TARGET
                self._depth = 1
                return i + 2
            self._brackets = max(0, self._brackets - 1)
            return i + 1
        elif c in "*_~":
            return self._emphasis(buf, i, final)
        elif c == "|":
            self._pause()
            return i + 1
        elif c in "hHwW" and not _after_word(self._prev):
            j = self._url_start(buf, i, final)
            if j != _NO:
                return j
        self._emit(c)
        return i + 1

    def _in_code(self, buf: str, i: int, final: bool) -> int | None:
        """Inside `inline code`: the content is read as is, only URLs and tokens go."""
        c = buf[i]
        if c == "`":
            n = _run_len(buf, i)
            if i + n == len(buf) and not final:
                return None
            if n == self._code:
                self._code = 0
            return i + n
        if c == "<":
            return self._angle(buf, i, final, tags=False)
        if c in "hHwW" and not _after_word(self._prev):
            j = self._url_start(buf, i, final)
            if j != _NO:
                return j
        self._emit(c)
        return i + 1

    def _emphasis(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        n = _run_len(buf, i)
        q = _peek(buf, i + n, final)
        if q is None:
            return None
        p = self._prev
        if c == "~":
            literal = n == 1  # "3~5"; "~~strike~~" markers go
        elif c == "*":
            literal = (_blank(p) and _blank(q)) or (p.isdigit() and q.isdigit())  # 2 * 3, 2*3
        else:
            literal = _word(p) and _word(q)  # snake_case
        if literal:
            self._emit(c * n)
        return i + n

    def _angle(self, buf: str, i: int, final: bool, tags: bool) -> int | None:
        """``<|special|>``, ``<eoa>``, HTML tags; a plain "<" otherwise."""
        q = _peek(buf, i + 1, final)
        if q is None:
            return None
        k: int | None = _NO
        if q == "|":
            k = _find(buf, i + 2, "|>", 64, "<\n", final)
            if k is None:
                return None
            if k >= 0:
                if buf[i + 2 : k].strip().lower() in _END_SPECIALS:
                    self._mode = _ENDED
                self._after_token = True
                return k + 2
        elif tags and q and ((q.isascii() and q.isalpha()) or q in "/!"):
            k = self._tag_end(buf, i, final)
            if k is None:
                return None
            if k >= 0:
                inner = buf[i + 1 : k].strip()
                name = inner.split(None, 1)[0].lower().rstrip("/") if inner else ""
                if name in _END_TAGS:
                    self._mode = _ENDED
                elif name == "think":
                    self._mode = _THINK
                elif name in _BREAK_TAGS:
                    self._newline()
                return k + 1
        if k == _EOF and _CUT_TOKEN.fullmatch(buf, i):
            return len(buf)  # a token cut off by the end of the stream, e.g. "<eo"
        self._emit("<")
        return i + 1

    @staticmethod
    def _tag_end(buf: str, i: int, final: bool) -> int | None:
        """Index of the ">" of an HTML tag at ``i``. The name must be followed by ">", "/" or a
        space, and attributes hold no line break and no Chinese sentence mark, so that "a<b,"
        or "x<y 时，..." are decided at once and do not hold the text back."""
        j = i + 1
        if buf[j] in "/!":
            j += 1
        while j < len(buf) and buf[j].isascii() and (buf[j].isalnum() or buf[j] in "-_:"):
            j += 1
        if j == len(buf):
            return _EOF if final else None
        if buf[j] == ">":
            return j
        if buf[j] == "/" or (buf[j].isspace() and buf[j] not in _NEWLINES):
            return _find(buf, j, ">", 200, "<\n\r，。！？；", final)
        return _NO

    def _url_start(self, buf: str, i: int, final: bool) -> int | None:
        head = buf[i : i + 8].lower()
        for prefix in _URL_PREFIXES:
            if head.startswith(prefix):
                self._mode = _URL
                self._depth = 0
                return i + len(prefix)
        if not final and i + 8 > len(buf) and any(p.startswith(head) for p in _URL_PREFIXES):
            return None
        return _NO

    # -- modes that drop text -------------------------------------------------------------------

    def _in_url(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        if c == "(":
            self._depth += 1
            return i + 1
        if c == ")" and self._depth:
            self._depth -= 1
            return i + 1
        if c in _URL_TRAIL:  # part of the URL only if more URL follows: "x.cn/a.html." ends at "l"
            j = i
            while j < len(buf) and buf[j] in _URL_TRAIL:
                j += 1
            if j == len(buf) and not final:
                return None
            if j < len(buf) and _url_char(buf[j]) and buf[j] != ")":
                return j
        elif c != ")" and _url_char(c):
            return i + 1
        self._mode = _TEXT
        return i

    def _in_target(self, buf: str, i: int) -> int:
        c = buf[i]
        if c in _NEWLINES:
            self._mode = _TEXT
            return i
        if c == "(":
            self._depth += 1
        elif c == ")":
            self._depth -= 1
            if self._depth == 0:
                self._mode = _TEXT
        return i + 1

    def _in_fence(self, buf: str, i: int, final: bool) -> int | None:
        if self._line_start:  # is this line the closing fence?
            ch, n = self._fence
            j = i
            while j < len(buf) and buf[j] in " \t":
                j += 1
            k = j
            while k < len(buf) and buf[k] == ch:
                k += 1
            if k == len(buf) and not final:
                return None
            if k - j >= n:
                m = k
                while m < len(buf) and buf[m] in " \t":
                    m += 1
                if m == len(buf) and not final:
                    return None
                if m == len(buf) or buf[m] in _NEWLINES:
                    self._mode = _TEXT
                    self._newline()
                    return min(m + 1, len(buf))
        nl = next((k for k in range(i, len(buf)) if buf[k] in _NEWLINES), -1)
        if nl < 0:
            self._line_start = False
            return len(buf)
        self._line_start = True
        return nl + 1

    def _in_think(self, buf: str, i: int, final: bool) -> int | None:
        close = "</think>"
        k = buf.lower().find(close, i)
        if k >= 0:
            self._mode = _TEXT
            return k + len(close)
        if final:
            return len(buf)
        keep = len(buf) - (len(close) - 1)
        return keep if keep > i else None


def clean_for_speech(text: str) -> str:
    """One-shot cleaning: what ``SpeechCleaner`` makes of the whole text, lines tidied."""
    cleaner = SpeechCleaner()
    raw = cleaner.feed(text) + cleaner.finish()
    lines = (_SPACE_BEFORE_WIDE_MARK.sub("", " ".join(line.split())) for line in raw.split("\n"))
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------------------------
# Splitter


class ClauseSplitter:
    """Cuts cleaned text into clauses; short ones are merged with the next.

    Boundaries: after ``_STRONG`` marks (Chinese marks, ``! ? ;``, ``…``), after ``. , :``
    followed by whitespace, a non-ASCII character or the end (so ``3.14``, ``1,000``,
    ``12:30``, ``v1.2``, ``file.txt`` stay whole; ``Dr.``/``e.g.`` never end a clause),
    and at line breaks. A run of marks and closers (``?!``, ``...``, ``。”``) stays together.

    At a boundary the clause is emitted if its ``speech_weight`` reaches the minimum
    (``first_clause_min_weight`` for the first clause), else it grows on to the next boundary;
    a line break inside such a merged clause becomes a pause (``，`` or ``, ``) unless a mark
    already ends the line. Marks and strict closers cannot start a clause; they are dropped there.
    """

    def __init__(self, settings: SpeechTextSettings | None = None) -> None:
        self._s = settings or SpeechTextSettings()
        self._buf = ""
        self._clause = ""
        self._join = False  # a line break inside a merged clause waits for the next character
        self._emitted = 0
        self._finished = False

    def feed(self, text: str) -> list[str]:
        if self._finished:
            raise RuntimeError("ClauseSplitter.feed after finish")
        self._buf += text
        out: list[str] = []
        self._run(False, out)
        return out

    def finish(self) -> list[str]:
        """The rest, as clauses; the last one is spoken however short it is."""
        if self._finished:
            return []
        out: list[str] = []
        self._run(True, out)
        text = self._clause.strip()
        if speech_weight(text):
            self._emit(text, out)
        self._clause = ""
        self._finished = True
        return out

    def _run(self, final: bool, out: list[str]) -> None:
        buf = self._buf
        i = 0
        while i < len(buf):
            c = buf[i]
            if c in _NEWLINES:
                self._boundary(out, newline=True)
                i += 1
            elif c in _MARKS:
                j = self._mark_run(buf, i, final, out)
                if j is None:
                    break
                i = j
            else:
                self._append(c, out)
                i += 1
        self._buf = buf[i:]

    def _mark_run(self, buf: str, i: int, final: bool, out: list[str]) -> int | None:
        at_once = not self._s.wait_for_closers
        j = i
        split_now = False
        while j < len(buf) and (buf[j] in _MARKS or buf[j] in _CLOSERS):
            j += 1
            if at_once and buf[j - 1] in _STRONG:
                split_now = True
                break
        if j == len(buf) and not split_now and not final:
            return None
        run = buf[i:j]
        if split_now or any(ch in _STRONG for ch in run):
            boundary = True
        else:
            q = buf[j] if j < len(buf) else ""
            boundary = (q == "" or q.isspace() or not q.isascii()) and not self._abbreviation(run)
        self._add_marks(run)
        if boundary:
            self._boundary(out)
        return j

    def _abbreviation(self, run: str) -> bool:
        if run[0] != "." or run.startswith(".."):
            return False
        m = _ABBREV_TAIL.search(self._clause)
        return m is not None and m.group(1).lower() in _ABBREVIATIONS

    def _add_marks(self, run: str) -> None:
        if self._join:
            self._clause = self._clause.rstrip()
            self._join = False
        if not self._clause.strip():
            self._clause = ""  # marks cannot start a clause ("：你好" after a removed token)
            return
        self._clause = self._clause.rstrip(" ") + run

    def _append(self, c: str, out: list[str]) -> None:
        if c.isspace():
            if self._clause and not self._join and not self._clause.endswith(" "):
                self._clause += " "
            return
        if not self._clause and c in _CLOSERS_STRICT:
            return  # a closer after an at-once split
        if self._join:
            self._join = False
            clause = self._clause.rstrip()
            last = clause[-1]
            if last in _MARKS or last in _CLOSERS:
                sep = "" if _wide(last) or _wide(c) else " "
            else:
                sep = "，" if _wide(last) else ", "
            self._clause = clause + sep
        self._clause += c
        if len(self._clause) >= self._s.max_clause_chars:
            self._force_split(out)

    def _force_split(self, out: list[str]) -> None:
        clause = self._clause
        k = clause.rfind(" ")
        if k >= len(clause) // 2:
            head, tail = clause[:k].strip(), clause[k + 1 :]
        else:
            head, tail = clause.strip(), ""
        if speech_weight(head):
            self._emit(head, out)
        self._clause = tail

    def _boundary(self, out: list[str], newline: bool = False) -> None:
        text = self._clause.strip()
        if not speech_weight(text):
            self._clause = ""
            self._join = False
            return
        need = self._s.first_clause_min_weight if self._emitted == 0 else self._s.min_clause_weight
        if speech_weight(text) >= need:
            self._emit(text, out)
        elif newline:
            self._clause = text
            self._join = True

    def _emit(self, text: str, out: list[str]) -> None:
        out.append(text)
        self._emitted += 1
        self._clause = ""
        self._join = False


# ---------------------------------------------------------------------------------------------
# The whole stage


class SpeechText:
    """LLM deltas in, clauses to speak out: cleaner + splitter + the reply cap."""

    def __init__(self, settings: SpeechTextSettings | None = None) -> None:
        self.settings = settings or SpeechTextSettings()
        self._cleaner = SpeechCleaner()
        self._splitter = ClauseSplitter(self.settings)
        self._spoken: list[str] = []
        self._chars = 0
        self._truncated = False
        self._done = False
        self._finished = False

    @property
    def truncated(self) -> bool:
        """The reply hit ``max_reply_chars``; the rest was not spoken."""
        return self._truncated

    @property
    def done(self) -> bool:
        """No more clauses will come (cap reached or end-of-turn token): stop reading the LLM."""
        return self._done

    @property
    def spoken(self) -> tuple[str, ...]:
        """Every clause handed out so far, in order."""
        return tuple(self._spoken)

    @property
    def spoken_text(self) -> str:
        return join_clauses(self._spoken)

    def feed(self, delta: str) -> list[str]:
        """Clauses completed by this delta: cleaned, stripped, non-empty, ready for the TTS."""
        if self._finished:
            raise RuntimeError("SpeechText.feed after finish")
        if self._done:
            return []
        clauses = self._splitter.feed(self._cleaner.feed(delta))
        if self._cleaner.ended:  # nothing more will be spoken: flush now, do not wait for finish()
            clauses += self._splitter.feed(self._cleaner.finish())
            clauses += self._splitter.finish()
            self._done = True
        return self._admit(clauses)

    def finish(self) -> list[str]:
        """The rest of the reply, once the LLM stream has ended."""
        if self._finished:
            return []
        self._finished = True
        if self._done:
            return []
        clauses = self._splitter.feed(self._cleaner.finish())
        clauses += self._splitter.finish()
        self._done = True
        return self._admit(clauses)

    def _admit(self, clauses: list[str]) -> list[str]:
        admitted: list[str] = []
        for clause in clauses:
            if self._truncated:
                break
            if self._chars + len(clause) > self.settings.max_reply_chars:
                self._truncated = True
                self._done = True
                break
            self._chars += len(clause)
            self._spoken.append(clause)
            admitted.append(clause)
        return admitted


def split_for_speech(text: str, settings: SpeechTextSettings | None = None) -> list[str]:
    """One-shot: the clauses ``SpeechText`` would speak for the whole ``text``."""
    st = SpeechText(settings)
    return st.feed(text) + st.finish()
