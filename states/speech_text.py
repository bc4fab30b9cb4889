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

The cleaner lives in ``states.speech_cleaner``, the character classes and ``speech_weight`` in
``states.speech_chars``; this module keeps the settings, the clause splitter and the whole
stage, and re-exports the rest so that ``states.speech_text`` stays the one import.

Clause size is measured in *speech weight*, a rough syllable count (see ``speech_weight``):
each CJK/kana/hangul character counts 1, each Latin word or number counts 2, punctuation and
spaces count 0. ``max_clause_chars`` and ``max_reply_chars`` count plain characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from states.cjk import is_cjk
from states.settings import Checked, setting
from states.speech_chars import (
    ABBREV_TAIL,
    ABBREVIATIONS,
    CLOSERS,
    MARKS,
    NEWLINES,
    STRICT_CLOSERS,
    STRONG_MARKS,
    join_clauses,
    speech_weight,
)
from states.speech_cleaner import SpeechCleaner, clean_for_speech

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
    turn_timeout_s: float = setting(300.0, gt=0)
    """The whole reply, from the LLM request to the last sample played: a safety net over the
    stages' own deadlines. The longest reply spoken, 1200 hanzi at about 4.5 a second, takes
    some 270 s."""
    wait_for_closers: bool = setting(False, in_file=False)
    """False: a Chinese mark and ``! ? ;`` end a clause at once (lowest latency); closing
    quotes/brackets that arrive after such a split are dropped (they are not spoken).
    True: every mark waits for the next character so that closers (``”」』）)``) stay with
    their clause; this costs at most one LLM token of latency per clause."""


# ---------------------------------------------------------------------------------------------
# Splitter


class ClauseSplitter:
    """Cuts cleaned text into clauses; short ones are merged with the next.

    Boundaries: after ``STRONG_MARKS`` marks (Chinese marks, ``! ? ;``, ``…``), after ``. , :``
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
            if c in NEWLINES:
                self._boundary(out, newline=True)
                i += 1
            elif c in MARKS:
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
        while j < len(buf) and (buf[j] in MARKS or buf[j] in CLOSERS):
            j += 1
            if at_once and buf[j - 1] in STRONG_MARKS:
                split_now = True
                break
        if j == len(buf) and not split_now and not final:
            return None
        run = buf[i:j]
        if split_now or any(ch in STRONG_MARKS for ch in run):
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
        m = ABBREV_TAIL.search(self._clause)
        return m is not None and m.group(1).lower() in ABBREVIATIONS

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
        if not self._clause and c in STRICT_CLOSERS:
            return  # a closer after an at-once split
        if self._join:
            self._join = False
            clause = self._clause.rstrip()
            last = clause[-1]
            if last in MARKS or last in CLOSERS:
                sep = "" if is_cjk(last) or is_cjk(c) else " "
            else:
                sep = "，" if is_cjk(last) else ", "
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
