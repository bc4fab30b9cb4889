"""What the user hears while waiting and when a turn fails: the settings of the thinking cue and
the spoken apology (the ``[reply]`` table carries them; see ``daemon/config.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from states.settings import Checked, setting

DEFAULT_APOLOGY = "抱歉，出了点问题，请稍后再试。"
"""Chinese, as the default voice (PaddleSpeech's csmsc models) speaks it: "Sorry, something went
wrong, please try again later"."""
MAX_APOLOGY_CHARS = 200


def _short(text: str) -> str | None:
    if len(text) > MAX_APOLOGY_CHARS:
        return f"must be a short sentence, at most {MAX_APOLOGY_CHARS} characters, got {len(text)}"
    return None


@dataclass(frozen=True)
class CueSettings(Checked):
    """The thinking cue (its sound is ``earcons.thinking``) and the apology."""

    thinking_cue_after_s: float = setting(1.5, gt=0)
    """After the transcript, when no answer audio has started this long, the thinking earcon
    plays. A normal answer starts well within it (first audio about 1 s after the transcript)."""
    thinking_cue_every_s: float = setting(3.0, ge=0)
    """And again this often while the answer still has not started; 0: once."""
    apology: str = setting(DEFAULT_APOLOGY, check=_short)
    """Said when a turn fails and the TTS still works (the ASR, the LLM or a device failed);
    "": the error earcon only."""
    apology_timeout_s: float = setting(2.0, gt=0, le=10)
    """The apology not yet synthesised (it is kept once it was) must be within this, or the
    error earcon plays instead: a failing turn ends quickly even with a slow TTS."""
