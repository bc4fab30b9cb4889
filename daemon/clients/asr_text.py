"""Turn FunASR result messages into one utterance text, and decide when the utterance is final.

Pure logic, no I/O: the websocket client (``daemon/clients/asr.py``) feeds it every parsed
result. The rules are those of docs/protocols.md, sections "FunASR: results",
"FunASR: when is the utterance final" and "FunASR: observed quirks":

* ``2pass-online``/``online`` texts are incremental deltas; ``2pass-offline``/``offline`` texts
  are the full text of one server VAD segment and replace the deltas gathered for it.
* An utterance may have several offline segments: they are joined. The realtime punctuation
  model moves a segment's final mark to the start of the next segment, so a leading mark is
  glued to the previous segment.
* What "final" means depends on the server flavour (``is_final`` is not an end of sentence).
* The text is capped (``asr.max_transcript_chars``): past it the utterance fails instead of
  growing. A server that floods results must not send half a megabyte to the LLM and the logs,
  and a truncated flood is no question worth answering.
"""

from __future__ import annotations

from typing import Any

from daemon.config import ASR_FLAVOURS
from daemon.errors import AsrError
from states.cjk import is_cjk

__all__ = ["CPP_PCM_ERROR", "OFFLINE_MODES", "ONLINE_MODES", "TranscriptAssembler", "join_segments"]

ONLINE_MODES = frozenset({"2pass-online", "online"})
OFFLINE_MODES = frozenset({"2pass-offline", "offline"})

CPP_PCM_ERROR = "ERROR. Real-time transcription service ONLY SUPPORT PCM stream."
"""The C++ 2pass server's answer to a non-pcm ``wav_format``, sent as a result ``text``."""

_LEADING_MARKS = frozenset("，。？！、；：…,.?!;:）)」』”’")
"""Marks that belong to the end of the previous segment when a segment starts with them."""


def join_segments(left: str, right: str) -> str:
    """Join two recognised segments: no space for CJK or a leading mark, one space between words."""
    right = right.strip()
    left = left.rstrip()
    if not left:
        return right
    if not right:
        return left
    if right[0] in _LEADING_MARKS:
        # "what time is it" + "? tell me a joke" -> "what time is it? tell me a joke"
        mark_end = 0
        while mark_end < len(right) and right[mark_end] in _LEADING_MARKS:
            mark_end += 1
        marks, rest = right[:mark_end], right[mark_end:].lstrip()
        return join_segments(left + marks, rest)
    if is_cjk(left[-1]) or is_cjk(right[0]):
        return left + right
    return f"{left} {right}"


def _optional(msg: dict[str, Any], key: str, kind: type, kind_name: str) -> Any:
    """``msg[key]`` if present and not null, checked against ``kind``; None when absent."""
    value = msg.get(key)
    # bool is a subclass of int: never accept true/false where a str is expected, and vice versa.
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise AsrError(f"result field {key!r} should be {kind_name}, got {type(value).__name__}: {value!r:.80}")
    return value


class TranscriptAssembler:
    """Accumulates one utterance's results for a configured server flavour.

    ``feed`` each parsed result in arrival order; it returns True once the utterance is final.
    ``text`` is the committed offline segments followed by any online deltas not yet replaced
    by an offline result (which is all there is when no offline text came).
    """

    def __init__(self, flavour: str, *, max_chars: int | None = None) -> None:
        if flavour not in ASR_FLAVOURS:
            raise ValueError(f"unknown FunASR flavour {flavour!r}; expected one of {', '.join(ASR_FLAVOURS)}")
        self.flavour = flavour
        self.max_chars = max_chars
        """None: no cap."""
        self._committed = ""
        self._online = ""
        self.messages = 0
        """How many results were fed (including empty ones)."""
        self.segments = 0
        """How many offline results (closed server VAD segments, or the flush) were fed."""
        self.segment_closed = False
        """The last result that said anything about the audio closed a segment: an offline
        result, with no online delta with text after it (docs/protocols.md "FunASR: when is the
        utterance final", the covered segment)."""

    @property
    def text(self) -> str:
        return join_segments(self._committed, self._online)

    def feed(self, msg: dict[str, Any], *, after_end_marker: bool) -> bool:
        """Take one result message. True when it makes the utterance final.

        The rule per flavour is in docs/protocols.md "FunASR: when is the utterance final".

        Only messages received after the client sent its end marker can be final: before that,
        the client is still sending audio, whatever the server says.
        Raises AsrError for a server-reported error or a message of the wrong shape.
        """
        if not isinstance(msg, dict):
            raise AsrError(f"result should be a JSON object, got {type(msg).__name__}")
        self.messages += 1
        error = msg.get("error")
        if error not in (None, "", False):
            raise AsrError(f"server reported an error: {error!s:.200}")
        text: str = _optional(msg, "text", str, "a string") or ""
        mode: str | None = _optional(msg, "mode", str, "a string")
        is_final: bool | None = _optional(msg, "is_final", bool, "a boolean")
        is_end: bool | None = _optional(msg, "is_end", bool, "a boolean")
        if text == CPP_PCM_ERROR or (mode is None and text.startswith("ERROR.")):
            # The C++ servers report session errors as a mode-less result text.
            raise AsrError(f"server reported an error: {text:.200}")

        if text.strip():
            self._check_length(text, mode)
            if mode in ONLINE_MODES:
                self._online += text
            elif mode in OFFLINE_MODES or mode is None:
                # Only the C++ flush reply comes without a mode, and it carries final text.
                self._committed = join_segments(self._committed, text)
                self._online = ""
            # any other mode: a label we do not know; its text cannot be placed, so it is ignored
        if mode in OFFLINE_MODES:
            self.segments += 1
            self.segment_closed = True
        elif mode in ONLINE_MODES and text.strip():
            self.segment_closed = False  # the server heard more words after the segment

        if not after_end_marker:
            return False
        if is_end is True:
            return True  # Python >= 2026-07-29 end acknowledgement; harmless to honour anywhere
        if self.flavour == "cpp-2pass":
            return is_final is True
        if self.flavour == "cpp-offline":
            return mode == "offline"
        if self.flavour == "python-classic":
            # The classic server echoes is_speaking into is_final: the flush result is the
            # offline one with is_final false. A streaming segment result that merely arrives
            # after our end marker still says true, and more may follow it.
            return mode in OFFLINE_MODES and is_final is not True
        return False  # python-2026: only is_end (or the quiet timeout) ends the utterance

    def _check_length(self, text: str, mode: str | None) -> None:
        """AsrError when ``text`` would make the transcript longer than ``max_chars``: checked
        before it is added, so a flood never grows the text past the cap."""
        if self.max_chars is None:
            return
        kept = self._committed if mode not in ONLINE_MODES else self._committed + self._online
        if len(kept) + len(text) > self.max_chars:  # the join's space aside
            raise AsrError(
                f"transcript longer than {self.max_chars} characters (asr.max_transcript_chars) "
                f"after {self.messages} results: more than one utterance can hold"
            )
