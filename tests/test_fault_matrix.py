"""The fault matrix (issue 11): for each service (ASR, LLM, TTS) and each fault (refused, hang, error,
malformed, cut, trickle, flood), acted out by the stand-ins against a daemon in this process, with
every stage timeout at 2 s (daemon/tools/bench/fault_cells.py runs a cell: the daemon, a faulty turn,
then a good one).

The bounds stated, from the moment the fault strikes (the wake for the ASR, the LLM request, the
first TTS request) to the end of the turn: a failed stage, BOUND_S (8 s: the 2 s timeout, the
earcon, slack); a fault that only degrades the turn (a trickle or flood the client cuts short),
DEGRADED_BOUND_S (12 s: the timeout and at most 60 characters of answer spoken).

Each cell runs once; two tests read its record: the turn (it ended within the bound, failed naming
the service and the user heard it, or was answered within the caps; the machine went back to idle;
the daemon lived; the next turn was answered) and the log (the fault named once).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from daemon.errors import HardwareError
from daemon.event_bus import Event, EventBus
from daemon.health import Health
from daemon.tools.bench import faults
from daemon.tools.bench.daemon_process import DaemonProcess
from daemon.tools.bench.fault_cells import (
    ANSWER,
    BOUND_S,
    CELLS,
    DEGRADED_BOUND_S,
    EXTRA,
    REPLY_CHARS,
    CellResult,
    run_cell,
    run_cells,
)
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.endpointer import EndpointerSettings
from states.history import Conversation
from states.machine import State
from states.model import Assistant, AssistantSettings, Earcons, Turn
from states.speech_text import SpeechTextSettings
from tests.fakes import FakeAsr, FakeLlm, FakeMic, FakeSpeaker, FakeTts, FakeVad
from tests.log_watch import watch_logs

pytestmark = pytest.mark.slow

MAX_TRANSCRIPT_CHARS = 10_000
"""Whatever cap part A1 chooses for a transcript, a flood must not get past this."""

DEGRADING = ("trickle", "flood", "ping_only", "endless")
"""Faults a client may survive by cutting them short: the turn may then be answered."""
PARTLY_HEARD = {("tts", "cut"), ("tts", "ws-cut")}
"""A clause the TTS cut after its first chunk was partly heard, so it counts as spoken
(states/reply.py): the turn is answered, cut short, without an earcon."""

_results: dict[tuple[str, str], CellResult] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


CELLS_AT_ONCE = 5
"""Each cell is a daemon that mostly waits on real-time audio: run one by one, the matrix took
4.5 minutes of the suite; several at once, about a fifth of it (the bounds leave room for a
loaded machine: a stage's 2 s timeout against BOUND_S)."""


async def cell(service: str, fault: str, workdir: Path) -> CellResult:
    """The cell's record. The first test to ask runs every cell (two tests read each)."""
    if not _results:
        _results.update(await run_cells((*CELLS, *EXTRA), workdir, at_once=CELLS_AT_ONCE))
    return _results[(service, fault)]


CELL_PARAMS = [pytest.param(service, fault, id=f"{service}-{fault}") for service, fault in (*CELLS, *EXTRA)]


@pytest.mark.timeout(900)  # the first of these runs the whole matrix
@pytest.mark.parametrize(("service", "fault"), CELL_PARAMS)
async def test_the_faulty_turn_ends_and_the_next_is_answered(service: str, fault: str, workdir: Path) -> None:
    r = await cell(service, fault, workdir)
    assert r.crashed is None, r.crashed
    assert r.outcome is not None, "the faulty turn never ended"
    if r.outcome == "failed":
        assert r.failed_service == service, (r.failed_service, r.reason)
        assert r.reason
        assert r.heard_failure, "neither the error earcon nor an apology was played"
        bound = BOUND_S
    else:
        assert fault in DEGRADING or (service, fault) in PARTLY_HEARD, f"{r.outcome}: the fault went unnoticed"
        assert r.outcome == "answered"
        assert r.transcript_chars <= MAX_TRANSCRIPT_CHARS
        assert r.reply_chars <= REPLY_CHARS
        bound = DEGRADED_BOUND_S
    if r.fault_to_end_s is not None:  # None: the fault struck before the stage was reached
        assert r.fault_to_end_s < bound
    assert r.idle_after
    assert (r.next_outcome, r.next_reply) == ("answered", ANSWER)


@pytest.mark.timeout(900)  # or this one, whichever runs first
@pytest.mark.parametrize(("service", "fault"), CELL_PARAMS)
async def test_the_fault_is_logged_once(service: str, fault: str, workdir: Path) -> None:
    r = await cell(service, fault, workdir)
    assert r.outcome is not None, "the faulty turn never ended"
    failed = [e for e in r.fault_logs if e["event"] == "turn_failed"]
    assert len(failed) == (1 if r.outcome == "failed" else 0)
    # Besides turn_failed (and part B's service_down), at most the client's own line, with the details.
    assert r.failure_lines <= 1, [e["event"] for e in r.fault_logs]


# --------------------------------------------------------------------------- a fault that repeats


async def test_a_fault_that_repeats_is_counted_not_logged_every_time(workdir: Path) -> None:
    r = await run_cell("llm", "error", workdir, repeats=3)
    assert r.outcome == "failed" and r.repeat_outcomes == ["failed", "failed"]
    assert (r.next_outcome, r.next_reply) == ("answered", ANSWER)
    lines = [e["event"] for e in r.repeat_logs if e["event"] not in ("turn_failed", "service_down")]
    assert len(lines) <= 1, lines  # the first failure's details; the repeats only counted


async def test_bench_faults_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(cell=["llm:error"], extra=False, keep=tmp_path, json=tmp_path / "faults.json")
    code = await asyncio.to_thread(faults.command, args)  # it runs its own event loop
    out = capsys.readouterr().out
    assert code == 0
    (row,) = [line.split() for line in out.splitlines() if line.startswith("llm ")]
    assert row[:5] == ["llm", "error", "error_500", "failed", row[4]] and float(row[4]) < BOUND_S
    assert row[5] in ("earcon", "apology", "sound") and row[7] == "answered"
    (record,) = json.loads((tmp_path / "faults.json").read_text(encoding="utf-8"))
    assert record["service"] == "llm" and record["next_outcome"] == "answered"
    assert faults.parse_cell("tts:endless") == ("tts", "endless")
    with pytest.raises(ValueError, match="unknown cell 'gpu:melt'"):
        faults.parse_cell("gpu:melt")


# --------------------------------------------------------------------------- a device failing mid-turn


class UnpluggedSpeaker(FakeSpeaker):
    """A USB speaker pulled out after ``writes`` writes: every write fails until ``plug_in()``."""

    def __init__(self, writes: int) -> None:
        super().__init__()
        self._left = writes

    async def write(self, pcm: bytes) -> None:
        if self._left <= 0:
            raise HardwareError("speaker 'pyaudio:USB': the stream stopped (device gone?)")
        self._left -= 1
        await super().write(pcm)

    def plug_in(self) -> None:
        self._left = 1_000_000


def assistant_with(speaker: FakeSpeaker, ended: asyncio.Queue[Turn]) -> Assistant:
    return Assistant(
        mic=FakeMic([(0.3, False), (0.6, True), (0.5, False)]),
        speaker=speaker,
        vad=FakeVad(),
        asr=FakeAsr("what time is it", "and now"),
        llm=FakeLlm(["It is noon. ", "Time for lunch!"]),
        tts=FakeTts(),
        conversation=Conversation("", max_turns=3, reset_after_s=60),
        settings=AssistantSettings(
            endpointer=EndpointerSettings(
                speech_start_ms=60, end_silence_ms=200, pre_roll_ms=100, max_utterance_s=5, no_speech_timeout_s=1.0
            ),
            speech_text=SpeechTextSettings(),
        ),
        earcons=Earcons(error=lambda rate: b"\x01\x02" * 50),
        on_turn_end=ended.put_nowait,
    )


async def test_a_speaker_lost_while_speaking_fails_the_turn_and_the_next_turn_speaks() -> None:
    speaker = UnpluggedSpeaker(writes=1)  # the first chunk of the answer plays, then the device is gone
    ended: asyncio.Queue[Turn] = asyncio.Queue()
    assistant = assistant_with(speaker, ended)
    with watch_logs() as logs:
        await assistant.wake()
        turn = await asyncio.wait_for(ended.get(), 10)
        await asyncio.wait_for(assistant.settle(), 10)
        assert (turn.outcome, turn.failed_service) == ("failed", "audio")
        assert "device gone" in (turn.failure or "")
        assert assistant.state is State.IDLE
        # the error earcon cannot play on a device that is gone: said once, and the turn still ends
        assert [e["event"] for e in logs if e["event"] in ("turn_failed", "earcon_failed")] == [
            "turn_failed",
            "earcon_failed",
        ]
        speaker.plug_in()
        assistant.mic = FakeMic([(0.3, False), (0.6, True), (0.5, False)])
        assistant.llm = FakeLlm(["Still noon."])
        await assistant.wake()
        second = await asyncio.wait_for(ended.get(), 10)
    assert second.outcome == "answered" and second.reply == "Still noon."
    await assistant.aclose()


# --------------------------------------------------------------------------- the wall clock jumping

WALL_CLOCK = re.compile(r"\btime\.time\b(?!_)|\bdatetime\.(?:now|utcnow|today)\b|\bdate\.today\b")
WALL_CLOCK_READERS = {"daemon/event_bus.py", "daemon/health.py", "daemon/clients/guarded.py"}
"""The only runtime modules that read the wall clock: to stamp events and a service's down_since
for people (GET /status, /events), never to time anything. Everything that times (deadlines, the devices' schedules, the
history's reset, the turn's figures) reads time.monotonic or the event loop's clock."""


def test_only_reports_read_the_wall_clock() -> None:
    root = Path(__file__).resolve().parent.parent
    readers = {
        str(path.relative_to(root))
        for package in ("daemon", "states", "hardware")
        for path in (root / package).rglob("*.py")
        if "tools" not in path.relative_to(root).parts and WALL_CLOCK.search(path.read_text(encoding="utf-8"))
    }
    assert readers == WALL_CLOCK_READERS


class JumpingClock:
    """A wall clock set back an hour, then forward a day, then back again, at each reading."""

    def __init__(self) -> None:
        self._jumps = itertools.cycle((-3600.0, 86400.0, -86400.0 - 7200.0))
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += next(self._jumps)
        return self.now


async def test_a_jumping_wall_clock_changes_only_the_stamps_of_what_is_reported() -> None:
    clock = JumpingClock()
    bus, health = EventBus(clock=clock), Health(clock=clock)
    seen: list[Event] = []

    def observe(event: Event) -> None:
        seen.append(event)
        health.observe(event)

    following = bus.follow(observe)
    for name, ok in (("asr", True), ("llm", True), ("tts", False)):
        health.probed(name, ok)
    bus.emit("turn_failed", turn_id=1, service="llm", reason="timeout")
    bus.emit("turn_finished", turn_id=1, outcome="failed")
    bus.emit("turn_finished", turn_id=2, outcome="answered", first_audio_ms=400)
    bus.close()
    await asyncio.wait_for(following, 5)
    times = [event.time for event in seen]
    assert times != sorted(times)  # the stamps went backwards ...
    assert [event.seq for event in seen] == [1, 2, 3]  # ... the order did not
    snapshot = health.snapshot()
    # the later answered turn proves every service, whatever its stamp says
    assert {name: snapshot[name]["ok"] for name in ("asr", "llm", "tts")} == {"asr": True, "llm": True, "tts": True}
    assert snapshot["llm"]["last_error"] == "timeout"


# --------------------------------------------------------------------------- SIGTERM in every state


def daemon_config(path: Path, urls: tuple[str, str, str], mic: Path, out: Path, *, on_start: bool) -> Path:
    q = json.dumps
    path.write_text(
        f"[asr]\nurl = {q(urls[0])}\n[llm]\nurl = {q(urls[1])}\n[tts]\nurl = {q(urls[2])}\n"
        f"[audio]\ninput = {q('wav:' + str(mic))}\noutput = {q('wav:' + str(out))}\n"
        f'[wake]\non_start = {str(on_start).lower()}\nfollow_up_s = 0\n[log]\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("state", ["idle", "speaking"])
async def test_sigterm_while_idle_or_speaking_stops_cleanly(tmp_path: Path, state: str) -> None:
    """tests/test_notify.py covers listening and thinking; here the other two states."""
    mic = make_question_wav("what time is it", tmp_path / "question.wav")
    long_answer = "It is noon. " * 20  # speaking lasts until the stop
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers={"time": long_answer}))
        config = daemon_config(
            tmp_path / "voice.toml", (asr.url, llm.url, tts.url), mic, tmp_path / "out.wav", on_start=state != "idle"
        )
        process = await DaemonProcess.spawn(config, cwd=tmp_path)
        try:
            await process.wait_ready()
            if state == "speaking":
                await process.wait_for("state_changed", dst="speaking")
            code, _ = await process.stop()
        finally:
            await process.aclose()
    assert code == 0, process.tail()
    (stopping,) = [e for e in process.events if e["event"] == "daemon_stopping"]
    assert stopping["state"] == state
    finished = [e for e in process.events if e["event"] == "turn_finished"]
    assert [e["outcome"] for e in finished] == ([] if state == "idle" else ["stopped"])
    assert not [e for e in process.events if e.get("level") in ("error", "critical")]
