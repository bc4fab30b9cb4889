"""Latency scenarios: the service delays injected into the stand-ins, and the latency limit they set.

The limit is what a perfect client would achieve with these services: after the user's last
sound, the VAD's end silence, the ASR's final delay, the LLM's time to first token, the time the
LLM needs to stream the first clause, and the TTS's first chunk. Whatever the measurement adds
on top is moss-voice's overhead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from daemon.config import AudioSettings, VadSettings
from daemon.tools.stubs.tokens import tokenize

if TYPE_CHECKING:
    from states.speech_text import SpeechTextSettings

QUESTION = "what is the weather like today"

_SENTENCES = (
    "Let me tell you about this building.",
    "It has four floors, and the library is on the second one.",
    "The cafeteria is open from eight until six, and the garden behind it is a nice place to rest.",
    "If you need a printer, there is one next to the elevator on every floor.",
    "Meeting rooms can be booked at the front desk, or with the app on your phone.",
    "On Fridays there is a small market in the courtyard, with fruit, bread and flowers.",
    "Parking is in the basement, and visitors get two free hours.",
    "The building closes at ten in the evening, but the main door opens with your badge.",
    "Please ask me again if you want to know where something is.",
)


def make_answer(tokens: int) -> str:
    """An English answer of at most ``tokens`` stand-in tokens (whole sentences, at least one)."""
    chosen: list[str] = []
    count = 0
    i = 0
    while True:
        sentence = _SENTENCES[i % len(_SENTENCES)]
        piece = (" " if chosen else "") + sentence
        n = len(tokenize(piece))
        if chosen and count + n > tokens:
            break
        chosen.append(piece)
        count += n
        i += 1
    return "".join(chosen)


@dataclass(frozen=True)
class Scenario:
    """Injected service latencies (seconds) and the answer the LLM gives."""

    name: str
    asr_final_delay_s: float
    llm_ttft_s: float
    llm_tokens_per_s: float
    tts_first_chunk_s: float
    tts_rtf: float
    answer_tokens: int = 150
    end_silence_ms: int = VadSettings().end_silence_ms
    """The daemon's default (700 ms); ``bench latency --end-silence-ms`` measures another."""

    @property
    def answer(self) -> str:
        return make_answer(self.answer_tokens)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "fast", asr_final_delay_s=0.05, llm_ttft_s=0.15, llm_tokens_per_s=40, tts_first_chunk_s=0.05, tts_rtf=0.1
        ),
        Scenario(
            "typical", asr_final_delay_s=0.2, llm_ttft_s=0.35, llm_tokens_per_s=25, tts_first_chunk_s=0.15, tts_rtf=0.3
        ),
        Scenario(
            "slow-llm", asr_final_delay_s=0.2, llm_ttft_s=1.0, llm_tokens_per_s=8, tts_first_chunk_s=0.15, tts_rtf=0.3
        ),
        Scenario(  # the services together slower than the end silence: where speculation gains the most
            "slow-services",
            asr_final_delay_s=0.2,
            llm_ttft_s=0.7,
            llm_tokens_per_s=25,
            tts_first_chunk_s=0.15,
            tts_rtf=0.3,
        ),
        Scenario(  # an LLM slower than speech: the answer has to wait for its clauses (gaps)
            "trickle", asr_final_delay_s=0.2, llm_ttft_s=0.35, llm_tokens_per_s=3, tts_first_chunk_s=0.15, tts_rtf=0.3
        ),
        Scenario(
            "smoke",
            asr_final_delay_s=0.05,
            llm_ttft_s=0.1,
            llm_tokens_per_s=50,
            tts_first_chunk_s=0.05,
            tts_rtf=0.1,
            answer_tokens=30,
        ),
    )
}
DEFAULT_SCENARIOS = ("fast", "typical", "slow-services", "slow-llm")
RATIO_SCENARIO = "typical"
"""150 tokens at 25 tokens/s: the scenario the sequential/streaming ratio is quoted for."""
WINDOW_S = 8.0
"""A streaming turn is stopped this long after its first reply sample (gaps are looked for in it)."""
BLOCK_MS = AudioSettings().block_ms
MIC_BLOCK_MS = AudioSettings().mic_block_ms
"""The devices' period by default: the daemon's own default."""


def first_clause(answer: str, settings: SpeechTextSettings | None = None) -> tuple[str, int]:
    """The first clause the daemon speaks, and the index of the stand-in token whose arrival
    releases it (the splitter may need the token after the clause to see the boundary)."""
    from states.speech_text import SpeechText  # here: the CLI reads the scenarios' names from this module

    speech = SpeechText(settings)
    for index, token in enumerate(tokenize(answer)):
        clauses = speech.feed(token)
        if clauses:
            return clauses[0], index
    rest = speech.finish()
    tokens = len(tokenize(answer))
    return (rest[0] if rest else ""), max(tokens - 1, 0)


@dataclass(frozen=True)
class Limit:
    """The stages of the latency limit, seconds."""

    end_silence_s: float
    asr_s: float
    ttft_s: float
    first_clause_s: float
    tts_s: float

    @property
    def total_s(self) -> float:
        return self.end_silence_s + self.services_s

    @property
    def services_s(self) -> float:
        """What the services cost after the ASR is asked for its final: everything but the silence."""
        return self.asr_s + self.ttft_s + self.first_clause_s + self.tts_s

    def with_speculation_s(self, speculate_after_ms: int | None) -> float:
        """The limit with a speculative turn end: the services start ``speculate_after_ms`` into
        the silence, and the answer cannot play before the silence has lasted ``end_silence``."""
        if speculate_after_ms is None:
            return self.total_s
        return max(self.end_silence_s, speculate_after_ms / 1000 + self.services_s)


def limit_for(scenario: Scenario, *, tts_synth_s: float = 0.0) -> Limit:
    """The limit of ``scenario``. The stand-in streams token ``i`` at ``ttft + i / rate``, so the
    first clause costs ``index / rate`` after the first token. ``tts_synth_s`` is the stand-in
    TTS's own synthesis time for the first sentence (espeak-ng), paid before its first-chunk delay."""
    _, index = first_clause(scenario.answer)
    per_token = 1.0 / scenario.llm_tokens_per_s if scenario.llm_tokens_per_s > 0 else 0.0
    return Limit(
        end_silence_s=scenario.end_silence_ms / 1000,
        asr_s=scenario.asr_final_delay_s,
        ttft_s=scenario.llm_ttft_s,
        first_clause_s=index * per_token,
        tts_s=scenario.tts_first_chunk_s + tts_synth_s,
    )


MARGIN_TODAY_MS = 30.0
"""Without speculation the issue quotes first audio at the limit + this (issue 12, "Targets")."""
MARGIN_SPECULATION_MS = 60.0
"""With speculation the target is the speculative limit + this, at the median."""
SOONER_TARGET_MS = 400.0
"""With services slower than the end silence, speculation must be at least this much sooner."""


def target_ms(limit: Limit, speculate_after_ms: int | None) -> float:
    """The first-audio target at the median: today's limit + 30 ms with speculation off, the
    speculative limit + 60 ms with it on."""
    margin = MARGIN_TODAY_MS if speculate_after_ms is None else MARGIN_SPECULATION_MS
    return limit.with_speculation_s(speculate_after_ms) * 1000 + margin
