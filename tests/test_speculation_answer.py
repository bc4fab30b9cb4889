"""Speculative turn end, the answering side: an answer prepared on the user's pause is held
unplayed, dropped when they speak again, played at once when the utterance ends as guessed.

The listening task is a scripted stand-in (``ScriptedListening``): the test tells it when the
user pauses, speaks again and stops, and it calls the Assistant's Speculation port as
``listen_for_utterance`` does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.config import LlmSettings
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from states.barge_in import BargeInSettings, Interruption
from states.cues import CueSettings
from states.endpointer import EndpointerSettings
from states.events import Transcript
from states.history import Conversation
from states.listen import Speculation
from states.machine import State
from states.model import Assistant, AssistantSettings, Earcons, Turn
from states.speculation import HeldSpeaker
from states.speech_text import SpeechTextSettings
from states.turn import report_fields
from tests.fakes import SPEECH, FakeAsr, FakeLlm, FakeMic, FakeSpeaker, FakeTts, FakeVad
from tests.log_watch import LogWatch, watch_logs

TIMEOUT = 10
LISTENING = EndpointerSettings(
    speech_start_ms=60,
    end_silence_ms=300,
    speculate_after_ms=100,
    pre_roll_ms=100,
    max_utterance_s=5,
    no_speech_timeout_s=1.0,
)


class ScriptedListening:
    """Stands in for ``listen_for_utterance``: each call is one utterance, played from the steps
    the test queues (``pause``, ``resume``, ``end``)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._steps: asyncio.Queue[tuple[str, Transcript | None]] = asyncio.Queue()

    def pause(self, transcript: Transcript) -> None:
        self._steps.put_nowait(("pause", transcript))

    def resume(self) -> None:
        self._steps.put_nowait(("resume", None))

    def end(self, transcript: Transcript | None) -> None:
        """The utterance is over with ``transcript`` (None: nobody spoke)."""
        self._steps.put_nowait(("end", transcript))

    async def __call__(self, **kwargs: Any) -> Transcript | None:
        self.calls.append(kwargs)
        speculation: Speculation | None = kwargs.get("speculation")
        while True:
            step, transcript = await self._steps.get()
            if step == "pause":
                assert speculation is not None and transcript is not None
                speculation.paused(transcript)
            elif step == "resume":
                assert speculation is not None
                speculation.resumed()
            else:
                kwargs["times"].speech_end = kwargs["clock"]()
                return transcript


class RecordedEvents:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, object]]] = []

    def emit(self, event: str, /, **fields: object) -> None:
        self.emitted.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.emitted]


class Rig:
    def __init__(
        self,
        llm: FakeLlm | OpenAiCompatibleLlm,
        *,
        endpointer: EndpointerSettings = LISTENING,
        barge_in: BargeInSettings | None = None,
        thinking_cue: bytes | None = None,
    ) -> None:
        self.listening = ScriptedListening()
        self.llm, self.tts, self.speaker = llm, FakeTts(), FakeSpeaker()
        self.events = RecordedEvents()
        self.ended: asyncio.Queue[Turn] = asyncio.Queue()
        self.conversation = Conversation("be brief", max_turns=3, reset_after_s=60)
        self.assistant = Assistant(
            mic=FakeMic([(600.0, False)], delay_s=0.01),
            speaker=self.speaker,
            vad=FakeVad(),
            asr=FakeAsr(),
            llm=llm,
            tts=self.tts,
            conversation=self.conversation,
            settings=AssistantSettings(
                endpointer=endpointer,
                speech_text=SpeechTextSettings(),
                barge_in=barge_in or BargeInSettings(),
                cues=CueSettings(thinking_cue_after_s=0.01, thinking_cue_every_s=0, apology=""),
            ),
            earcons=Earcons(thinking=None if thinking_cue is None else lambda rate: thinking_cue),
            events=self.events,
            on_turn_end=self.ended.put_nowait,
            listen=self.listening,
        )

    async def wake(self) -> None:
        await self.assistant.wake()
        assert self.assistant.state is State.LISTENING

    async def turn_end(self) -> Turn:
        return await asyncio.wait_for(self.ended.get(), TIMEOUT)

    def history(self) -> list[tuple[str, str]]:
        """The exchanges the next question would carry."""
        messages = self.conversation.messages_for("next", 0.0)
        return [(m.role, m.content) for m in messages[1:-1]]

    async def close(self) -> None:
        await asyncio.wait_for(self.assistant.aclose(), TIMEOUT)


def entries(logs: LogWatch, name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def until(logs: LogWatch, event: str, **fields: Any) -> dict[str, Any]:
    return await asyncio.wait_for(logs.wait_for(event, **fields), TIMEOUT)


def audio_of(*clauses: str) -> bytes:
    """What FakeTts makes of these clauses."""
    return SPEECH * sum(len(clause) for clause in clauses)


async def test_a_committed_speculation_plays_its_held_audio_at_once_and_nothing_before() -> None:
    rig = Rig(FakeLlm(["It is ", "noon. ", "Time for lunch!"]))
    question = Transcript("what time is it")
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(question)
        started = await until(logs, "speculation_started")
        await until(logs, "speculation_ready")  # the whole answer is synthesised, and held
        assert rig.speaker.written == [] and rig.assistant.state is State.LISTENING
        assert "reply_clause" not in rig.events.names() and rig.history() == []
        assert rig.assistant.turn is not None and rig.assistant.turn.reply == ""
        rig.listening.end(question)
        turn = await rig.turn_end()
    assert started == {"event": "speculation_started", "turn_id": turn.id, "n": 1, "text": "what time is it",
                       "log_level": "info"}  # fmt: skip
    assert turn.outcome == "answered" and turn.reply == "It is noon. Time for lunch!"
    assert rig.speaker.audio == audio_of("It is noon.", "Time for lunch!")
    (played,) = entries(logs, "speculation_played")
    assert played["n"] == 1 and played["ready_ms"] == round(len(rig.speaker.audio) / 2 / 16000 * 1000)
    assert len(rig.llm.requests) == 1 and entries(logs, "speculation_dropped") == []
    assert [(e["src"], e["dst"]) for e in entries(logs, "state_changed")] == [
        ("idle", "listening"), ("listening", "thinking"), ("thinking", "speaking"), ("speaking", "idle")]  # fmt: skip
    assert [fields["text"] for name, fields in rig.events.emitted if name == "reply_clause"] == [
        "It is noon.", "Time for lunch!"]  # fmt: skip
    # as for any answer: the robot is thinking before it says anything (the events tell a story)
    story = [
        (name, fields.get("dst")) for name, fields in rig.events.emitted if name in ("state_changed", "reply_clause")
    ]
    assert story.index(("state_changed", "thinking")) < story.index(("reply_clause", None))
    assert turn.speculations == 1 and turn.speculation_played_first is True
    (finished,) = entries(logs, "turn_finished")
    assert finished["speculations"] == 1 and finished["speculation_played_first"] is True
    assert isinstance(finished["first_audio_ms"], int) and finished["first_audio_ms"] >= 0
    assert isinstance(finished["llm_first_token_ms"], int)
    assert rig.history() == [("user", "what time is it"), ("assistant", "It is noon. Time for lunch!")]
    await rig.close()


async def test_speaking_again_drops_the_speculation_and_only_the_played_answer_counts() -> None:
    llm = FakeLlm(["A first guess. "], ["It is noon."])
    llm.gate = asyncio.Event()  # the first answer is still streaming when the user goes on
    rig = Rig(llm)
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(Transcript("what is"))
        await until(logs, "speculation_started", n=1)
        await asyncio.wait_for(llm.at_gate.wait(), TIMEOUT)  # the answer is in flight
        llm.gate = None  # the next answer streams to its end
        rig.listening.resume()
        dropped = await until(logs, "speculation_dropped")
        assert llm.streams[0].closed and llm.streams[0].closed_early  # vLLM stops generating
        assert rig.speaker.written == []
        question = Transcript("what is the time")
        rig.listening.pause(question)
        await until(logs, "speculation_ready", n=2)
        rig.listening.end(question)
        turn = await rig.turn_end()
    assert dropped == {"event": "speculation_dropped", "turn_id": turn.id, "n": 1, "reason": "resumed",
                       "log_level": "info"}  # fmt: skip
    assert [m.content for m in llm.requests[1]] == ["be brief", "what is the time"]
    assert turn.outcome == "answered" and turn.reply == "It is noon." and turn.transcript == "what is the time"
    assert rig.speaker.audio == audio_of("It is noon.")
    assert rig.history() == [("user", "what is the time"), ("assistant", "It is noon.")]
    (finished,) = entries(logs, "turn_finished")
    assert finished["speculations"] == 2 and finished["speculation_played_first"] is False
    last = rig.assistant.last_turn
    assert last is not None and report_fields(last)["speculations"] == 2  # GET /status's last_turn
    assert "A first guess." not in [fields.get("text") for _, fields in rig.events.emitted]
    await rig.close()


async def test_a_dropped_speculation_hangs_up_on_the_llm_server() -> None:
    behaviour = OpenAiBehaviour(
        default_answer="从前有座山，山里有座庙。" * 20, first_token_delay_s=0.01, tokens_per_s=20
    )
    async with OpenAiStub(behaviour=behaviour) as stub, httpx.AsyncClient(trust_env=False) as http:
        settings = LlmSettings(url=stub.url, connect_timeout_s=2.0, first_token_timeout_s=5.0, read_timeout_s=5.0)
        rig = Rig(OpenAiCompatibleLlm(settings, http))
        with watch_logs() as logs:
            await rig.wake()
            rig.listening.pause(Transcript("讲个故事"))
            await until(logs, "llm_first_token")  # vLLM is generating
            rig.listening.resume()
            await until(logs, "speculation_dropped", reason="resumed")
            assert await stub.wait_for_disconnects(1, timeout=TIMEOUT), "the server never saw the client go away"
            assert stub.streams_completed == 0 and rig.speaker.written == []
            rig.listening.end(None)
            turn = await rig.turn_end()
        assert turn.outcome == "no_speech" and turn.speculations == 1 and turn.reply == ""
        await rig.close()


async def test_a_final_transcript_that_differs_drops_the_speculation_and_answers_it_afresh() -> None:
    rig = Rig(FakeLlm(["Guessed wrong. "], ["It is sunny."]))
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(Transcript("what is"))
        await until(logs, "speculation_ready")
        rig.listening.end(Transcript("what is the weather"))
        turn = await rig.turn_end()
    (dropped,) = entries(logs, "speculation_dropped")
    assert dropped["reason"] == "mismatch" and entries(logs, "speculation_played") == []
    assert [m.content for m in rig.llm.requests[1]] == ["be brief", "what is the weather"]
    assert turn.reply == "It is sunny." and rig.speaker.audio == audio_of("It is sunny.")
    assert turn.speculations == 1 and turn.speculation_played_first is None
    assert rig.history() == [("user", "what is the weather"), ("assistant", "It is sunny.")]
    await rig.close()


async def test_the_same_words_after_a_pause_keep_the_answer_being_prepared() -> None:
    rig = Rig(FakeLlm(["It is noon."]))
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(Transcript("what time is it"))
        await until(logs, "speculation_ready")
        rig.listening.end(Transcript(" what time is it"))  # a new final, the same words
        turn = await rig.turn_end()
    assert turn.speculation_played_first is True and len(rig.llm.requests) == 1
    assert rig.speaker.audio == audio_of("It is noon.")
    await rig.close()


async def test_a_speculation_that_failed_is_never_played_and_the_commit_asks_again() -> None:
    two_sentences = ["The first sentence is long enough to speak. ", "And so is the second one here. "]
    rig = Rig(FakeLlm(two_sentences, ["Noon, sharp."]))
    rig.tts.fail_on = {"*"}  # the TTS fails twice in a row: the answer is abandoned
    question = Transcript("what time is it")
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(question)
        await until(logs, "speculation_failed")
        assert rig.assistant.state is State.LISTENING  # the user may not even be done
        rig.tts.fail_on = set()
        rig.listening.end(question)
        turn = await rig.turn_end()
    assert entries(logs, "speculation_dropped")[0]["reason"] == "failed"
    assert entries(logs, "turn_failed") == [] and len(rig.llm.requests) == 2
    assert turn.outcome == "answered" and turn.reply == "Noon, sharp."
    assert turn.speculation_played_first is None and rig.speaker.audio == audio_of("Noon, sharp.")
    await rig.close()


async def test_the_thinking_cue_waits_for_the_commit_of_a_slow_speculation() -> None:
    llm = FakeLlm([])
    llm.gate = asyncio.Event()  # the LLM has not said a word yet
    cue = b"\x03\x00" * 80
    rig = Rig(llm, thinking_cue=cue)
    question = Transcript("what time is it")
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(question)
        await asyncio.wait_for(llm.at_gate.wait(), TIMEOUT)
        rig.listening.end(question)
        await until(logs, "thinking_cue")
        assert rig.speaker.written == [cue]  # the cue of an answer still thinking, played at the commit
        llm.gate.set()
        turn = await rig.turn_end()
    assert [e["event"] for e in logs if e["event"] in ("speculation_played", "thinking_cue")] == [
        "speculation_played", "thinking_cue"]  # fmt: skip
    assert turn.outcome == "answered" and turn.speculation_played_first is True
    await rig.close()


async def test_get_listen_turns_never_speculate() -> None:
    rig = Rig(FakeLlm())
    waiter = await rig.assistant.request("wake", interrupt=False, listen_only=True)
    rig.listening.end(Transcript("what time is it"))
    turn = await asyncio.wait_for(waiter, TIMEOUT)
    assert turn.outcome == "listened" and "speculation" not in rig.listening.calls[0]
    assert turn.speculations == 0 and rig.llm.requests == []
    await rig.close()


async def test_with_speculation_off_the_listening_task_gets_no_speculation_port() -> None:
    rig = Rig(FakeLlm(["It is noon."]), endpointer=EndpointerSettings(speculate_after_ms=None))
    await rig.wake()
    rig.listening.end(Transcript("what time is it"))
    turn = await rig.turn_end()
    assert turn.outcome == "answered" and "speculation" not in rig.listening.calls[0]
    assert turn.speculations == 0 and turn.speculation_played_first is None
    await rig.close()


async def test_a_stop_word_pause_is_not_answered() -> None:
    rig = Rig(FakeLlm(["Never said."]))
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(Transcript("停！"))
        rig.listening.end(Transcript("停！"))
        turn = await rig.turn_end()
        await rig.close()  # every signal the listening task sent has been handled
    assert turn.outcome == "stop_word" and entries(logs, "speculation_started") == []
    assert rig.llm.requests == [] and turn.speculations == 0


async def test_stop_during_a_speculation_leaves_nothing() -> None:
    llm = FakeLlm(["It is noon. "])
    llm.gate = asyncio.Event()
    rig = Rig(llm)
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(Transcript("what time is it"))
        await asyncio.wait_for(llm.at_gate.wait(), TIMEOUT)  # the answer is in flight
        await rig.assistant.cancel_everything()
        turn = await rig.turn_end()
    assert turn.outcome == "stopped" and rig.assistant.state is State.IDLE
    assert entries(logs, "speculation_dropped")[0]["reason"] == "stop"
    assert llm.streams[0].closed and rig.speaker.written == []
    assert turn.reply == "" and turn.transcript == "" and rig.history() == []
    assert turn.speculations == 1 and turn.speculation_played_first is None
    assert "reply_clause" not in rig.events.names() and turn.cancel_reason is None
    await rig.close()


async def test_a_button_barge_in_cuts_a_played_speculation_as_any_answer() -> None:
    llm = FakeLlm(["Let me tell you a long story. "])
    llm.gate = asyncio.Event()  # the answer goes on and on
    rig = Rig(llm)
    question = Transcript("tell me a story")
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(question)
        await asyncio.wait_for(llm.at_gate.wait(), TIMEOUT)  # the answer is in flight
        rig.listening.end(question)
        await until(logs, "state_changed", dst="speaking")
        await rig.assistant.barge_in()  # the button: cancel, never held
        first = await rig.turn_end()
        rig.listening.end(None)
        second = await rig.turn_end()
    assert first.outcome == "interrupted" and first.speculation_played_first is True
    assert first.reply == "Let me tell you a long story." and llm.streams[0].closed
    assert rig.history() == [("user", "tell me a story"), ("assistant", "Let me tell you a long story.…")]
    assert second.outcome == "no_speech" and second.speculations == 0
    await rig.close()


async def test_pause_mode_holds_a_played_speculation_and_resumes_it_after_a_false_interruption() -> None:
    llm = FakeLlm(["Let me tell you a long story. ", "It begins "])
    llm.gate = asyncio.Event()
    rig = Rig(llm, barge_in=BargeInSettings(mode="pause"))
    question = Transcript("tell me a story")
    with watch_logs() as logs:
        await rig.wake()
        rig.listening.pause(question)
        await asyncio.wait_for(llm.at_gate.wait(), TIMEOUT)  # the answer is in flight
        rig.listening.end(question)
        await until(logs, "state_changed", dst="speaking")
        now = asyncio.get_running_loop().time()
        await rig.assistant.barge_in(interruption=Interruption(audio=b"", onset=now, detected=now))
        assert rig.assistant.state is State.LISTENING_HELD
        rig.listening.end(Transcript("嗯"))  # a filler: the held answer plays on
        await until(logs, "barge_in_resumed")
        llm.gate.set()
        turn = await rig.turn_end()
    assert turn.outcome == "answered" and turn.reply == "Let me tell you a long story. It begins"
    assert rig.speaker.audio == audio_of("Let me tell you a long story.", "It begins")
    assert turn.speculation_played_first is True
    await rig.close()


def test_a_held_speaker_counts_nothing_played_until_it_is_opened() -> None:
    speaker = HeldSpeaker(16000)
    assert speaker.audio_samples_played == 0 and not speaker.is_open


async def test_a_held_speaker_plays_what_it_held_first_then_the_rest() -> None:
    target = FakeSpeaker()
    target.audio_samples_played = 500  # what the speaker played before this answer
    said: list[str] = []
    speaker = HeldSpeaker(16000)
    on_clause = speaker.when_open(said.append)
    on_clause("one")
    await speaker.write(b"\x01\x00" * 10)
    assert said == [] and speaker.held_ms == 1 and target.written == []
    speaker.open(target)
    assert said == ["one"]
    await speaker.write(b"\x02\x00" * 10)  # a later write never overtakes what was held
    assert target.written == [b"\x01\x00" * 10, b"\x02\x00" * 10]
    assert speaker.audio_samples_played == 20 and speaker.held_ms == 0
    await speaker.play_held()  # nothing left to play
    assert len(target.written) == 2


class SlowSpeaker(FakeSpeaker):
    """Every write waits for the test to let it through (a sound card with a full queue)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.go_on = asyncio.Event()

    async def write(self, pcm: bytes) -> None:
        self.writing.set()
        await self.go_on.wait()
        await super().write(pcm)


async def test_a_held_speaker_cut_while_playing_what_it_held_plays_the_rest_next_time() -> None:
    target = SlowSpeaker()
    speaker = HeldSpeaker(16000)
    for part in (b"\x01\x00", b"\x02\x00"):
        await speaker.write(part)
    speaker.open(target)
    playing = asyncio.create_task(speaker.play_held())
    await asyncio.wait_for(target.writing.wait(), TIMEOUT)
    playing.cancel()  # a barge-in in pause mode cancels the state's tasks
    await asyncio.wait({playing})
    assert speaker.holds_audio and target.written == []
    target.go_on.set()
    await asyncio.wait_for(speaker.play_held(), TIMEOUT)  # the resumed answer plays on
    assert target.written == [b"\x01\x00", b"\x02\x00"] and not speaker.holds_audio


async def test_the_real_listening_task_speculates_on_a_pause() -> None:
    ended: asyncio.Queue[Turn] = asyncio.Queue()
    assistant = Assistant(
        mic=FakeMic([(0.3, False), (0.6, True), (0.8, False)]),
        speaker=FakeSpeaker(),
        vad=FakeVad(),
        asr=FakeAsr("what time is it"),
        llm=FakeLlm(["It is noon."]),
        tts=FakeTts(),
        conversation=Conversation("be brief", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(endpointer=LISTENING),
        on_turn_end=ended.put_nowait,
    )
    await assistant.wake()
    turn = await asyncio.wait_for(ended.get(), TIMEOUT)
    await asyncio.wait_for(assistant.aclose(), TIMEOUT)
    assert turn.outcome == "answered" and turn.speculations == 1 and turn.speculation_played_first is True
