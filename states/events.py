"""Small frozen payloads that travel between the ports and the machine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Transcript:
    """What the ASR heard in one utterance. ``text`` is "" when nothing was recognised."""

    text: str
    answered: bool = True
    """The server said the utterance was done (its final result). False: ``text`` is only what
    came before the quiet period ran out, from a server that normally answers: silent, or slow."""


@dataclass(frozen=True)
class LlmResult:
    """How an LLM stream ended. ``finish_reason`` is None when the stream was truncated."""

    finish_reason: str | None
    usage: dict[str, int] | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class TurnTimes:
    """Monotonic timestamps (seconds) of the moments a turn's latencies are measured between."""

    woke: float | None = None
    speech_start: float | None = None
    speech_end: float | None = None
    asr_final: float | None = None
    llm_request: float | None = None
    llm_first_token: float | None = None
    tts_request: float | None = None
    tts_first_audio: float | None = None
    first_audio: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def latencies_ms(self) -> dict[str, int | None]:
        """The four latencies every ``turn_finished`` event carries, in whole ms."""

        def span(a: float | None, b: float | None) -> int | None:
            return None if a is None or b is None else round((b - a) * 1000)

        return {
            "asr_final_ms": span(self.speech_end, self.asr_final),
            "llm_first_token_ms": span(self.llm_request, self.llm_first_token),
            "tts_first_audio_ms": span(self.tts_request, self.tts_first_audio),
            "first_audio_ms": span(self.speech_end, self.first_audio),
        }
