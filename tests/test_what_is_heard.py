"""What the user hears when things go wrong: the ASR silent after speech is a failure, a thinking
cue while the answer is slow, a spoken apology when the TTS still works (else the error earcon)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.app import EXIT_ANSWERED, EXIT_FAILED, assistant_settings
from daemon.config_load import settings_from_dict
from daemon.earcon import thinking_earcon
from daemon.errors import ConfigError, HardwareError, LlmError, TtsError
from daemon.tools.stubs.funasr import FunAsrBehaviour
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.cues import DEFAULT_APOLOGY, CueSettings
from states.endpointer import EndpointerSettings
from states.events import ChatMessage, Transcript
from states.history import Conversation
from states.machine import State
from states.model import Assistant, AssistantSettings, Earcons, Turn
from states.thinking_cue import AnswerSpeaker, ThinkingCue
from tests.fakes import (
    SPEECH,
    FakeAsr,
    FakeAsrSession,
    FakeLlm,
    FakeLlmStream,
    FakeMic,
    FakeMicWithEnd,
    FakeSpeaker,
    FakeTts,
    FakeVad,
)
from tests.log_watch import watch_logs
from tests.test_daemon_turn import SHORT_ANSWERS, loud_span, question_wav, run_once, settings_for
from tests.test_daemon_turn import _read as wav_samples

TIMEOUT = 10
EARCON = b"\x01\x02" * 50
THINK = b"\x03\x04" * 40
APOLOGY = "Sorry, something went wrong."
QUESTION = [(0.3, False), (1.2, True), (0.5, False)]
"""1.2 s of speech: a question, by its length."""


def make(
    *,
    mic: FakeMic | None = None,
    asr: FakeAsr | None = None,
    llm: FakeLlm | None = None,
    tts: FakeTts | None = None,
    cues: CueSettings | None = None,
    thinking: bool = False,
    **settings: float,
) -> tuple[Assistant, FakeSpeaker, asyncio.Queue[Turn]]:
    ended: asyncio.Queue[Turn] = asyncio.Queue()
    speaker = FakeSpeaker()
    assistant = Assistant(
        mic=mic or FakeMic(QUESTION),
        speaker=speaker,
        vad=FakeVad(),
        asr=asr or FakeAsr("what time is it"),
        llm=llm or FakeLlm(["It is noon."]),
        tts=tts or FakeTts(),
        conversation=Conversation("be brief", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(
            endpointer=EndpointerSettings(
                speech_start_ms=60, end_silence_ms=200, pre_roll_ms=100, max_utterance_s=5, no_speech_timeout_s=1.0
            ),
            cues=cues or CueSettings(apology=APOLOGY),
            **settings,  # type: ignore[arg-type]
        ),
        earcons=Earcons(error=lambda rate: EARCON, thinking=(lambda rate: THINK) if thinking else None),
        on_turn_end=ended.put_nowait,
    )
    return assistant, speaker, ended


async def one_turn(assistant: Assistant, ended: asyncio.Queue[Turn]) -> Turn:
    await assistant.wake()
    assert assistant.state is State.LISTENING
    turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    await asyncio.wait_for(assistant.settle(), TIMEOUT)
    return turn


def events(logs: Sequence[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


def apology_audio() -> bytes:
    """What FakeTts makes of the apology."""
    return SPEECH * len(APOLOGY)


# -- the ASR silent after speech -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  ", "。", "?!"])
async def test_speech_with_no_transcript_is_an_asr_failure_and_the_robot_apologises(text: str) -> None:
    tts = FakeTts()
    assistant, speaker, ended = make(asr=FakeAsr(text), tts=tts)
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and turn.failed_service == "asr" and assistant.state is State.IDLE
    (failed,) = events(logs, "turn_failed")
    assert failed["service"] == "asr"
    assert failed["reason"].startswith("speech was heard for 1.") and "no transcript" in failed["reason"]
    assert events(logs, "turn_finished")[0]["outcome"] == "failed"
    assert speaker.audio == apology_audio()  # the apology, and not the earcon
    assert tts.texts == [APOLOGY]
    assert assistant.llm.requests == []  # type: ignore[attr-defined]


async def test_a_short_noise_with_no_transcript_is_still_nobody_speaking() -> None:
    """A cough or a knock (here 0.3 s) that the ASR rightly finds no words in asks nothing."""
    assistant, speaker, ended = make(mic=FakeMic([(0.3, False), (0.3, True), (0.5, False)]), asr=FakeAsr(""))
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "no_speech" and events(logs, "turn_failed") == []
    assert speaker.audio == b""


async def test_nobody_speaking_stays_no_speech_and_silent() -> None:
    assistant, speaker, ended = make(mic=FakeMic([(5.0, False)]))
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "no_speech" and events(logs, "turn_failed") == []
    assert speaker.audio == b""


async def test_the_threshold_between_noise_and_a_question_is_a_setting() -> None:
    assistant, _, ended = make(asr=FakeAsr(""), no_transcript_fails_ms=2000)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "no_speech"  # 1.2 s of speech is under the 2 s asked for


async def test_an_interruption_with_no_words_over_a_held_answer_is_still_a_false_one() -> None:
    """pause mode: a second of speech the ASR finds no words in does not fail the turn: the held
    answer plays on (as for a cough)."""
    llm = FakeLlm(["Let me tell you a long story about robots. "])
    llm.gate = asyncio.Event()
    mic = FakeMic([*QUESTION, (1.0, False), (1.0, True), (0.6, False)])
    assistant, speaker, ended = make(mic=mic, asr=FakeAsr("tell me a story", ""), llm=llm)
    with watch_logs() as logs:
        await assistant.wake()
        await asyncio.wait_for(logs.wait_for("barge_in_resumed"), TIMEOUT)
        llm.gate.set()
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
        await asyncio.wait_for(assistant.settle(), TIMEOUT)
    assert turn.outcome == "answered" and events(logs, "turn_failed") == []
    assert speaker.resumes == 1 and apology_audio() not in speaker.written
    assert events(logs, "speech_ended")[-1]["voiced_ms"] >= 800  # long enough to fail a question


# -- the apology -----------------------------------------------------------------------------------


async def test_an_llm_failure_is_apologised_for_after_what_was_said() -> None:
    llm = FakeLlm(["The first part. ", "And then"], error=LlmError("the stream was cut"))
    tts = FakeTts()
    assistant, speaker, ended = make(llm=llm, tts=tts)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and turn.failed_service == "llm"
    assert tts.texts[-1] == APOLOGY and speaker.written[-1] == apology_audio()
    assert EARCON not in speaker.written


async def test_a_failing_tts_gets_the_earcon_not_the_apology() -> None:
    tts = FakeTts(fail_on=["*"], error=TtsError("no audio for 'It is noon.'"))
    assistant, speaker, ended = make(tts=tts)
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and turn.failed_service == "tts"
    assert speaker.written[-1] == EARCON and APOLOGY not in tts.texts
    assert events(logs, "failure_announced")[0]["sound"] == "earcon"


async def test_a_lost_device_is_apologised_for() -> None:
    class DeadMic(FakeMic):
        async def read(self) -> bytes:
            raise HardwareError("microphone 'pyaudio:USB': the stream stopped (device gone?)")

    assistant, speaker, ended = make(mic=DeadMic([]))
    turn = await one_turn(assistant, ended)
    assert turn.failed_service == "audio" and speaker.audio == apology_audio()
    await assistant.aclose()


async def test_no_apology_text_means_the_earcon() -> None:
    assistant, speaker, ended = make(asr=FakeAsr(""), cues=CueSettings(apology=""))
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and speaker.written == [EARCON]


class HangingTts(FakeTts):
    """Never sends a byte (a TTS overloaded or hung). ``asked``: a request came; ``dropped``: it
    was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.asked, self.dropped = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self.texts.append(text)
        self.asked.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.dropped.set()
        yield self._never()  # pragma: no cover - never reached

    async def _never(self) -> AsyncIterator[bytes]:  # pragma: no cover
        yield b""


async def test_an_apology_the_tts_cannot_make_in_time_becomes_the_earcon_and_the_turn_still_ends() -> None:
    assistant, speaker, ended = make(
        asr=FakeAsr(""), tts=HangingTts(), cues=CueSettings(apology=APOLOGY, apology_timeout_s=0.05)
    )
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and assistant.state is State.IDLE
    assert speaker.written == [EARCON]
    (unavailable,) = events(logs, "apology_unavailable")
    assert unavailable["error"] == "no audio within 0.05 s"


async def test_the_apology_is_synthesised_once_and_kept() -> None:
    tts = FakeTts()
    assistant, speaker, ended = make(asr=FakeAsr("", ""), tts=tts)
    await one_turn(assistant, ended)
    assistant.mic = FakeMic(QUESTION)
    await one_turn(assistant, ended)
    assert tts.texts == [APOLOGY]  # the second failure did not ask the TTS again
    assert speaker.written == [apology_audio(), apology_audio()]


async def test_a_new_apology_text_is_synthesised_afresh() -> None:
    tts = FakeTts()
    assistant, speaker, ended = make(asr=FakeAsr("", ""), tts=tts)
    await one_turn(assistant, ended)
    assistant.settings = AssistantSettings(
        endpointer=assistant.settings.endpointer, cues=CueSettings(apology="Oops.", apology_timeout_s=1)
    )
    assistant.mic = FakeMic(QUESTION)
    await one_turn(assistant, ended)
    assert tts.texts == [APOLOGY, "Oops."] and speaker.written[-1] == SPEECH * len("Oops.")


async def test_the_apology_is_made_while_idle_so_the_first_failure_says_it_at_once() -> None:
    tts = FakeTts()
    assistant, speaker, ended = make(asr=FakeAsr(""), tts=tts, apology_prepare_idle_s=0.01)
    with watch_logs() as logs:
        await assistant.ready()
        await asyncio.wait_for(logs.wait_for("apology_synthesised"), TIMEOUT)
        assert tts.texts == [APOLOGY]
        # now even a TTS that hangs does not matter
        assistant.tts = HangingTts()
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and speaker.audio == apology_audio()
    await assistant.aclose()


async def test_the_idle_synthesis_is_dropped_when_a_turn_starts() -> None:
    tts = HangingTts()
    assistant, _, _ = make(tts=tts, apology_prepare_idle_s=0.01)
    await assistant.ready()
    await asyncio.wait_for(tts.asked.wait(), TIMEOUT)  # the idle task has asked the TTS
    assert tts.texts == [APOLOGY]
    await assistant.wake()
    assert assistant.state is State.LISTENING and tts.dropped.is_set()  # the turn has the TTS to itself
    await assistant.aclose()


async def test_one_idle_synthesis_at_a_time_however_often_idle_restarts_its_wait() -> None:
    """IDLE's wait restarts every second while the microphone is gone (``ready``): with a TTS that
    does not answer, the apology must not be asked of it again each time."""
    tts = HangingTts()
    assistant, _, _ = make(tts=tts, apology_prepare_idle_s=0.01)
    await assistant.ready()
    await asyncio.wait_for(tts.asked.wait(), TIMEOUT)
    for _ in range(3):
        await assistant.ready()
    preparing = [t for t in asyncio.all_tasks() if t.get_name().startswith("apology-") and not t.done()]
    assert len(preparing) == 1 and tts.texts == [APOLOGY]
    await assistant.aclose()


async def test_a_new_turn_cuts_the_rest_of_the_apology() -> None:
    """The user speaks again (a wake) while the apology still plays: it stops, and the listening
    earcon does not wait behind it."""
    assistant, speaker, ended = make(asr=FakeAsr("", "hello"))
    speaker.sample_rate = 10  # the apology's 28 samples last 2.8 s
    with capture_logs() as logs:
        first = await one_turn(assistant, ended)
        assert speaker.flushes == 0
        assistant.mic = FakeMic(QUESTION)
        second = await one_turn(assistant, ended)
    assert first.outcome == "failed" and second.outcome == "answered"
    assert speaker.flushes == 1 and len(events(logs, "failure_sound_cut")) == 1


# -- the thinking cue ------------------------------------------------------------------------------


class SlowLlm(FakeLlm):
    """Sends nothing until ``first`` is set (a busy GPU, a slow prefill)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        super().__init__(*answers)
        self.first = asyncio.Event()

    @asynccontextmanager
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[FakeLlmStream]:
        await self.first.wait()
        async with super().stream_chat(messages) as stream:
            yield stream


async def test_a_slow_answer_gets_the_thinking_cue_until_its_first_audio_and_never_after() -> None:
    llm = SlowLlm(["It is noon. ", "Time for lunch!"])
    llm.gate = asyncio.Event()  # then the answer goes on for a while
    mic = FakeMicWithEnd([*QUESTION, (1.0, False)])  # the second of silence: 0.1 s of real time
    cues = CueSettings(thinking_cue_after_s=0.01, thinking_cue_every_s=0.01)
    assistant, speaker, ended = make(mic=mic, llm=llm, cues=cues, thinking=True)
    with watch_logs() as logs:
        await assistant.wake()
        await asyncio.wait_for(logs.wait_for("thinking_cue", n=2), TIMEOUT)  # it repeats
        assert assistant.state is State.THINKING
        llm.first.set()
        await asyncio.wait_for(logs.wait_for("state_changed", dst="speaking"), TIMEOUT)
        await asyncio.wait_for(mic.over.wait(), TIMEOUT)  # ten cue periods go by while it speaks
        llm.gate.set()
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert turn.outcome == "answered" and turn.reply == "It is noon. Time for lunch!"
    first_answer = next(i for i, pcm in enumerate(speaker.written) if pcm != THINK)
    assert first_answer >= 2 and set(speaker.written[:first_answer]) == {THINK}
    assert THINK not in speaker.written[first_answer:]
    assert speaker.flushes == 1  # what was left of the cue was dropped before the answer


async def test_a_quick_answer_gets_no_cue() -> None:
    assistant, speaker, ended = make(cues=CueSettings(thinking_cue_after_s=60), thinking=True)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "answered" and THINK not in speaker.written and speaker.flushes == 0


async def test_the_cue_once_when_it_is_not_to_repeat() -> None:
    llm = SlowLlm(["Noon."])
    cues = CueSettings(thinking_cue_after_s=0.01, thinking_cue_every_s=0)
    mic = FakeMicWithEnd([*QUESTION, (1.0, False)])
    assistant, speaker, ended = make(mic=mic, llm=llm, cues=cues, thinking=True)
    with watch_logs() as logs:
        await assistant.wake()
        await asyncio.wait_for(logs.wait_for("thinking_cue", n=1), TIMEOUT)
        await asyncio.wait_for(mic.over.wait(), TIMEOUT)
        llm.first.set()
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert turn.outcome == "answered" and speaker.written.count(THINK) == 1


async def test_barge_in_while_thinking_stops_the_cue() -> None:
    llm = SlowLlm(["Noon."])
    cues = CueSettings(thinking_cue_after_s=0.01, thinking_cue_every_s=0.01)
    mic = FakeMicWithEnd([*QUESTION, (1.0, False)])
    assistant, speaker, ended = make(mic=mic, llm=llm, cues=cues, thinking=True)
    with watch_logs() as logs:
        await assistant.wake()
        await asyncio.wait_for(logs.wait_for("thinking_cue", n=1), TIMEOUT)
        await assistant.barge_in()  # the button: stop the answer and listen
        assert assistant.state is State.LISTENING
        cues_then = speaker.written.count(THINK)
        first = await asyncio.wait_for(ended.get(), TIMEOUT)
        second = await asyncio.wait_for(ended.get(), TIMEOUT)  # nobody speaks in the new turn
    assert first.outcome == "interrupted" and second.outcome == "no_speech"
    assert speaker.written.count(THINK) == cues_then


class GatedAsr(FakeAsr):
    """The second utterance's transcript waits for ``release`` (the ASR still decoding)."""

    def __init__(self, *texts: str) -> None:
        super().__init__(*texts)
        self.release = asyncio.Event()

    async def open_session(self) -> FakeAsrSession:
        session = await super().open_session()
        if len(self.sessions) == 2:
            release, finish = self.release, session.finish

            async def gated_finish(*, trailing_silence_ms: float | None = None) -> Transcript:
                await release.wait()
                return await finish(trailing_silence_ms=trailing_silence_ms)

            session.finish = gated_finish  # type: ignore[method-assign]
        return session


async def test_an_answer_starting_while_held_does_not_flush_the_paused_speaker() -> None:
    """pause mode, the user cut in while the cue played and before the answer came: the answer's
    first audio must not flush (a flush would end the pause and play the answer over the user)."""
    llm = SlowLlm(["Let me tell you a long story about robots. "])
    asr = GatedAsr("tell me a story", "嗯")
    mic = FakeMic([*QUESTION, (1.0, False), (0.3, True), (0.6, False)])
    cues = CueSettings(thinking_cue_after_s=0.01, thinking_cue_every_s=0.01)
    assistant, speaker, ended = make(mic=mic, asr=asr, llm=llm, cues=cues, thinking=True)
    answered = asyncio.Event()
    states: list[State] = []
    write = speaker.write

    async def recording_write(pcm: bytes) -> None:
        if pcm != THINK:
            states.append(assistant.state)
            answered.set()
        await write(pcm)

    speaker.write = recording_write  # type: ignore[method-assign]
    with watch_logs() as logs:
        await assistant.wake()
        await asyncio.wait_for(logs.wait_for("thinking_cue", n=1), TIMEOUT)
        await asyncio.wait_for(logs.wait_for("state_changed", dst="listening_held"), TIMEOUT)
        llm.first.set()
        await asyncio.wait_for(answered.wait(), TIMEOUT)
        asr.release.set()  # "嗯": a false interruption, the answer plays on
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert states[0] is State.LISTENING_HELD
    assert speaker.flushes == 0 and speaker.resumes >= 1
    assert turn.outcome == "answered" and turn.reply == "Let me tell you a long story about robots."


async def test_a_failure_while_thinking_stops_the_cue_and_apologises() -> None:
    llm = SlowLlm([])
    llm.error = LlmError("no first token within 8 s")
    cues = CueSettings(apology=APOLOGY, thinking_cue_after_s=0.01, thinking_cue_every_s=0.01)
    assistant, speaker, ended = make(llm=llm, cues=cues, thinking=True)
    with watch_logs() as logs:
        await assistant.wake()
        await asyncio.wait_for(logs.wait_for("thinking_cue", n=2), TIMEOUT)
        llm.first.set()
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    await asyncio.wait_for(assistant.settle(), TIMEOUT)
    assert turn.failed_service == "llm" and speaker.written[-1] == apology_audio()
    assert THINK not in speaker.written[speaker.written.index(apology_audio()) :]


async def test_the_answer_speaker_counts_only_the_answer_as_heard() -> None:
    speaker = FakeSpeaker()
    await speaker.write(b"\x00\x00" * 10)  # something played before this answer
    cue = ThinkingCue(speaker, THINK, after_s=0, every_s=0, turn_id="t")
    answer = AnswerSpeaker(speaker, cue)
    cue.task = asyncio.create_task(cue.run())
    await cue.task
    assert speaker.written[-1] == THINK and answer.audio_samples_played == 10 + len(THINK) // 2
    await answer.write(SPEECH * 7)
    assert speaker.flushes == 1
    assert answer.audio_samples_played == 10 + 7  # the cue's samples left out
    await answer.write(SPEECH * 3)
    assert answer.audio_samples_played == 10 + 10 and speaker.flushes == 1


# -- configuration ---------------------------------------------------------------------------------


def test_the_cue_and_apology_keys_reach_the_conversation() -> None:
    s = settings_from_dict(
        {
            "reply": {"thinking_cue_after_s": 2.5, "thinking_cue_every_s": 0, "apology": "对不起。"},
            "earcons": {"thinking": "off"},
        },
        {},
    )
    cues = assistant_settings(s).cues
    assert (cues.thinking_cue_after_s, cues.thinking_cue_every_s, cues.apology) == (2.5, 0, "对不起。")
    assert s.earcons.thinking == "off"
    defaults = assistant_settings(settings_from_dict({}, {})).cues
    assert defaults.apology == DEFAULT_APOLOGY and defaults.apology_timeout_s == 2.0


def test_bad_cue_values_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(
            {
                "reply": {"thinking_cue_after_s": 0, "apology": "x" * 201, "apology_timeout_s": 30},
                "earcons": {"thinking": "/nope/hmm.wav"},
            },
            {},
        )
    assert caught.value.problems == [
        "reply.thinking_cue_after_s: must be positive, got 0.0",
        "reply.apology: must be a short sentence, at most 200 characters, got 201",
        "reply.apology_timeout_s: must be more than 0 and at most 10, got 30.0",
        "earcons.thinking: must be builtin, off, or an existing WAV file, got '/nope/hmm.wav'",
    ]


def test_the_builtin_thinking_sound_is_short_and_soft() -> None:
    from daemon.earcon import failure_earcon

    pcm = np.frombuffer(thinking_earcon(16000), dtype="<i2")
    assert 0.1 < len(pcm) / 16000 < 0.4
    assert np.abs(pcm).max() < np.abs(np.frombuffer(failure_earcon(16000), dtype="<i2")).max() / 3


# -- end to end, with the stand-ins ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_mute_asr_after_a_spoken_question_fails_the_run_and_the_robot_apologises(tmp_path: Path) -> None:
    """The issue's case: the VAD heard the question, the ASR server stayed silent. It was `no_speech`
    (exit 3, no turn_failed, nothing heard); it is an ASR failure the user hears about."""
    qwav, _ = question_wav(tmp_path, "what is the weather like today")
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, asr=FunAsrBehaviour(misbehave="mute"))
        code, _, logs = await run_once(settings_for(stubs, qwav, tmp_path / "reply.wav"))
        spoken = [r.text for r in stubs[2].requests]
    assert code == EXIT_FAILED
    (failed,) = [e for e in logs if e["event"] == "turn_failed"]
    assert failed["service"] == "asr" and "no transcript" in failed["reason"]
    assert spoken == [DEFAULT_APOLOGY]


async def test_the_answer_speaker_leaves_a_paused_speaker_alone() -> None:
    speaker = FakeSpeaker()
    cue = ThinkingCue(speaker, THINK, after_s=0, every_s=0, turn_id="t")
    answer = AnswerSpeaker(speaker, cue, may_flush=lambda: False)
    cue.task = asyncio.create_task(cue.run())
    await cue.task
    await answer.write(SPEECH * 7)
    assert speaker.flushes == 0 and speaker.written == [THINK, SPEECH * 7]
    assert answer.audio_samples_played == 7  # the cue's samples still left out


@pytest.mark.slow
async def test_a_slow_llm_gets_the_thinking_cue_in_the_output_then_the_answer(tmp_path: Path) -> None:
    """The daemon wired: 2.5 s to the first token, the cue after 0.5 s, then every 1 s."""
    qwav, question_end = question_wav(tmp_path, "what is the weather like today")
    out = tmp_path / "reply.wav"
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, llm=demo_llm_behaviour(answers=SHORT_ANSWERS, first_token_delay_s=2.5))
        settings = settings_for(stubs, qwav, out)
        settings = dataclasses.replace(
            settings, reply=dataclasses.replace(settings.reply, thinking_cue_after_s=0.5, thinking_cue_every_s=1.0)
        )
        code, _, logs = await run_once(settings)
    assert code == EXIT_ANSWERED
    cues = [e for e in logs if e["event"] == "thinking_cue"]
    assert 1 <= len(cues) <= 3  # at 0.5, 1.5 and perhaps 2.5 s: then the answer
    (finished,) = [e for e in logs if e["event"] == "turn_finished"]
    assert finished["reply"] == SHORT_ANSWERS["weather"]
    # the first sound after the question is the soft cue, long before the answer could come
    first = loud_span(out, after=question_end)
    assert first is not None and first[0] < question_end + 2.5
    samples, rate = wav_samples(out)
    cue = samples[int(first[0] * rate) : int((first[0] + 0.25) * rate)]
    assert np.abs(cue.astype(np.int32)).max() < 0.1 * 32768
