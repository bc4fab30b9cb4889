"""The conversation machine over fake ports: every path through the states, and the failure paths."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from daemon.errors import AsrError, HardwareError, LlmError, TtsError
from states.barge_in import BargeInSettings
from states.endpointer import EndpointerSettings
from states.history import Conversation
from states.machine import State
from states.mic_feed import MicFeed
from states.model import Assistant, AssistantSettings, Earcons, Turn
from states.speech_text import SpeechTextSettings
from tests.fakes import SPEECH, FakeAsr, FakeLlm, FakeMic, FakeMicWithEnd, FakeSpeaker, FakeTts, FakeVad
from tests.log_watch import watch_logs

TIMEOUT = 10
EARCON = b"\x01\x02" * 50
QUESTION_SCRIPT = [(0.3, False), (0.6, True), (0.5, False)]


def make(
    *,
    mic: FakeMic | MicFeed | None = None,
    asr: FakeAsr | None = None,
    llm: FakeLlm | None = None,
    tts: FakeTts | None = None,
) -> tuple[Assistant, FakeSpeaker, asyncio.Queue[Turn]]:
    ended: asyncio.Queue[Turn] = asyncio.Queue()
    speaker = FakeSpeaker()
    assistant = Assistant(
        mic=mic or FakeMic(QUESTION_SCRIPT),
        speaker=speaker,
        vad=FakeVad(),
        asr=asr or FakeAsr("what time is it"),
        llm=llm or FakeLlm(["It is ", "noon. ", "Time for ", "lunch!"]),
        tts=tts or FakeTts(),
        conversation=Conversation("be brief", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(
            endpointer=EndpointerSettings(
                speech_start_ms=60, end_silence_ms=200, pre_roll_ms=100, max_utterance_s=5, no_speech_timeout_s=1.0
            ),
            speech_text=SpeechTextSettings(),
        ),
        earcons=Earcons(error=lambda rate: EARCON),
        on_turn_end=ended.put_nowait,
    )
    return assistant, speaker, ended


async def wake(assistant: Assistant) -> None:
    """Fire ``wake`` and check it applied (with queued=True the trigger returns True either way)."""
    await assistant.wake()
    assert assistant.state is State.LISTENING


async def one_turn(assistant: Assistant, ended: asyncio.Queue[Turn]) -> Turn:
    await wake(assistant)
    turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    await asyncio.wait_for(assistant.settle(), TIMEOUT)  # the trigger that ended the turn returned
    return turn


def events(logs: Sequence[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_full_turn_goes_through_every_state_and_is_reported() -> None:
    assistant, speaker, ended = make()
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert assistant.state is State.IDLE
    assert [(e["src"], e["dst"]) for e in events(logs, "state_changed")] == [
        ("idle", "listening"),
        ("listening", "thinking"),
        ("thinking", "speaking"),
        ("speaking", "idle"),
    ]
    assert {e["turn_id"] for e in events(logs, "state_changed")} == {turn.id}
    (finished,) = events(logs, "turn_finished")
    assert finished["transcript"] == "what time is it"
    assert finished["reply"] == turn.reply and "noon" in turn.reply and "lunch" in turn.reply
    assert finished["interrupted"] is False and finished["outcome"] == "answered"
    for key in ("asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "first_audio_ms"):
        assert isinstance(finished[key], int) and finished[key] >= 0, key
    assert speaker.audio == SPEECH * sum(len(t) for t in assistant.tts.texts)  # type: ignore[attr-defined]


async def test_the_llm_and_tts_connections_are_warmed_up_once_the_user_has_spoken() -> None:
    llm, tts = FakeLlm(["Noon."]), FakeTts()
    assistant, _, ended = make(llm=llm, tts=tts)
    await wake(assistant)
    assert (llm.warm_ups, tts.warm_ups) == (0, 0)  # woken, but nobody has spoken yet
    await asyncio.wait_for(ended.get(), TIMEOUT)
    await asyncio.wait_for(assistant.settle(), TIMEOUT)
    assert (llm.warm_ups, tts.warm_ups) == (1, 1)


async def test_nobody_speaking_warms_nothing_up() -> None:
    llm, tts = FakeLlm(), FakeTts()
    assistant, _, ended = make(mic=FakeMic([(2.0, False)]), llm=llm, tts=tts)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "no_speech" and (llm.warm_ups, tts.warm_ups) == (0, 0)


async def test_the_asr_gets_the_speech_with_its_pre_roll_and_nothing_long_before() -> None:
    asr = FakeAsr("hello")
    assistant, _, ended = make(asr=asr)
    await one_turn(assistant, ended)
    (session,) = asr.sessions
    assert session.finished and session.closed
    audio = bytes(session.audio)
    speech = audio.count(SPEECH)
    assert speech == 16000 * 6 // 10  # all 0.6 s of speech arrived
    leading_silence = (len(audio) - len(audio.lstrip(b"\x00"))) // 2
    assert 16000 * 0.1 * 0.9 <= leading_silence <= 16000 * 0.1 * 1.1  # the 100 ms pre-roll, not 300 ms


async def test_history_carries_what_was_spoken_into_the_next_turn() -> None:
    llm = FakeLlm(["Hello there, friend."], ["Second answer here."])
    assistant, _, ended = make(mic=FakeMic(QUESTION_SCRIPT), asr=FakeAsr("hi", "and then"), llm=llm)
    first = await one_turn(assistant, ended)
    assistant.mic = FakeMic(QUESTION_SCRIPT)
    await one_turn(assistant, ended)
    contents = [(m.role, m.content) for m in llm.requests[1]]
    assert contents == [("system", "be brief"), ("user", "hi"), ("assistant", first.reply), ("user", "and then")]


async def test_nobody_speaking_returns_to_idle() -> None:
    assistant, speaker, ended = make(mic=FakeMic([(5.0, False)]))
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "no_speech" and assistant.state is State.IDLE
    assert events(logs, "turn_finished")[0]["outcome"] == "no_speech"
    assert speaker.audio == b""


async def test_an_empty_transcript_is_no_speech() -> None:
    assistant, _, ended = make(asr=FakeAsr("  "))
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "no_speech"


@pytest.mark.parametrize(
    ("service", "setup"),
    [
        ("asr", lambda: {"asr": FakeAsr(AsrError("FunASR closed the connection before the final result"))}),
        ("llm", lambda: {"llm": FakeLlm([], error=LlmError("The model `moss` does not exist.", status=404))}),
        ("tts", lambda: {"tts": FakeTts(fail_on=["*"], error=TtsError("no audio for 'It is noon.'"))}),
    ],
)
async def test_a_failing_service_ends_the_turn_with_an_earcon_and_the_next_turn_works(service, setup) -> None:
    assistant, speaker, ended = make(**setup())
    with capture_logs() as logs:
        turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and assistant.state is State.IDLE
    (failed,) = events(logs, "turn_failed")
    assert failed["service"] == service and failed["reason"]
    assert speaker.written[-1] == EARCON
    # the next turn works once the service is back
    assistant.mic, assistant.asr = FakeMic(QUESTION_SCRIPT), FakeAsr("again")
    assistant.llm, assistant.tts = FakeLlm(["Fine, thanks."]), FakeTts()
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "answered" and turn.reply == "Fine, thanks."


async def test_an_asr_that_cannot_connect_fails_the_turn_when_speech_starts() -> None:
    asr = FakeAsr()
    asr.connect_error = AsrError("cannot connect to ws://127.0.0.1:1: connection refused")
    assistant, _, ended = make(asr=asr)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and turn.failed_service == "asr" and "refused" in (turn.failure or "")


async def test_an_llm_error_mid_stream_keeps_and_speaks_the_partial_answer() -> None:
    llm = FakeLlm(["The first part. ", "And then"], error=LlmError("boom"))
    assistant, speaker, ended = make(llm=llm)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "failed" and turn.failed_service == "llm"
    assert assistant.tts.texts[0] == "The first part."  # type: ignore[attr-defined]
    assert speaker.written[-1] == EARCON
    # what the user heard is the reply, in the report and in the history
    assert turn.reply == "The first part. And then"
    assert assistant.conversation.messages_for("next", 0.0)[-2].content == "The first part. And then…"


async def test_one_bad_sentence_is_skipped_not_fatal() -> None:
    tts = FakeTts(fail_on=["The second sentence is here."])
    llm = FakeLlm(["The first sentence is here. The second sentence is here. The third sentence is here."])
    assistant, _, ended = make(llm=llm, tts=tts)
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "answered"
    assert tts.texts == ["The first sentence is here.", "The second sentence is here.", "The third sentence is here."]
    assert turn.reply == "The first sentence is here. The third sentence is here."


async def test_barge_in_cancels_the_reply_flushes_and_listens_again() -> None:
    llm = FakeLlm(["Let me tell you a long story. "])
    llm.gate = asyncio.Event()  # the LLM keeps the stream open: the robot is mid-answer
    assistant, speaker, ended = make(llm=llm)
    with watch_logs() as logs:
        await wake(assistant)
        await asyncio.wait_for(logs.wait_for("state_changed", dst="speaking"), TIMEOUT)
    assert assistant.state is State.SPEAKING
    assistant.mic = FakeMic([(5.0, False)])
    with capture_logs() as logs:
        await assistant.barge_in()  # a button: no speech heard, so the answer is cancelled, never held
        assert assistant.state is State.LISTENING
        first = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert first.outcome == "interrupted" and first.interrupted
    assert speaker.flushes >= 1
    assert [(e["src"], e["dst"], e["trigger"]) for e in events(logs, "state_changed")] == [
        ("speaking", "listening", "barge_in")]  # fmt: skip
    assert events(logs, "turn_finished")[0]["interrupted"] is True
    second = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert second.outcome == "no_speech" and second.id != first.id


async def test_stop_ends_an_active_turn() -> None:
    assistant, _, ended = make(mic=FakeMic([(60.0, False)], delay_s=0.01))
    await wake(assistant)
    await assistant.aclose()
    turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert turn.outcome == "stopped" and assistant.state is State.IDLE


async def test_a_huge_reply_is_capped_and_the_llm_stream_closed() -> None:
    long_answer = [f"This is sentence number {i} of a very long answer. " for i in range(500)]
    llm = FakeLlm(long_answer)
    assistant, _, ended = make(llm=llm)
    assistant.settings = AssistantSettings(
        endpointer=assistant.settings.endpointer,
        speech_text=SpeechTextSettings(max_clause_chars=120, max_reply_chars=300),
    )
    turn = await one_turn(assistant, ended)
    assert turn.outcome == "answered" and turn.truncated
    assert 150 < len(turn.reply) <= 300
    assert llm.streams[0].closed_early  # we stopped reading: the server stops generating


async def test_the_user_cutting_in_stops_the_answer_and_becomes_the_next_question() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "], ["Tomorrow it rains."])
    llm.gate = asyncio.Event()  # the first answer never ends by itself
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (0.4, True), (0.6, False)])
    asr = FakeAsr("tell me a story", "what about tomorrow")
    assistant, speaker, ended = make(mic=mic, asr=asr, llm=llm)
    with capture_logs() as logs:
        await wake(assistant)
        first = await asyncio.wait_for(ended.get(), TIMEOUT)
        llm.gate.set()
        second = await asyncio.wait_for(ended.get(), TIMEOUT)
        await asyncio.wait_for(assistant.settle(), TIMEOUT)
    assert first.outcome == "interrupted" and first.interrupted
    assert first.reply == "Let me tell you a long story about robots."  # what was heard
    assert speaker.flushes == 1
    assert [(e["dst"], e["trigger"]) for e in events(logs, "state_changed")][:5] == [
        ("listening", "wake"),
        ("thinking", "heard"),
        ("speaking", "start_speaking"),
        ("listening_held", "barge_in"),  # pause mode, the default: held until the words prove it real
        ("thinking", "heard"),
    ]
    assert first.cancel_reason == "interruption_real"
    assert len(events(logs, "barge_in_detected")) == 1
    # nothing the user said was lost: all 0.4 s of the interruption reached the ASR, with pre-roll
    interruption_audio = bytes(asr.sessions[1].audio)
    assert interruption_audio.count(SPEECH) == 16000 * 4 // 10
    assert interruption_audio.startswith(b"\x00\x00")
    assert second.outcome == "answered" and second.transcript == "what about tomorrow"
    # the interrupted answer is in the history as it was heard, marked as cut off
    assert [(m.role, m.content) for m in llm.requests[1]][1:3] == [
        ("user", "tell me a story"), ("assistant", "Let me tell you a long story about robots.…")]  # fmt: skip


async def test_a_stop_word_ends_the_answer_without_a_new_question() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "])
    llm.gate = asyncio.Event()
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (0.4, True), (0.6, False)])
    assistant, _, ended = make(mic=mic, asr=FakeAsr("tell me a story", "停！"), llm=llm)
    await wake(assistant)
    first = await asyncio.wait_for(ended.get(), TIMEOUT)
    second = await asyncio.wait_for(ended.get(), TIMEOUT)
    await asyncio.wait_for(assistant.settle(), TIMEOUT)
    assert first.outcome == "interrupted"
    assert second.outcome == "stop_word" and assistant.state is State.IDLE
    assert len(llm.requests) == 1  # no new question was asked


async def test_half_duplex_ignores_the_microphone_while_speaking() -> None:
    llm = FakeLlm(["A short answer for you. "])
    llm.gate = asyncio.Event()  # the robot is still speaking when the user talks
    mic = FakeMicWithEnd([*QUESTION_SCRIPT, (0.2, False), (0.4, True), (0.6, False)])
    assistant, _, ended = make(mic=mic, llm=llm)
    assistant.settings = AssistantSettings(
        endpointer=assistant.settings.endpointer, barge_in=BargeInSettings(enabled=False)
    )
    with capture_logs() as logs:
        await wake(assistant)
        await asyncio.wait_for(mic.over.wait(), TIMEOUT)  # the user has spoken over the answer
        assert assistant.state is State.SPEAKING
        llm.gate.set()
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert turn.outcome == "answered" and not turn.interrupted
    assert events(logs, "barge_in_detected") == []


def with_barge_in(assistant: Assistant, **settings: object) -> None:
    assistant.settings = AssistantSettings(
        endpointer=assistant.settings.endpointer,
        barge_in=BargeInSettings(**settings),  # type: ignore[arg-type]
    )


async def test_pause_mode_resumes_the_answer_after_a_false_interruption() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "])
    llm.gate = asyncio.Event()
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (0.3, True), (0.6, False)])
    assistant, speaker, ended = make(mic=mic, asr=FakeAsr("tell me a story", "嗯。"), llm=llm)
    with_barge_in(assistant, mode="pause")
    with watch_logs() as logs:
        await wake(assistant)
        await asyncio.wait_for(logs.wait_for("barge_in_resumed"), TIMEOUT)
        assert assistant.state is State.SPEAKING
        llm.gate.set()  # the rest of the answer comes
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
        await asyncio.wait_for(assistant.settle(), TIMEOUT)
    assert turn.outcome == "answered" and not turn.interrupted
    assert turn.reply == "Let me tell you a long story about robots."
    assert speaker.pauses >= 1 and (speaker.resumes, speaker.flushes) == (1, 0)
    assert [(e["src"], e["dst"], e["trigger"]) for e in events(logs, "state_changed")] == [
        ("idle", "listening", "wake"),
        ("listening", "thinking", "heard"),
        ("thinking", "speaking", "start_speaking"),
        ("speaking", "listening_held", "barge_in"),  # the answer held while the cough is judged
        ("listening_held", "speaking", "resume"),
        ("speaking", "idle", "done"),
    ]
    assert len(events(logs, "turn_finished")) == 1  # the cough was not a turn


async def test_pause_mode_cancels_when_the_interruption_goes_on_past_the_deadline() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "], ["Sure."])
    llm.gate = asyncio.Event()
    # at 10x real time, 3 s of speech outlasts a 100 ms resume deadline
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (3.0, True), (0.6, False)])
    assistant, speaker, ended = make(mic=mic, asr=FakeAsr("tell me a story", "no wait tell me a joke"), llm=llm)
    with_barge_in(assistant, mode="pause", resume_after_ms=100)
    with capture_logs() as logs:
        await wake(assistant)
        first = await asyncio.wait_for(ended.get(), TIMEOUT)
        # the held answer was dropped by the deadline, before the ASR had the words
        assert not assistant.asr.sessions[1].finished  # type: ignore[attr-defined]
        llm.gate.set()
        second = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert first.outcome == "interrupted" and first.reply == "Let me tell you a long story about robots."
    assert speaker.pauses >= 1 and speaker.flushes >= 1
    assert second.transcript == "no wait tell me a joke" and second.outcome == "answered"
    assert llm.streams[0].closed_early
    assert events(logs, "barge_in_resumed") == []
    assert [(e["src"], e["dst"], e["trigger"]) for e in events(logs, "state_changed")][3:6] == [
        ("speaking", "listening_held", "barge_in"),
        ("listening_held", "listening", "resume_deadline"),  # the answer dropped, the listening goes on
        ("listening", "thinking", "heard"),
    ]
    assert first.cancel_reason == "resume_deadline"


async def test_a_filler_heard_after_the_deadline_is_a_question_not_a_resume() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "], ["Yes?"])
    llm.gate = asyncio.Event()
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (3.0, True), (0.6, False)])
    assistant, _, ended = make(mic=mic, asr=FakeAsr("tell me a story", "嗯"), llm=llm)
    with_barge_in(assistant, mode="pause", resume_after_ms=100)
    with capture_logs() as logs:
        await wake(assistant)
        first = await asyncio.wait_for(ended.get(), TIMEOUT)
        llm.gate.set()
        second = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert first.outcome == "interrupted" and first.cancel_reason == "resume_deadline"
    assert second.transcript == "嗯" and second.outcome == "answered"  # nothing was held any more
    assert events(logs, "barge_in_false") == [] and events(logs, "barge_in_resumed") == []


async def test_cancel_mode_flushes_at_once_and_closes_the_llm_stream() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "], ["Sure."])
    llm.gate = asyncio.Event()
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (0.3, True), (0.6, False)])
    assistant, speaker, ended = make(mic=mic, asr=FakeAsr("tell me a story", "嗯"), llm=llm)
    with_barge_in(assistant, mode="cancel")
    await wake(assistant)
    first = await asyncio.wait_for(ended.get(), TIMEOUT)
    llm.gate.set()
    second = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert first.outcome == "interrupted" and speaker.flushes == 1  # paused when suspected, then dropped
    assert llm.streams[0].closed_early
    assert second.outcome == "answered" and second.transcript == "嗯"  # cancel mode does not judge


async def test_a_blip_shorter_than_an_interruption_only_ducks_the_answer() -> None:
    llm = FakeLlm(["Let me tell you a long story about robots. "])
    llm.gate = asyncio.Event()
    mic = FakeMic([*QUESTION_SCRIPT, (1.0, False), (0.06, True), (0.6, False)])
    assistant, speaker, ended = make(mic=mic, llm=llm)
    with watch_logs() as logs:
        await wake(assistant)
        await asyncio.wait_for(logs.wait_for("barge_in_dismissed"), TIMEOUT)
        llm.gate.set()
        turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    assert turn.outcome == "answered" and not turn.interrupted
    assert speaker.pauses == speaker.resumes == 1 and speaker.flushes == 0
    assert events(logs, "barge_in_detected") == []


class DyingMic(FakeMic):
    """A USB microphone pulled out after a few blocks."""

    def __init__(self, blocks: int) -> None:
        super().__init__([(5.0, False)])
        self._left = blocks

    async def read(self) -> bytes:
        self._left -= 1
        if self._left < 0:
            raise HardwareError("microphone 'pyaudio:USB': the stream stopped (device gone?)")
        return await super().read()


async def test_a_lost_microphone_fails_the_turn_is_reopened_and_the_next_turn_works() -> None:
    reopened: list[FakeMic] = []

    async def reopen() -> FakeMic:
        mic = FakeMic([(0.5, False), (0.6, True), (0.5, False)])  # the user speaks once woken again
        reopened.append(mic)
        return mic

    feed = MicFeed(DyingMic(blocks=5), reopen=reopen, reopen_every_s=0.05)
    asr = FakeAsr("(the lost turn)", "are you there")
    assistant, _, ended = make(mic=feed, asr=asr, llm=FakeLlm(["Yes, I am here."]))
    with watch_logs() as logs:
        first = await one_turn(assistant, ended)
        await asyncio.wait_for(logs.wait_for("mic_recovered"), TIMEOUT)
        assert reopened
        second = await one_turn(assistant, ended)
    assert first.outcome == "failed" and first.failed_service == "audio"
    assert "device gone" in (first.failure or "")
    assert [e["event"] for e in logs if e["event"] in ("mic_failed", "mic_recovered")] == [
        "mic_failed",
        "mic_recovered",
    ]
    assert second.outcome == "answered" and second.reply == "Yes, I am here."
    await assistant.aclose()
