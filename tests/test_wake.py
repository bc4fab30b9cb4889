"""IDLE's wake sources over fake ports: a wake word (alone, or with the question in one breath),
speech alone (``always``), the refractory period, the button, the follow-up window, and the
control calls that start turns (GET /listen, /say); with the events they emit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from states.endpointer import EndpointerSettings
from states.history import Conversation
from states.machine import State
from states.mic_feed import MicFeed
from states.model import Assistant, AssistantSettings, Earcons, Turn
from states.wake_watch import EchoCleaner, Wake, watch_for_wake
from tests.fakes import FakeAsr, FakeLlm, FakeSpeaker, FakeTts, FakeVad
from tests.log_watch import watch_logs

TIMEOUT = 10
EARCON = b"\x05\x00" * 160
BLOCK = 320  # samples: 20 ms
WAKE_SAMPLE, QUESTION_SAMPLE = 1000, 2000


def block(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True) * BLOCK


class ScriptMic:
    """Plays (seconds, sample value) segments in 20 ms blocks, then silence forever; faster than
    real time unless ``realtime`` (the listening earcon's deafness is measured on the clock)."""

    sample_rate = 16000

    def __init__(self, script: Sequence[tuple[float, int]], *, realtime: bool = False) -> None:
        self._blocks = [block(value) for seconds, value in script for _ in range(round(seconds / 0.02))]
        self._delay = 0.02 if realtime else 0.001
        self.over = asyncio.Event()

    async def read(self) -> bytes:
        await asyncio.sleep(self._delay)
        if not self._blocks:
            self.over.set()
            return block(0)
        return self._blocks.pop(0)

    async def aclose(self) -> None:
        pass


class FakeHotword:
    """Fires ``word`` at the end of every run of ``WAKE_SAMPLE`` audio (the wake word, said), on
    the first block after it: one block late."""

    lag_s = 0.02

    def __init__(self, word: str = "hey_mycroft") -> None:
        self.phrases = (word,)
        self.word = word
        self.in_word = False
        self.resets = 0
        self.fed = bytearray()

    def process(self, pcm: bytes, speech: bool) -> str | None:
        self.fed += pcm
        in_word = pcm[:2] == block(WAKE_SAMPLE)[:2]
        ended = self.in_word and not in_word
        self.in_word = in_word
        return self.word if ended else None

    def reset(self) -> None:
        self.resets += 1

    async def aclose(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._new = asyncio.Event()

    def emit(self, event: str, /, **fields: object) -> None:
        self.seen.append((event, dict(fields)))
        self._new.set()

    async def state(self, *states: str) -> None:
        """Return once the machine has entered one of ``states`` (by its state_changed events)."""
        while not any(name == "state_changed" and f["dst"] in states for name, f in self.seen):
            self._new.clear()
            await asyncio.wait_for(self._new.wait(), TIMEOUT)

    def names(self, *wanted: str) -> list[str]:
        return [name for name, _ in self.seen if not wanted or name in wanted]


def make(
    script: Sequence[tuple[float, int]],
    *,
    asr: FakeAsr | None = None,
    hotword: FakeHotword | None = None,
    always: bool = False,
    follow_up_s: float = 0.0,
    llm: FakeLlm | None = None,
    refractory_s: float = 2.0,
    realtime: bool = False,
) -> tuple[Assistant, FakeSpeaker, asyncio.Queue[Turn], Events, FakeTts]:
    ended: asyncio.Queue[Turn] = asyncio.Queue()
    speaker, events, tts = FakeSpeaker(), Events(), FakeTts()
    assistant = Assistant(
        mic=ScriptMic(script, realtime=realtime),
        speaker=speaker,
        vad=FakeVad(),
        asr=asr or FakeAsr("what time is it"),
        llm=llm or FakeLlm(["It is noon."]),
        tts=tts,
        conversation=Conversation("be brief", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(
            endpointer=EndpointerSettings(
                speech_start_ms=60, end_silence_ms=200, pre_roll_ms=100, max_utterance_s=5, no_speech_timeout_s=1.0
            ),
            follow_up_s=follow_up_s,
            always=always,
            refractory_s=refractory_s,
        ),
        earcons=Earcons(listening=lambda rate: EARCON),
        hotword=hotword,
        events=events,
        on_turn_end=ended.put_nowait,
    )
    return assistant, speaker, ended, events, tts


async def next_turn(assistant: Assistant, ended: asyncio.Queue[Turn]) -> Turn:
    turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    return turn


async def test_a_wake_word_alone_wakes_with_the_earcon_and_the_question_follows() -> None:
    hotword = FakeHotword()
    script = [(0.2, 0), (0.5, WAKE_SAMPLE), (0.6, 0), (0.6, QUESTION_SAMPLE), (0.6, 0)]
    asr = FakeAsr("what time is it")
    assistant, speaker, ended, events, _ = make(script, asr=asr, hotword=hotword, realtime=True)
    await assistant.ready()
    turn = await next_turn(assistant, ended)
    assert turn.outcome == "answered" and turn.wake_source == "hotword" and turn.wake_word == "hey_mycroft"
    assert speaker.written[0] == EARCON  # nobody was speaking at the wake: the earcon plays
    assert ("wake", {"turn_id": turn.id, "source": "hotword", "word": "hey_mycroft"}) in events.seen
    assert block(QUESTION_SAMPLE) in bytes(asr.sessions[0].audio)
    assert block(WAKE_SAMPLE)[:2] not in bytes(asr.sessions[0].audio)  # the ASR never hears the wake word
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_a_question_said_in_the_same_breath_as_the_wake_word_is_heard_whole_without_an_earcon() -> None:
    hotword = FakeHotword()
    question_s = 0.8
    script = [(0.2, 0), (0.5, WAKE_SAMPLE), (question_s, QUESTION_SAMPLE), (0.6, 0)]
    asr = FakeAsr("what is the weather")
    assistant, speaker, ended, _, _ = make(script, asr=asr, hotword=hotword)
    await assistant.ready()
    turn = await next_turn(assistant, ended)
    assert turn.outcome == "answered" and turn.transcript == "what is the weather"
    assert EARCON not in speaker.written  # the user was already speaking
    sent = bytes(asr.sessions[0].audio)
    question = block(QUESTION_SAMPLE) * round(question_s / 0.02)
    assert question in sent  # every sample of the question, in order
    assert block(WAKE_SAMPLE)[:2] not in sent
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


class TimedScriptMic(ScriptMic):
    """A ScriptMic whose blocks carry their place in the script as capture time (no clock)."""

    def __init__(self, script: Sequence[tuple[float, int]]) -> None:
        super().__init__(script)
        self.t = 0.0

    async def read_timed(self) -> tuple[bytes, float]:
        pcm, start = await self.read(), self.t
        self.t += 0.02
        return pcm, start


async def test_detections_inside_the_refractory_period_are_ignored() -> None:
    script = [(0.2, 0), (0.3, WAKE_SAMPLE), (0.1, 0), (0.3, WAKE_SAMPLE), (0.2, 0)]
    feed = MicFeed(TimedScriptMic(script))
    wake = await asyncio.wait_for(
        watch_for_wake(
            feed=feed,
            vad=FakeVad(),
            engine=FakeHotword(),
            always=False,
            listening=EndpointerSettings(),
            cleaner=EchoCleaner(None, None),
            ignore_until=0.7,  # the first wake word ends at 0.5 s: ignored; the second at 0.9 s
        ),
        TIMEOUT,
    )
    assert wake.source == "hotword" and wake.at is not None and round(wake.at, 2) == 0.92
    await feed.aclose()


async def test_in_always_mode_speech_alone_starts_a_turn_and_is_heard_from_its_start() -> None:
    script = [(0.3, 0), (0.6, QUESTION_SAMPLE), (0.6, 0)]
    asr = FakeAsr("turn on the light")
    assistant, speaker, ended, events, _ = make(script, asr=asr, always=True)
    await assistant.ready()
    turn = await next_turn(assistant, ended)
    assert turn.outcome == "answered" and turn.wake_source == "always"
    assert EARCON not in speaker.written
    assert block(QUESTION_SAMPLE) * 30 in bytes(asr.sessions[0].audio)
    assert events.names("wake", "transcript")[:2] == ["wake", "transcript"]
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_without_a_hotword_or_always_idle_hears_speech_but_never_wakes_on_it() -> None:
    assistant, _, _, events, _ = make([(1.0, QUESTION_SAMPLE)])
    mic = assistant.mic
    assert isinstance(mic, ScriptMic)
    await assistant.ready()
    await asyncio.wait_for(mic.over.wait(), TIMEOUT)  # IDLE read the whole script: the feed runs
    assert assistant.state is State.IDLE and events.names("wake") == []
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_the_follow_up_window_listens_again_quietly_and_a_silence_goes_back_to_idle() -> None:
    script = [(0.3, 0), (0.6, QUESTION_SAMPLE), (0.5, 0), (0.6, QUESTION_SAMPLE), (3.0, 0)]
    asr = FakeAsr("what time is it", "and tomorrow")
    llm = FakeLlm(["It is noon."], ["Sunny."])
    assistant, speaker, ended, events, _ = make(script, asr=asr, llm=llm, follow_up_s=1.0, realtime=True)
    await assistant.wake(wake=Wake("button"))
    first = await next_turn(assistant, ended)
    second = await next_turn(assistant, ended)
    third = await next_turn(assistant, ended)
    assert [t.outcome for t in (first, second, third)] == ["answered", "answered", "no_speech"]
    assert [t.wake_source for t in (first, second, third)] == ["button", "follow_up", "follow_up"]
    assert speaker.written.count(EARCON) == 1  # only the button's wake had an earcon
    assert assistant.state is State.IDLE
    assert events.names("wake") == ["wake"]  # a follow-up is not a wake
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_listen_returns_the_text_without_answering_it() -> None:
    llm = FakeLlm(["never"])
    assistant, _, _, events, _ = make([(0.3, 0), (0.6, QUESTION_SAMPLE), (1.0, 0)], llm=llm, realtime=True)
    waiter = await assistant.request("wake", interrupt=True, wake=Wake("listen"), listen_only=True)
    turn = await asyncio.wait_for(waiter, TIMEOUT)
    assert turn.outcome == "listened" and turn.transcript == "what time is it" and turn.kind == "listen"
    assert llm.requests == []
    assert assistant.state is State.IDLE
    assert events.names("transcript", "turn_finished") == ["transcript", "turn_finished"]
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_say_speaks_the_text_through_the_tts_and_a_queued_say_waits_for_the_answer() -> None:
    llm = FakeLlm(["It is noon."])
    llm.gate = asyncio.Event()
    assistant, _, ended, events, tts = make([(0.3, 0), (0.6, QUESTION_SAMPLE), (1.0, 0)], llm=llm, realtime=True)
    await assistant.wake()
    await events.state("thinking")
    said = await assistant.request("say", interrupt=False, text="The battery is low.")
    assert assistant.state is State.THINKING  # queued behind the answer
    llm.gate.set()
    answered = await next_turn(assistant, ended)
    turn = await asyncio.wait_for(said, TIMEOUT)
    assert answered.outcome == "answered" and turn.outcome == "said" and turn.reply == "The battery is low."
    assert tts.texts == ["It is noon.", "The battery is low."]
    assert ("reply_clause", {"turn_id": turn.id, "text": "The battery is low."}) in events.seen
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_say_with_interrupt_cuts_in() -> None:
    llm = FakeLlm(["It is noon."])
    llm.gate = asyncio.Event()
    assistant, _, ended, events, tts = make([(0.3, 0), (0.6, QUESTION_SAMPLE), (1.0, 0)], llm=llm, realtime=True)
    await assistant.wake()
    await events.state("thinking")
    said = await assistant.request("say", interrupt=True, text="Stop right there.")
    stopped = await next_turn(assistant, ended)
    turn = await asyncio.wait_for(said, TIMEOUT)
    assert stopped.outcome == "stopped" and turn.outcome == "said"
    assert tts.texts[-1] == "Stop right there."
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_the_button_wakes_when_idle_cuts_an_answer_and_a_long_press_goes_idle() -> None:
    llm = FakeLlm(["It is noon."], ["Sunny."])
    llm.gate = asyncio.Event()
    script = [(0.3, 0), (0.6, QUESTION_SAMPLE), (1.0, 0)]
    assistant, _, ended, events, _ = make(script, llm=llm, asr=FakeAsr("what time is it", ""), realtime=True)
    await assistant.press()
    assert assistant.state is State.LISTENING and assistant.turn is not None
    assert assistant.turn.wake_source == "button"
    await events.state("thinking")
    await assistant.press()  # a barge-in by hand
    cut = await next_turn(assistant, ended)
    assert cut.outcome == "interrupted" and assistant.state is State.LISTENING
    await assistant.long_press()
    stopped = await next_turn(assistant, ended)
    assert stopped.outcome == "stopped" and assistant.state is State.IDLE
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


class BrokenOnceHotword(FakeHotword):
    """Raises on its first block (a model that hiccups), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def process(self, pcm: bytes, speech: bool) -> str | None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("tflite hiccup")
        return super().process(pcm, speech)


async def test_a_failing_wake_watch_is_logged_and_starts_again() -> None:
    hotword = BrokenOnceHotword()
    script = [(0.2, 0), (0.5, WAKE_SAMPLE), (0.6, QUESTION_SAMPLE), (0.6, 0)]
    assistant, _, ended, _, _ = make(script, hotword=hotword, realtime=True)  # the retry waits 1 s
    with watch_logs() as logs:
        await assistant.ready()
        failed = await asyncio.wait_for(logs.wait_for("wake_watch_failed"), TIMEOUT)
        turn = await next_turn(assistant, ended)  # the wait started again and heard the wake word
    assert failed["error"] == "tflite hiccup" and failed["log_level"] == "error"
    assert turn.wake_source == "hotword"
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)


async def test_listen_during_an_answer_stops_it_and_listens_at_once() -> None:
    llm = FakeLlm(["It is noon."])
    llm.gate = asyncio.Event()  # the answer never ends by itself
    script = [(0.3, 0), (0.6, QUESTION_SAMPLE), (0.8, 0), (0.6, QUESTION_SAMPLE), (1.0, 0)]
    asr = FakeAsr("what time is it", "tell me a joke")
    assistant, _, ended, events, _ = make(script, asr=asr, llm=llm, realtime=True)
    await assistant.wake()
    await events.state("thinking")
    waiter = await assistant.request("wake", interrupt=True, wake=Wake("listen"), listen_only=True)
    stopped = await next_turn(assistant, ended)
    listened = await asyncio.wait_for(waiter, TIMEOUT)
    assert stopped.outcome == "stopped" and stopped.transcript == "what time is it"
    assert listened.outcome == "listened" and listened.transcript == "tell me a joke"
    assert listened.wake_source == "listen" and len(llm.requests) == 1  # the second was not answered
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)
