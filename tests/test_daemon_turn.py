"""The daemon end to end: WAV question in, real loopback servers for FunASR, vLLM and PaddleSpeech,
WAV answer out. Wall-clock runs of a few seconds each."""

from __future__ import annotations

import asyncio
import socket
import wave
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.app import EXIT_ANSWERED, EXIT_FAILED, EXIT_STOPPED, App
from daemon.config import (
    AsrSettings,
    AudioSettings,
    LlmSettings,
    ReplySettings,
    Settings,
    TtsSettings,
    VadSettings,
    WakeSettings,
)
from daemon.tools.stubs.funasr import FunAsrBehaviour, make_question_wav
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.cues import DEFAULT_APOLOGY
from states.model import Turn

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 60
LEAD_S = 0.4
SHORT_ANSWERS = {"weather": "It is sunny today. Take a walk!", "天气": "今天天气晴朗，适合散步。"}


def question_wav(
    tmp_path: Path, text: str, *, name: str = "question.wav", gap_s: float = 0.0, second: str | None = None
) -> tuple[Path, float]:
    """A WAV with LEAD_S of silence, the question, and optionally a gap and a second question.
    Returns the path and the time the first question ends."""
    spoken = make_question_wav(text, tmp_path / f"raw-{name}")
    pcm = _read(spoken)[0]
    lead = np.zeros(int(LEAD_S * 16000), dtype="<i2")
    parts = [lead, pcm]
    if second is not None:
        parts += [np.zeros(int(gap_s * 16000), dtype="<i2"), _read(make_question_wav(second, tmp_path / "raw2.wav"))[0]]
    path = tmp_path / name
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.concatenate(parts).tobytes())
    return path, LEAD_S + len(pcm) / 16000


def _read(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def loud_span(path: Path, after: float = 0.0) -> tuple[float, float] | None:
    """First and last loud sample (seconds) from ``after`` on."""
    samples, rate = _read(path)
    start = int(after * rate)
    loud = np.flatnonzero(np.abs(samples[start:].astype(np.int32)) > 300) + start
    return None if not len(loud) else (loud[0] / rate, loud[-1] / rate)


def settings_for(stubs: tuple, qwav: Path, out: Path, **asr: object) -> Settings:
    asr_stub, llm_stub, tts_stub = stubs
    return Settings(
        asr=AsrSettings(url=asr_stub.url, final_timeout_s=1.0, **asr),  # type: ignore[arg-type]
        llm=LlmSettings(url=llm_stub.url, first_token_timeout_s=5, read_timeout_s=5),
        tts=TtsSettings(url=tts_stub.url, read_timeout_s=5),
        audio=AudioSettings(input=f"wav:{qwav}", output=f"wav:{out}"),
        vad=VadSettings(end_silence_ms=500, no_speech_timeout_s=6),
        wake=WakeSettings(follow_up_s=0),  # no follow-up turn: tests/test_wake.py has those
    )


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


async def run_once(settings: Settings) -> tuple[int, App, list[dict]]:
    app = App(settings, once=True)
    with capture_logs() as logs:
        code = await asyncio.wait_for(app.run(), RUN_TIMEOUT)
    return code, app, logs


async def test_an_english_question_is_answered_into_the_output_wav(tmp_path: Path) -> None:
    qwav, question_end = question_wav(tmp_path, "what is the weather like today")
    out = tmp_path / "reply.wav"
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, llm=demo_llm_behaviour(answers=SHORT_ANSWERS))
        code, _, logs = await run_once(settings_for(stubs, qwav, out))
        asr_stub, llm_stub, tts_stub = stubs
    assert code == EXIT_ANSWERED
    (finished,) = events(logs, "turn_finished")
    assert finished["transcript"] == "what is the weather like today"
    assert finished["reply"] == "It is sunny today. Take a walk!"
    assert finished["interrupted"] is False
    for key in ("asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "first_audio_ms"):
        assert isinstance(finished[key], int) and 0 <= finished[key] < 10_000, (key, finished[key])
    assert [(e["src"], e["dst"]) for e in events(logs, "state_changed")] == [
        ("idle", "listening"),
        ("listening", "thinking"),
        ("thinking", "speaking"),
        ("speaking", "idle"),
    ]
    # what went over the wire
    probe, question = asr_stub.sessions  # the start-up probe opens and closes one session, with no audio
    assert not probe.audio and question.frame_sizes
    assert all(size == 1920 for size in question.frame_sizes[:-1])
    assert [m.content for m in _user_messages(llm_stub)] == ["what is the weather like today"]
    assert [r.text for r in tts_stub.requests] == ["It is sunny today.", "Take a walk!"]
    # the reply is really in the output, at the TTS rate, after the question ended
    assert _read(out)[1] == 24000
    earcon = loud_span(out)
    assert earcon is not None and earcon[0] < 0.1  # "I am listening", at once
    span = loud_span(out, after=0.3)
    assert span is not None
    assert question_end < span[0] < question_end + 5, (question_end, span)
    assert span[1] - span[0] > 1.0  # two sentences of espeak speech


def _user_messages(llm_stub: object) -> list:
    from states.events import ChatMessage

    chats = [r for r in llm_stub.requests if r.body is not None]  # type: ignore[attr-defined]  # not the warm-ups
    body = chats[-1].body
    return [ChatMessage(m["role"], m["content"]) for m in body["messages"] if m["role"] == "user"]


async def test_a_chinese_turn_over_the_websocket_tts(tmp_path: Path) -> None:
    qwav, _ = question_wav(tmp_path, "what is the weather like today")  # the stand-in hears it as Chinese
    out = tmp_path / "reply.wav"
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(
            stack,
            asr=FunAsrBehaviour(flavour="python-2026", transcript_override="今天天气怎么样？"),
            llm=demo_llm_behaviour(answers=SHORT_ANSWERS),
            tts_protocol="websocket",
        )
        settings = settings_for(stubs, qwav, out, flavour="python-2026")
        assert settings.tts.protocol == "websocket"
        code, _, logs = await run_once(settings)
        texts = [r.text for r in stubs[2].requests]
    assert code == EXIT_ANSWERED
    (finished,) = events(logs, "turn_finished")
    assert finished["transcript"] == "今天天气怎么样？"
    assert finished["reply"] == "今天天气晴朗，适合散步。"
    assert texts == ["今天天气晴朗，", "适合散步。"]
    assert loud_span(out) is not None


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("service", ["asr", "llm", "tts"])
async def test_a_dead_or_broken_service_fails_the_turn_with_an_earcon(tmp_path: Path, service: str) -> None:
    qwav, question_end = question_wav(tmp_path, "what is the weather like today")
    out = tmp_path / "reply.wav"
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(
            stack,
            llm=demo_llm_behaviour(answers=SHORT_ANSWERS, misbehave="error_500" if service == "llm" else None),
            tts=PaddleSpeechBehaviour(misbehave="refuse" if service == "tts" else None),
        )
        settings = settings_for(stubs, qwav, out)
        # the apology's synthesis may take a while on a loaded machine: the earcon is not what is tested here
        settings = Settings(**{**settings.__dict__, "reply": ReplySettings(apology_timeout_s=10)})
        if service == "asr":
            settings = Settings(**{**settings.__dict__, "asr": AsrSettings(url=f"ws://127.0.0.1:{_dead_port()}")})
        code, _, logs = await run_once(settings)
        spoken = [r.text for r in stubs[2].requests]
    assert code == EXIT_FAILED
    (failed,) = events(logs, "turn_failed")
    assert failed["service"] == service and failed["reason"]
    assert events(logs, "turn_finished")[0]["outcome"] == "failed"
    span = loud_span(out, after=0.3)  # after the listening earcon
    assert span is not None
    if service == "tts":
        assert span[1] - span[0] < 1.0  # the error earcon and nothing else: the TTS cannot apologise
    else:
        assert spoken[-1] == DEFAULT_APOLOGY  # the TTS still works: the robot says sorry
        assert events(logs, "failure_announced")[0]["sound"] == "apology"
    if service == "asr":
        assert span[0] < question_end  # no point listening to a question nobody can recognise
    else:
        assert span[0] > question_end


async def test_the_daemon_survives_a_failed_turn_and_answers_the_next(tmp_path: Path) -> None:
    qwav, _ = question_wav(tmp_path, "what is the weather like today", gap_s=4.0, second="tell me a joke")
    out = tmp_path / "reply.wav"
    turns: list[Turn] = []
    wakes: list[asyncio.Future[bool]] = []
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(
            stack, llm=demo_llm_behaviour(answers={"joke": "A robot walks into a bar."}, misbehave="error_500")
        )
        llm_stub = stubs[1]

        async def turn_ended(turn: Turn) -> None:
            turns.append(turn)
            if len(turns) == 1:
                llm_stub.behaviour = demo_llm_behaviour(answers={"joke": "A robot walks into a bar."})
                assert app.assistant is not None
                wakes.append(asyncio.ensure_future(app.assistant.wake()))
            else:
                stop.set()

        app = App(settings_for(stubs, qwav, out), on_turn_end=turn_ended)
        await asyncio.wait_for(app.run(stop), RUN_TIMEOUT)
    assert [t.outcome for t in turns] == ["failed", "answered"]
    assert turns[0].failed_service == "llm"
    assert turns[1].transcript == "tell me a joke" and turns[1].reply == "A robot walks into a bar."


async def test_run_once_from_the_command_line(tmp_path: Path) -> None:
    """The console script with a TOML file, as scripts use it: exit 0 and JSON lines on stdout."""
    import json
    import sys

    qwav, _ = question_wav(tmp_path, "who are you")
    out = tmp_path / "reply.wav"
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers={"who": "I am MOSS."}))
        config = tmp_path / "moss-voice.toml"
        config.write_text(
            f'[asr]\nurl = "{asr.url}"\n[llm]\nurl = "{llm.url}"\n[tts]\nurl = "{tts.url}"\n'
            f'[audio]\ninput = "wav:{qwav}"\noutput = "wav:{out}"\n[log]\nformat = "json"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--config",
            str(config),
            "--once",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    (finished,) = [e for e in lines if e["event"] == "turn_finished"]
    assert finished["transcript"] == "who are you" and finished["reply"] == "I am MOSS."
    assert loud_span(out) is not None


async def run_until(app: App, stop_at: str, **fields: object) -> int:
    """Run ``app``; set its stop event (as SIGTERM does) once the event ``stop_at`` with ``fields``
    was emitted; return the exit code."""
    stop = asyncio.Event()
    subscription = app.bus.subscribe()
    running = asyncio.create_task(app.run(stop))
    async for event in subscription:
        if event.name == stop_at and all(event.fields.get(k) == v for k, v in fields.items()):
            stop.set()
            break
    return await asyncio.wait_for(running, RUN_TIMEOUT)


async def test_once_stopped_by_a_signal_mid_turn_exits_stopped_not_answered(tmp_path: Path) -> None:
    qwav, _ = question_wav(tmp_path, "what is the weather like today")
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, llm=demo_llm_behaviour(answers=SHORT_ANSWERS))
        app = App(settings_for(stubs, qwav, tmp_path / "reply.wav"), once=True)
        code = await run_until(app, "state_changed", dst="listening")
    assert code == EXIT_STOPPED
    assert [t.outcome for t in app.turns] == ["stopped"]


async def test_a_daemon_stopped_after_a_failed_turn_exits_0(tmp_path: Path) -> None:
    """systemctl stop must not leave a failed unit because the last turn failed."""
    qwav, _ = question_wav(tmp_path, "what is the weather like today")
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, llm=demo_llm_behaviour(answers=SHORT_ANSWERS, misbehave="error_500"))
        app = App(settings_for(stubs, qwav, tmp_path / "reply.wav"))
        code = await run_until(app, "turn_finished", outcome="failed")
    assert code == EXIT_ANSWERED
    assert [t.outcome for t in app.turns] == ["failed"]
