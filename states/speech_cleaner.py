"""Streamed LLM text -> text fit to be spoken: the first stage of ``states.speech_text``.

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

The module is longer than the others because ``SpeechCleaner`` is one incremental scanner: its
rules (fences, think blocks, markdown, tags, URLs) share one buffer, one mode and the "need more
input" protocol, and splitting them across modules would scatter one state machine.
"""

from __future__ import annotations

from states.cjk import is_cjk
from states.speech_chars import (
    ASCII_PUNCT,
    AT_END,
    BREAK_TAGS,
    CUT_TOKEN,
    END_SPECIALS,
    END_TAGS,
    MARKS,
    NEWLINES,
    NO_MATCH,
    OPENERS,
    SPACE_BEFORE_WIDE_MARK,
    URL_PREFIXES,
    URL_TRAIL,
    find_closer,
    is_after_word,
    is_blank,
    is_dropped,
    is_url_char,
    is_word_char,
    peek,
    run_len,
)

__all__ = ["SpeechCleaner", "clean_for_speech"]


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
            if s[0] == OPENERS[opener]:  # "()" left after removing what was inside
                s = s[1:]
                if not s:
                    return
            else:
                self._put(opener)
        if s in OPENERS:
            self._opener = s
            return
        self._put(s)

    def _space(self) -> None:
        if self._opener or self._last in ("", " ", "\n"):
            return
        if is_cjk(self._last) and not self._last.isalnum():
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
        if self._last in ("", "\n") or self._visible in MARKS:
            return
        if is_cjk(self._visible):
            self._emit("，")
        else:
            self._emit(",")
            self._space()

    # -- plain text -----------------------------------------------------------------------------

    def _text(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        if c in NEWLINES:
            self._newline()
            return i + 1
        if c.isspace():
            self._space()
            return i + 1
        if is_dropped(c):
            return i + 1
        if self._after_token:  # "<|MOSS|>: 你好": the role's colon goes with the token
            self._after_token = False
            if c in ":：":
                return i + 1
        if self._code:
            return self._in_code(buf, i, final)
        if self._line_start:
            j = self._line_rules(buf, i, final)
            if j != NO_MATCH:
                return j
            self._line_start = False
        return self._inline(buf, i, final)

    def _line_rules(self, buf: str, i: int, final: bool) -> int | None:
        """Markdown that only counts at the start of a line (after any indent)."""
        c = buf[i]
        if c in "`~":
            n = run_len(buf, i)
            if i + n == len(buf) and not final:
                return None
            if n < 3:
                return NO_MATCH
            self._mode = _FENCE
            self._fence = (c, n)
            self._line_start = False  # the rest of this line is the info string
            return i + n
        if c in "-*_=|:":
            j = self._rule_line(buf, i, final)
            if j != NO_MATCH:
                return j
        if c == "#":
            n = run_len(buf, i)
            q = peek(buf, i + n, final)
            if q is None:
                return None
            if n <= 6 and is_blank(q):
                self._line_start = False
                return i + n
            return NO_MATCH
        if c == ">":
            return i + 1  # blockquote: still at the line start (quotes nest lists and fences)
        if c in "-*+•·":
            q = peek(buf, i + 1, final)
            if q is None:
                return None
            if is_blank(q):
                self._line_start = False
                return i + 1
            return NO_MATCH
        if "0" <= c <= "9":
            j = i
            while j < len(buf) and "0" <= buf[j] <= "9":
                j += 1
            if j - i > 3:
                return NO_MATCH
            if j == len(buf):
                return NO_MATCH if final else None
            if buf[j] not in ".)）":
                return NO_MATCH
            q = peek(buf, j + 1, final)
            if q is None:
                return None
            if is_blank(q) or not q.isascii():  # "1. 打开" and "1.打开", not "3.14"
                self._line_start = False
                return j + 1
        return NO_MATCH

    def _rule_line(self, buf: str, i: int, final: bool) -> int | None:
        """A horizontal rule (---, ***) or a table separator row (|---|:--:|): dropped."""
        j = i
        marks = 0
        pipe = dash = False
        while j < len(buf) and buf[j] not in NEWLINES:
            ch = buf[j]
            if ch in "-*_=":
                marks += 1
                dash = dash or ch == "-"
            elif ch == "|":
                pipe = True
            elif ch not in ": \t":
                return NO_MATCH
            j += 1
        if j == len(buf) and not final:
            return None
        return j if marks >= 3 or (pipe and dash) else NO_MATCH

    def _inline(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        if c == "\\":
            q = peek(buf, i + 1, final)
            if q is None:
                return None
            if q in ASCII_PUNCT and q:
                self._emit(q)
                return i + 2
        elif c == "`":
            n = run_len(buf, i)
            if i + n == len(buf) and not final:
                return None
            self._code = n
            return i + n
        elif c == "<":
            return self._angle(buf, i, final, tags=True)
        elif c == "!":
            q = peek(buf, i + 1, final)
            if q is None:
                return None
            if q == "[":  # image: the alt text is read like a link's text
                return i + 1
        elif c == "[":
            self._brackets += 1
            return i + 1
        elif c == "]":
            q = peek(buf, i + 1, final)
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
        elif c in "hHwW" and not is_after_word(self._prev):
            j = self._url_start(buf, i, final)
            if j != NO_MATCH:
                return j
        self._emit(c)
        return i + 1

    def _in_code(self, buf: str, i: int, final: bool) -> int | None:
        """Inside `inline code`: the content is read as is, only URLs and tokens go."""
        c = buf[i]
        if c == "`":
            n = run_len(buf, i)
            if i + n == len(buf) and not final:
                return None
            if n == self._code:
                self._code = 0
            return i + n
        if c == "<":
            return self._angle(buf, i, final, tags=False)
        if c in "hHwW" and not is_after_word(self._prev):
            j = self._url_start(buf, i, final)
            if j != NO_MATCH:
                return j
        self._emit(c)
        return i + 1

    def _emphasis(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        n = run_len(buf, i)
        q = peek(buf, i + n, final)
        if q is None:
            return None
        p = self._prev
        if c == "~":
            literal = n == 1  # "3~5"; "~~strike~~" markers go
        elif c == "*":
            literal = (is_blank(p) and is_blank(q)) or (p.isdigit() and q.isdigit())  # 2 * 3, 2*3
        else:
            literal = is_word_char(p) and is_word_char(q)  # snake_case
        if literal:
            self._emit(c * n)
        return i + n

    def _angle(self, buf: str, i: int, final: bool, tags: bool) -> int | None:
        """``<|special|>``, ``<eoa>``, HTML tags; a plain "<" otherwise."""
        q = peek(buf, i + 1, final)
        if q is None:
            return None
        k: int | None = NO_MATCH
        if q == "|":
            k = find_closer(buf, i + 2, "|>", 64, "<\n", final)
            if k is None:
                return None
            if k >= 0:
                if buf[i + 2 : k].strip().lower() in END_SPECIALS:
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
                if name in END_TAGS:
                    self._mode = _ENDED
                elif name == "think":
                    self._mode = _THINK
                elif name in BREAK_TAGS:
                    self._newline()
                return k + 1
        if k == AT_END and CUT_TOKEN.fullmatch(buf, i):
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
            return AT_END if final else None
        if buf[j] == ">":
            return j
        if buf[j] == "/" or (buf[j].isspace() and buf[j] not in NEWLINES):
            return find_closer(buf, j, ">", 200, "<\n\r，。！？；", final)
        return NO_MATCH

    def _url_start(self, buf: str, i: int, final: bool) -> int | None:
        head = buf[i : i + 8].lower()
        for prefix in URL_PREFIXES:
            if head.startswith(prefix):
                self._mode = _URL
                self._depth = 0
                return i + len(prefix)
        if not final and i + 8 > len(buf) and any(p.startswith(head) for p in URL_PREFIXES):
            return None
        return NO_MATCH

    # -- modes that drop text -------------------------------------------------------------------

    def _in_url(self, buf: str, i: int, final: bool) -> int | None:
        c = buf[i]
        if c == "(":
            self._depth += 1
            return i + 1
        if c == ")" and self._depth:
            self._depth -= 1
            return i + 1
        if c in URL_TRAIL:  # part of the URL only if more URL follows: "x.cn/a.html." ends at "l"
            j = i
            while j < len(buf) and buf[j] in URL_TRAIL:
                j += 1
            if j == len(buf) and not final:
                return None
            if j < len(buf) and is_url_char(buf[j]) and buf[j] != ")":
                return j
        elif c != ")" and is_url_char(c):
            return i + 1
        self._mode = _TEXT
        return i

    def _in_target(self, buf: str, i: int) -> int:
        c = buf[i]
        if c in NEWLINES:
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
                if m == len(buf) or buf[m] in NEWLINES:
                    self._mode = _TEXT
                    self._newline()
                    return min(m + 1, len(buf))
        nl = next((k for k in range(i, len(buf)) if buf[k] in NEWLINES), -1)
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
    lines = (SPACE_BEFORE_WIDE_MARK.sub("", " ".join(line.split())) for line in raw.split("\n"))
    return "\n".join(line for line in lines if line)
