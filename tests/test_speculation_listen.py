"""The listening task with the speculative turn end: pauses, resumed speech, the kept audio.

The microphone hands out one 20 ms block per read and yields to the event loop each time, so a
speculative ASR finish started on one block is over by the next (the fake sessions answer at
once unless held). Every block carries its own index, so any lost or reordered audio shows; the
VAD reads the verdict from the sample parity, and ``end_trim_ms = 0`` makes it the only judge.
The clock is the audio's own time: the end of the last block read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.clients.asr import FunAsrClient
from daemon.config import AsrSettings
from daemon.errors import AsrError
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.questions import make_question_wav, read_wav_pcm
from hardware.vad import SileroVad
from states.endpointer import EndpointerSettings
from states.events import Transcript, TurnTimes
from states.listen import ends_sentence, listen_for_utterance
from states.mic_feed import Block, MicFeed
from tests.fakes import FakeAsr, FakeAsrSession, FakeMic

BLOCK_S = 0.02
SAMPLES = 320

SETTINGS = EndpointerSettings(
    end_trim_ms=0,
    speech_start_ms=100,  # 5 blocks
    speech_start_ratio=1.0,
    pre_roll_ms=60,  # 3 blocks
    end_silence_ms=400,  # 20 blocks
    speculate_after_ms=100,  # 5 blocks
    max_utterance_s=10.0,
    no_speech_timeout_s=2.0,
)


def block(index: int, speech: bool) -> bytes:
    """Odd samples are speech, even ones silence; the value says which block it is."""
    value = 2 * index + (1 if speech else 0)
    return value.to_bytes(2, "little") * SAMPLES


class ParityVad:
    frame_bytes = SAMPLES * 2

    def is_speech(self, frame: bytes) -> bool:
        return bool(frame[0] & 1)

    def reset(self) -> None:
        pass


class ScriptedFeed(MicFeed):
    """Blocks of a script of (blocks, is_speech) runs, then silence, one per read."""

    def __init__(self, script: Sequence[tuple[int, bool]]) -> None:
        super().__init__(FakeMic([]))
        self.verdicts = [speech for count, speech in script for _ in range(count)]
        self.delivered = 0

    def audio(self, first: int, last: int) -> bytes:
        """Blocks ``first`` to ``last`` included, as they were read."""
        return b"".join(block(i, self._speech(i)) for i in range(first, last + 1))

    def _speech(self, index: int) -> bool:
        return index < len(self.verdicts) and self.verdicts[index]

    def now(self) -> float:
        return self.delivered * BLOCK_S

    async def read_block(self) -> Block:
        await asyncio.sleep(0)  # one turn of the loop: what was scheduled runs before the next block
        index = self.delivered
        self.delivered += 1
        return Block(block(index, self._speech(index)), self.now())


class Recorder:
    """A Speculation that notes what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Transcript | None]] = []
        self.paused_transcripts: list[Transcript] = []
        self.was_paused = asyncio.Event()

    def paused(self, transcript: Transcript) -> None:
        self.calls.append(("paused", transcript))
        self.paused_transcripts.append(transcript)
        self.was_paused.set()

    def resumed(self) -> None:
        self.calls.append(("resumed", None))


async def listen(
    feed: ScriptedFeed,
    asr: FakeAsr,
    speculation: Recorder | None,
    *,
    settings: EndpointerSettings = SETTINGS,
    times: TurnTimes | None = None,
) -> Transcript | None:
    return await listen_for_utterance(
        mic=feed,
        vad=ParityVad(),
        asr=asr,
        settings=settings,
        times=times or TurnTimes(),
        clock=feed.now,
        speculation=speculation,
    )


class OneAtATimeAsr(FakeAsr):
    """Fails a session opened while another one is still open."""

    async def open_session(self) -> FakeAsrSession:
        assert all(session.closed for session in self.sessions), "two ASR sessions open at once"
        return await super().open_session()


def no_tasks_left() -> bool:
    return not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


# Speech from block 10 to 59 (1 s); the pre-roll starts at block 7.
SPEECH = [(10, False), (50, True)]


async def test_a_pause_then_the_end_returns_the_transcript_the_pause_got() -> None:
    feed = ScriptedFeed(SPEECH)
    asr = FakeAsr("what time is it")
    spec = Recorder()
    times = TurnTimes()
    with capture_logs() as logs:
        transcript = await listen(feed, asr, spec, times=times)
    assert spec.calls == [("paused", Transcript("what time is it"))]
    assert transcript is spec.paused_transcripts[0]  # the very object: the answer prepared for it plays
    assert len(asr.sessions) == 1
    session = asr.sessions[0]
    assert session.closed and session.finished
    # Sent live up to the block that made the pause (5 silent blocks: 60..64), nothing after.
    assert session.audio == feed.audio(7, 64)
    assert session.at_once == []
    assert times.speech_end == pytest.approx(80 * BLOCK_S)  # 20 silent blocks: 60..79
    assert times.extra["speculated_at"] == pytest.approx(65 * BLOCK_S)  # before block 65 was read
    assert times.asr_final is not None and times.asr_final >= times.speech_end
    assert [e for e in logs if e["event"] == "speculation_asr"] == [
        {"event": "speculation_asr", "ms": 0, "text": "what time is it", "log_level": "info"}
    ]
    assert no_tasks_left()


async def test_speech_resumed_hears_the_whole_utterance_again_and_speculates_again() -> None:
    feed = ScriptedFeed([*SPEECH, (8, False), (30, True)])  # a pause of 160 ms at 60..67, speech 68..97
    asr = OneAtATimeAsr("what time", "what time is it in tokyo")
    spec = Recorder()
    with capture_logs() as logs:
        transcript = await listen(feed, asr, spec)
    assert [name for name, _ in spec.calls] == ["paused", "resumed", "paused"]
    assert spec.paused_transcripts == [Transcript("what time"), Transcript("what time is it in tokyo")]
    assert transcript is spec.paused_transcripts[1]
    assert len(asr.sessions) == 2
    first, second = asr.sessions
    assert first.closed and second.closed
    assert first.audio == feed.audio(7, 64)
    # Everything kept until the voice came back (block 68), at once; then live up to the next pause.
    assert second.at_once == [feed.audio(7, 68)]
    assert second.audio == feed.audio(7, 102)
    resumed = [e for e in logs if e["event"] == "speech_resumed"]
    assert resumed == [{"event": "speech_resumed", "after_pause_ms": 80, "log_level": "info"}]  # 64 -> 68
    assert no_tasks_left()


async def test_speech_back_before_the_speculative_transcript_voids_it_silently() -> None:
    """The first ASR pass is still out when the voice comes back: it is cancelled, ``paused``
    was never called, so ``resumed`` is not either."""
    feed = ScriptedFeed([*SPEECH, (8, False), (30, True)])
    asr = FakeAsr("never seen", "what time is it", held=[0])
    spec = Recorder()
    transcript = await listen(feed, asr, spec)
    assert spec.calls == [("paused", Transcript("what time is it"))]
    assert transcript is spec.paused_transcripts[0]
    assert asr.sessions[0].closed and not asr.release.is_set()
    assert asr.sessions[1].audio == feed.audio(7, 102)
    assert no_tasks_left()


async def test_the_end_while_the_speculative_asr_is_out_waits_for_it_without_a_new_session() -> None:
    feed = ScriptedFeed(SPEECH)
    asr = FakeAsr("what time is it", held=[0])
    spec = Recorder()
    transcript = await listen_for_utterance(
        mic=feed,
        vad=ParityVad(),
        asr=asr,
        settings=SETTINGS,
        times=TurnTimes(),
        clock=feed.now,
        speculation=spec,
        on_speech_end=asr.release.set,  # the server answers only once the end is decided
    )
    assert transcript == Transcript("what time is it")
    assert spec.calls == []  # the end came first: nothing to prepare ahead of it
    assert len(asr.sessions) == 1
    assert no_tasks_left()


async def test_without_speculation_nothing_changes() -> None:
    for settings, spec in ((SETTINGS, None), (replace(SETTINGS, speculate_after_ms=None), Recorder())):
        feed = ScriptedFeed([*SPEECH, (8, False), (30, True)])
        asr = FakeAsr("what time is it in tokyo")
        times = TurnTimes()
        transcript = await listen(feed, asr, spec, settings=settings, times=times)
        assert transcript == Transcript("what time is it in tokyo")
        assert len(asr.sessions) == 1
        assert asr.sessions[0].audio == feed.audio(7, 117)  # everything, live, to the end (98..117)
        assert asr.sessions[0].at_once == []
        assert "speculated_at" not in times.extra
        assert spec is None or spec.calls == []


@pytest.mark.parametrize(("text", "silent_blocks"), [("what time is it?", 10), ("what time is it and", 20)])
async def test_a_transcript_that_ends_a_sentence_ends_the_utterance_sooner(text: str, silent_blocks: int) -> None:
    settings = replace(SETTINGS, end_silence_short_ms=200)  # 10 blocks
    feed = ScriptedFeed(SPEECH)
    times = TurnTimes()
    transcript = await listen(feed, FakeAsr(text), Recorder(), settings=settings, times=times)
    assert transcript == Transcript(text)
    assert times.speech_end == pytest.approx((60 + silent_blocks) * BLOCK_S)


async def test_the_short_end_is_forgotten_when_the_user_goes_on() -> None:
    settings = replace(SETTINGS, end_silence_short_ms=200)
    feed = ScriptedFeed([*SPEECH, (8, False), (20, True)])  # a question, a pause, then more
    asr = FakeAsr("what time is it?", "what time is it? in tokyo")
    times = TurnTimes()
    transcript = await listen(feed, asr, Recorder(), settings=settings, times=times)
    assert transcript == Transcript("what time is it? in tokyo")
    assert times.speech_end == pytest.approx((88 + 20) * BLOCK_S)  # the full end_silence_ms after 68..87


async def test_an_asr_error_in_the_speculative_finish_fails_the_utterance_at_the_end() -> None:
    feed = ScriptedFeed(SPEECH)
    asr = FakeAsr(AsrError("FunASR closed the connection before the final result"))
    spec = Recorder()
    with pytest.raises(AsrError, match="closed the connection"):
        await listen(feed, asr, spec)
    assert feed.delivered == 80  # not at the pause (block 64): at the end
    assert spec.calls == []
    assert no_tasks_left()


async def test_an_asr_error_in_the_speculative_finish_is_forgotten_when_speech_resumes() -> None:
    feed = ScriptedFeed([*SPEECH, (8, False), (30, True)])
    asr = FakeAsr(AsrError("FunASR closed the connection before the final result"), "what time is it")
    spec = Recorder()
    transcript = await listen(feed, asr, spec)
    assert transcript == Transcript("what time is it")
    assert spec.calls == [("paused", Transcript("what time is it"))]
    assert no_tasks_left()


async def test_a_speculative_transcript_without_words_is_not_offered() -> None:
    feed = ScriptedFeed(SPEECH)
    spec = Recorder()
    transcript = await listen(feed, FakeAsr("。"), spec)
    assert transcript == Transcript("。")
    assert spec.calls == []


async def test_max_utterance_still_cuts_a_paused_utterance() -> None:
    settings = replace(SETTINGS, max_utterance_s=1.2, end_silence_ms=600)  # 60 blocks from the onset
    feed = ScriptedFeed(SPEECH)
    asr = FakeAsr("what time is it")
    spec = Recorder()
    transcript = await listen(feed, asr, spec, settings=settings)
    assert transcript is spec.paused_transcripts[0]
    assert feed.delivered == 70  # onset at block 10 + 60 blocks
    assert len(asr.sessions) == 1


async def test_listening_stopped_after_a_pause_voids_the_speculation() -> None:
    feed = ScriptedFeed(SPEECH)
    asr = FakeAsr("what time is it")
    spec = Recorder()
    task = asyncio.create_task(listen(feed, asr, spec))
    await spec.was_paused.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spec.calls == [("paused", Transcript("what time is it")), ("resumed", None)]
    assert asr.sessions[0].closed
    assert no_tasks_left()


async def test_no_speech_is_unchanged() -> None:
    feed = ScriptedFeed([(200, False)])
    asr = FakeAsr("never")
    assert await listen(feed, asr, Recorder()) is None
    assert feed.delivered == 100  # no_speech_timeout_s
    assert asr.sessions[0].closed
    assert no_tasks_left()


def test_what_ends_a_sentence() -> None:
    assert ends_sentence("现在几点？") and ends_sentence("Turn it on. ") and ends_sentence("wow!")
    assert not ends_sentence("what time is it and") and not ends_sentence("") and not ends_sentence("嗯，")


class RecordingFeed(MicFeed):
    """A recording in 20 ms blocks, then silence, one block per turn of the loop (faster than real time)."""

    def __init__(self, pcm: bytes) -> None:
        super().__init__(FakeMic([]))
        self.pcm = pcm
        self.delivered = 0

    def now(self) -> float:
        return self.delivered * BLOCK_S

    async def read_block(self) -> Block:
        await asyncio.sleep(0)
        start = self.delivered * SAMPLES * 2
        self.delivered += 1
        pcm = self.pcm[start : start + SAMPLES * 2]
        return Block(pcm + bytes(SAMPLES * 2 - len(pcm)), self.now())


async def test_a_question_with_a_pause_against_the_funasr_stand_in(tmp_path: Path) -> None:
    """Real VAD, real client, the stand-in's recogniser: the voice comes back while the first
    pass is still out (the recording runs faster than real time), so that pass is cancelled on
    the wire; the second connection hears the whole utterance, kept audio at once."""
    first = read_wav_pcm(make_question_wav("what is the weather", tmp_path / "a.wav"))
    second = read_wav_pcm(make_question_wav("like today", tmp_path / "b.wav"))
    recording = bytes(16000) + first + bytes(3200) + second  # a pause of 400 ms (espeak-ng ends on 300 ms)
    feed = RecordingFeed(recording)
    settings = EndpointerSettings(speculate_after_ms=200, end_silence_ms=700)
    spec = Recorder()
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour="cpp-2pass")) as server:
        await server.warm_up()
        asr = FunAsrClient(AsrSettings(url=server.url, final_timeout_s=5.0, wav_name="q"))
        with capture_logs() as logs:
            transcript = await asyncio.wait_for(
                listen_for_utterance(
                    mic=feed,
                    vad=SileroVad(),
                    asr=asr,
                    settings=settings,
                    times=TurnTimes(),
                    clock=feed.now,
                    speculation=spec,
                ),
                10.0,
            )
        for session in server.sessions:
            await asyncio.wait_for(session.done.wait(), 10.0)
    assert transcript is not None and transcript.text == "what is the weather like today"
    assert [e["event"] for e in logs if e["event"] == "speech_resumed"] == ["speech_resumed"]
    assert len(server.sessions) == 2
    heard, again = server.sessions
    assert heard.violations == [] and again.violations == []
    # The second connection got the utterance from its first sample: pre-roll, first half,
    # pause, second half, each once and in order (the first one a prefix of it).
    assert bytes(again.audio) in recording + bytes(len(again.audio))
    assert bytes(again.audio).startswith(bytes(heard.audio)) and len(again.audio) > len(first) + len(second)
    assert no_tasks_left()
