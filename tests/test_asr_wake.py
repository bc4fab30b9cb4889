"""The ``asr`` wake engine against the real FunASR stand-in on 127.0.0.1, with espeak-ng speech
judged by the real Silero VAD (hardware/vad.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.clients.asr_wake import AsrWakeSpotter
from daemon.clients.wake_phrases import PhraseMatcher, wake_tokens
from daemon.config import AsrSettings
from daemon.errors import AsrError
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.questions import make_question_wav, read_wav_pcm
from hardware.vad import SileroVad
from states.events import Transcript
from states.ports import HotwordEngine
from tests.log_watch import watch_logs

TIMEOUT = 10.0
BLOCK = 1024  # 32 ms: the Silero VAD's frame
PAD = bytes(32000)  # 1 s of silence around each recording
PHRASES = ("hello robot", "hey robot")
SPOKEN = {
    "hello": "hello robot",
    "hey_question": "hey robot what time is it",
    "question": "what time is it",
    "other": "turn on the kitchen light",
}


@dataclass(frozen=True)
class Take:
    """A recording cut into microphone blocks, each with the VAD's verdict."""

    blocks: tuple[tuple[bytes, bool], ...]

    @property
    def first_speech(self) -> int:
        return [speech for _, speech in self.blocks].index(True)

    @property
    def last_speech(self) -> int:
        return max(i for i, (_, speech) in enumerate(self.blocks) if speech)


@pytest.fixture(scope="module")
def takes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Take]:
    folder = tmp_path_factory.mktemp("asr_wake")
    out = {}
    for name, text in SPOKEN.items():
        pcm = PAD + read_wav_pcm(make_question_wav(text, folder / f"{name}.wav")) + PAD
        pcm += bytes(-len(pcm) % BLOCK)
        vad = SileroVad()
        blocks = tuple((pcm[i : i + BLOCK], vad.is_speech(pcm[i : i + BLOCK])) for i in range(0, len(pcm), BLOCK))
        assert any(speech for _, speech in blocks), name
        out[name] = Take(blocks)
    return out


def settings_for(url: str, **overrides: Any) -> AsrSettings:
    base = AsrSettings(url=url, final_timeout_s=1.0, connect_timeout_s=2.0, burst_ms=60_000, wav_name="wake")
    return replace(base, **overrides)


@pytest.fixture
async def stub() -> AsyncIterator[FunAsrStub]:
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour="cpp-2pass")) as server:
        await server.warm_up()
        yield server


@pytest.fixture
async def spotter(stub: FunAsrStub) -> AsyncIterator[AsrWakeSpotter]:
    engine = AsrWakeSpotter(settings_for(stub.url), PHRASES)
    yield engine
    await engine.aclose()


def feed(engine: AsrWakeSpotter, take: Take) -> list[str]:
    """Every block of ``take``, as fast as the loop allows; the phrases returned on the way."""
    return [word for pcm, speech in take.blocks if (word := engine.process(pcm, speech)) is not None]


async def heard(engine: AsrWakeSpotter, take: Take) -> list[str]:
    """Feed ``take`` (it ends in silence, so its segment ends), let its session finish, and
    collect what ``process`` reports, the detection of the final text included."""
    words = feed(engine, take)
    await asyncio.wait_for(engine.drain(), TIMEOUT)
    word = engine.process(bytes(BLOCK), False)
    return words + ([word] if word is not None else [])


async def until_fired(engine: AsrWakeSpotter, pcm: bytes, speech: bool) -> str:
    """Keep delivering ``pcm`` blocks, as a microphone would, until a phrase is reported."""
    async with asyncio.timeout(TIMEOUT):
        while (word := engine.process(pcm, speech)) is None:  # noqa: ASYNC110 - a microphone, not a wait
            await asyncio.sleep(0.032)
    return word


async def sessions_done(stub: FunAsrStub) -> None:
    for session in stub.sessions:
        await asyncio.wait_for(session.done.wait(), TIMEOUT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- phrases -------------------------------------------------------------------------------


def test_tokens_fold_case_spaces_punctuation_and_width() -> None:
    assert wake_tokens("  Hello,   ROBOT! ") == ("hello", "robot")
    assert wake_tokens("ＨＥＹ＿Ｒｏｂｏｔ") == ("hey", "robot")
    assert wake_tokens("你好，摩斯。") == ("你", "好", "摩", "斯")
    assert wake_tokens("ok摩斯2") == ("ok", "摩", "斯", "2")


def test_matcher_needs_whole_words_in_a_row() -> None:
    matcher = PhraseMatcher(["hello robot", "你好摩斯", "hey_jarvis"])
    assert matcher.find("Hello, robot! what time is it") == "hello robot"
    assert matcher.find("hello robots") is None
    assert matcher.find("hello there robot") is None
    assert matcher.find("我说 你好 摩 斯。") == "你好摩斯"
    assert matcher.find("HEY JARVIS") == "hey_jarvis"
    assert matcher.find("") is None


def test_matcher_reports_the_phrase_that_ends_first() -> None:
    matcher = PhraseMatcher(["hey robot", "robot"])
    assert matcher.find("hey robot") == "hey robot"  # ending together: the longer
    assert matcher.find("robot hey robot") == "robot"
    assert PhraseMatcher(["hey robot", "what time"]).find("hey robot what time") == "hey robot"


@pytest.mark.parametrize(("phrases", "message"), [([], "no wake phrases"), (["ok", "?!"], "'\\?!' has no letters")])
def test_bad_phrases_are_refused(phrases: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AsrWakeSpotter(AsrSettings(), phrases)


def test_the_zeros_come_before_the_segment_closes() -> None:
    with pytest.raises(ValueError, match="pad_after_ms must be > 0 and <= close_after_ms, got 700 and 600"):
        AsrWakeSpotter(AsrSettings(), PHRASES, pad_after_ms=700, close_after_ms=600)


def test_one_string_is_not_a_phrase_list() -> None:
    with pytest.raises(TypeError, match="not one string"):
        PhraseMatcher("hello robot")


def test_it_is_a_hotword_engine() -> None:
    engine = AsrWakeSpotter(AsrSettings(), ["hello robot"])
    assert isinstance(engine, HotwordEngine)
    assert engine.phrases == ("hello robot",)


# -- on the wire ---------------------------------------------------------------------------


async def test_silence_sends_nothing(stub: FunAsrStub, spotter: AsrWakeSpotter) -> None:
    for _ in range(200):  # 6.4 s
        assert spotter.process(bytes(BLOCK), False) is None
    await asyncio.wait_for(spotter.drain(), TIMEOUT)
    assert stub.sessions == []
    assert spotter.segments_started == 0


async def test_fires_on_the_phrase_and_sends_only_speech(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]
) -> None:
    take = takes["hello"]
    assert await heard(spotter, take) == ["hello robot"]
    await sessions_done(stub)
    [session] = stub.sessions
    assert session.violations == []
    assert session.config is not None and session.config["mode"] == "online"
    assert session.recognised == "hello robot"
    # 300 ms of pre-roll, the speech with its pauses, 900 ms of zeros; not the room after the speech
    pcm = b"".join(block for block, _ in take.blocks)
    first, last = take.first_speech * BLOCK, (take.last_speech + 1) * BLOCK
    assert session.audio == pcm[first - 9600 : last] + bytes(28800)
    assert any(pcm[last : last + 19200])  # there was sound after the last speech block, and it stayed here


async def test_short_pauses_are_sent_and_long_ones_become_zeros(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]
) -> None:
    """A pause under 200 ms is part of the utterance; a longer one is replaced by the zeros that
    make the server decode what came before it; the segment goes on if speech resumes within
    600 ms."""
    blocks = takes["other"].blocks
    speech = [pcm for pcm, _ in blocks[takes["other"].first_speech : takes["other"].last_speech + 1]]
    lead = [pcm for pcm, _ in blocks[: takes["other"].first_speech]]
    short_pause = speech[:5]  # sound the VAD calls non-speech: 160 ms
    long_pause = speech[:10]  # 320 ms
    script = [(p, False) for p in lead] + [(p, True) for p in speech] + [(p, False) for p in short_pause]
    script += [(p, True) for p in speech] + [(p, False) for p in long_pause] + [(p, True) for p in speech]
    script += [(bytes(BLOCK), False)] * 20
    for pcm, flag in script:
        assert spotter.process(pcm, flag) is None
    await asyncio.wait_for(spotter.drain(), TIMEOUT)
    await sessions_done(stub)
    [session] = stub.sessions
    words, pad = b"".join(speech), bytes(28800)
    preroll = b"".join(lead)[-9600:]
    assert session.audio == preroll + words + b"".join(short_pause) + words + pad + words + pad


@pytest.mark.parametrize("flavour", ["python-classic", "python-2026", "cpp-2pass"])
async def test_a_phrase_said_alone_fires_on_every_flavour(flavour: str, takes: dict[str, Take]) -> None:
    """The zeros after the speech make the online model decode the phrase's last chunk: the
    classic server sends nothing for the end marker in online mode."""
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour=flavour)) as server:
        engine = AsrWakeSpotter(settings_for(server.url, flavour=flavour, final_timeout_s=0.5), PHRASES)
        try:
            with capture_logs() as logs:
                assert await heard(engine, takes["hello"]) == ["hello robot"]
        finally:
            await engine.aclose()
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []


async def test_a_phrase_in_the_last_partial_closes_the_session_without_waiting_for_a_final(
    takes: dict[str, Take],
) -> None:
    """The classic server never answers the end marker in online mode: once the partial after the
    zeros has the phrase, the session closes at once instead of waiting out final_timeout_s."""
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour="python-classic")) as server:
        engine = AsrWakeSpotter(settings_for(server.url, flavour="python-classic", final_timeout_s=3.0), PHRASES)
        try:
            with capture_logs() as logs:
                assert feed(engine, takes["hello"]) == []
                assert await until_fired(engine, bytes(BLOCK), False) == "hello robot"
                await asyncio.wait_for(engine.drain(), TIMEOUT)
                await sessions_done(server)
        finally:
            await engine.aclose()
    events = [e["event"] for e in logs]
    assert "asr_wake_detected" in events
    assert "asr_no_final" not in events  # the wait for the final result was cut short
    assert server.sessions[0].end_marker is not None and server.sessions[0].client_close_code == 1000


@pytest.mark.parametrize("name", ["question", "other"])
async def test_other_speech_does_not_fire(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take], name: str
) -> None:
    assert await heard(spotter, takes[name]) == []
    await sessions_done(stub)
    [session] = stub.sessions
    assert session.recognised == SPOKEN[name]  # it was heard, and it is not a wake phrase


async def test_fires_from_partials_while_the_user_goes_on_speaking(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]
) -> None:
    """Wake word and question in one breath: the phrase is spotted before the speech ends."""
    speech = [(pcm, flag) for pcm, flag in takes["hey_question"].blocks]
    start = next(i for i, (_, flag) in enumerate(speech) if flag)
    words = [w for pcm, _ in speech[start:] if (w := spotter.process(pcm, True)) is not None]
    word = words[0] if words else await until_fired(spotter, bytes(BLOCK), True)
    assert word == "hey robot"
    await sessions_done(stub)
    [session] = stub.sessions
    assert session.end_marker is None  # closed without waiting for the final text
    assert any("robot" in str(m) for m in session.sent)


async def test_one_utterance_fires_once_and_the_next_fires_again(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]
) -> None:
    assert await heard(spotter, takes["hello"]) == ["hello robot"]
    assert await heard(spotter, takes["question"]) == []
    assert await heard(spotter, takes["hey_question"]) == ["hey robot"]
    assert len(stub.sessions) == 3


async def test_endless_speech_is_cut_into_segments(stub: FunAsrStub, takes: dict[str, Take]) -> None:
    """A television talking all day does not hold one session open forever."""
    engine = AsrWakeSpotter(settings_for(stub.url), PHRASES, max_segment_s=1.0)
    try:
        speech = [pcm for pcm, _ in takes["other"].blocks] * 2  # about 7 s, all of it called speech
        assert [w for pcm in speech if (w := engine.process(pcm, True))] == []
        for _ in range(30):
            engine.process(bytes(BLOCK), False)
        await asyncio.wait_for(engine.drain(), TIMEOUT)
    finally:
        await engine.aclose()
    await sessions_done(stub)
    assert engine.segments_started == len(stub.sessions) >= 6
    assert all(len(s.audio) <= 32000 + BLOCK + 28800 for s in stub.sessions)  # 1 s of speech and the zeros
    sent = [bytes(s.audio[:-28800]) for s in stub.sessions]
    stream = b"".join(speech)
    assert all(piece in stream for piece in sent) and sum(map(len, sent)) == len(stream)  # every block, once


async def test_chinese_phrase_without_a_model_on_the_robot(takes: dict[str, Take]) -> None:
    behaviour = FunAsrBehaviour(
        flavour="python-2026", transcript_override="你好，摩斯。今天天气怎么样", partial_every_frames=1
    )
    async with FunAsrStub(behaviour=behaviour) as server:
        engine = AsrWakeSpotter(settings_for(server.url, flavour="python-2026"), ["你好摩斯"])
        try:
            assert await heard(engine, takes["other"]) == ["你好摩斯"]
        finally:
            await engine.aclose()
        await sessions_done(server)
        assert [s.config["mode"] for s in server.sessions if s.config] == ["online"]


async def test_reset_drops_a_detection_not_yet_returned(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]
) -> None:
    assert feed(spotter, takes["hello"]) == []
    await asyncio.wait_for(spotter.drain(), TIMEOUT)  # the final text had the phrase: it is pending
    spotter.reset()
    assert spotter.process(bytes(BLOCK), False) is None
    assert await heard(spotter, takes["hello"]) == ["hello robot"]  # a new utterance fires again


async def test_reset_cuts_the_open_session(stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]) -> None:
    blocks, last_speech = takes["hello"].blocks, takes["hello"].last_speech
    with watch_logs() as logs:
        assert [w for pcm, flag in blocks[: last_speech + 1] if (w := spotter.process(pcm, flag))] == []
        await asyncio.wait_for(logs.wait_for("asr_partial"), TIMEOUT)  # the session is streaming
    spotter.reset()
    await asyncio.wait_for(spotter.drain(), TIMEOUT)  # waits for the cut session to close
    for pcm, flag in blocks[last_speech + 1 :]:
        assert spotter.process(pcm, flag) is None
    await sessions_done(stub)
    [session] = stub.sessions
    assert session.end_marker is None  # cut, not finished
    assert session.client_close_code == 1000


async def test_aclose_closes_an_open_session_with_a_close_frame(
    stub: FunAsrStub, spotter: AsrWakeSpotter, takes: dict[str, Take]
) -> None:
    with watch_logs() as logs:
        for pcm, flag in takes["question"].blocks:
            if flag:
                spotter.process(pcm, True)
        await asyncio.wait_for(logs.wait_for("asr_partial"), TIMEOUT)  # the session is streaming
    await asyncio.wait_for(spotter.aclose(), TIMEOUT)
    await sessions_done(stub)
    assert stub.sessions[0].client_close_code == 1000
    await spotter.aclose()  # idempotent
    assert spotter.process(bytes(BLOCK), True) is None
    assert len(stub.sessions) == 1


# -- a server that is down -----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_dead_server_never_raises_is_logged_once_and_retried_after_a_backoff(takes: dict[str, Take]) -> None:
    clock = FakeClock()
    dead = f"ws://127.0.0.1:{free_port()}"
    engine = AsrWakeSpotter(settings_for(dead), PHRASES, clock=clock, log_every_s=60.0, retry_jitter=0)
    try:
        with capture_logs() as logs:
            assert await heard(engine, takes["hello"]) == []
            assert engine.segments_started == 1
            assert await heard(engine, takes["hello"]) == []  # within the 1 s back-off: not even tried
            assert engine.segments_started == 1
            clock.now += 1.0
            assert await heard(engine, takes["hello"]) == []  # tried again: fails, back-off now 2 s
            assert engine.segments_started == 2
            clock.now += 1.0
            assert await heard(engine, takes["hello"]) == []
            assert engine.segments_started == 2
            clock.now += 61.0
            assert await heard(engine, takes["hello"]) == []
            assert engine.segments_started == 3
    finally:
        await engine.aclose()
    warnings = [e for e in logs if e["event"] == "asr_wake_unavailable"]
    assert len(warnings) == 2  # the second failure came within log_every_s
    assert "refused the connection" in warnings[0]["error"]
    assert warnings[0]["retry_in_s"] == 1.0
    assert warnings[1]["suppressed"] == 1
    assert warnings[1]["retry_in_s"] == 4.0


async def test_server_back_after_an_outage(stub: FunAsrStub, takes: dict[str, Take]) -> None:
    clock = FakeClock()
    attempts: list[str] = []

    async def connect_after_one_failure() -> Any:
        attempts.append("try")
        if len(attempts) == 1:
            raise AsrError("ASR server is starting")
        from daemon.clients.asr import FunAsrClient

        return await FunAsrClient(settings_for(stub.url, mode="online")).open_session()

    engine = AsrWakeSpotter(
        settings_for(stub.url), PHRASES, connect=connect_after_one_failure, clock=clock, retry_jitter=0
    )
    try:
        assert await heard(engine, takes["hello"]) == []
        clock.now += 1.0
        assert await heard(engine, takes["hello"]) == ["hello robot"]
    finally:
        await engine.aclose()
    assert len(attempts) == 2


class BrokenSession:
    """A session whose server disappears after the connection."""

    text = ""
    closed = False

    async def send_audio(self, pcm: bytes, *, at_once: bool = False) -> None:
        raise AsrError("ASR server ws://x closed the connection (no close frame) before the final result")

    async def finish(self) -> Transcript:
        raise AssertionError("not reached")

    async def aclose(self) -> None:
        self.closed = True


async def test_a_session_failing_mid_speech_is_logged_and_its_audio_dropped(takes: dict[str, Take]) -> None:
    sessions: list[BrokenSession] = []

    async def connect() -> BrokenSession:
        sessions.append(BrokenSession())
        return sessions[-1]

    engine = AsrWakeSpotter(AsrSettings(), PHRASES, connect=connect)
    try:
        with capture_logs() as logs:
            assert await heard(engine, takes["hello"]) == []
    finally:
        await engine.aclose()
    assert [s.closed for s in sessions] == [True]
    assert [e["error"] for e in logs if e["event"] == "asr_wake_unavailable"] == [
        "ASR server ws://x closed the connection (no close frame) before the final result"
    ]


async def test_endless_speech_does_not_keep_a_failed_segment_from_being_retried(takes: dict[str, Take]) -> None:
    clock = FakeClock()
    sessions: list[BrokenSession] = []

    async def connect() -> BrokenSession:
        sessions.append(BrokenSession())
        return sessions[-1]

    engine = AsrWakeSpotter(AsrSettings(), PHRASES, connect=connect, clock=clock, max_segment_s=1.0, retry_jitter=0)
    speech = [pcm for pcm, _ in takes["other"].blocks]
    try:
        with watch_logs() as logs:
            engine.process(speech[0], True)
            await asyncio.wait_for(logs.wait_for("asr_wake_unavailable"), TIMEOUT)
        for pcm in speech[1:40]:  # past max_segment_s: the failed segment ends; the back-off holds
            assert engine.process(pcm, True) is None
        assert engine.segments_started == 1
        clock.now += 1.0
        for pcm in speech[40:45]:
            assert engine.process(pcm, True) is None
        assert engine.segments_started == 2  # the same speech goes on, and is tried again
    finally:
        await engine.aclose()


async def test_a_wake_session_fails_over_to_the_next_asr_endpoint(stub: FunAsrStub, takes: dict[str, Take]) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    engine = AsrWakeSpotter(replace(settings_for(dead), url=(dead, stub.url)), PHRASES)
    try:
        with capture_logs() as logs:
            assert await heard(engine, takes["hello"]) == ["hello robot"]
            assert engine.url == stub.url
            assert await heard(engine, takes["hello"]) == ["hello robot"]  # straight to the one that answers
    finally:
        await engine.aclose()
    assert not [e for e in logs if e["event"] == "asr_wake_unavailable"]
    assert engine.segments_started == 2 and len(stub.sessions) == 2
