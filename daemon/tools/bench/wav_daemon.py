"""The daemon's settings for a benchmark turn: the stand-ins' URLs and WAV files for devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.config import (
    AecSettings,
    AsrSettings,
    AudioSettings,
    EarconSettings,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
)
from daemon.tools.bench.stub_process import StubUrls


def wav_daemon_settings(
    urls: StubUrls,
    mic: Path,
    out: Path,
    *,
    vad: VadSettings,
    asr: dict[str, Any] | None = None,
    audio: dict[str, Any] | None = None,
) -> Settings:
    """Settings of a daemon that hears ``mic`` and speaks into ``out`` against the stand-ins at
    ``urls``. The WAV devices have no echo path (the canceller is off), and there is no thinking
    cue (the output's first sound after the question is the answer's). ``asr`` and ``audio``: more
    fields of those tables."""
    return Settings(
        asr=AsrSettings(url=urls.asr, **(asr or {})),
        llm=LlmSettings(url=urls.llm),
        tts=TtsSettings(url=urls.tts),
        audio=AudioSettings(input=f"wav:{mic}", output=f"wav:{out}", **(audio or {})),
        vad=vad,
        aec=AecSettings(engine="off"),
        earcons=EarconSettings(thinking="off"),
    )
