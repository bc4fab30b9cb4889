"""A daemon process that takes 20 turns in a row, each started a different way: the wake word
said with the question in one breath, the follow-up window, POST /wake, GET /listen and POST /say;
on the live audio path (PyAudio on a private PulseAudio server) with the control API on a Unix
socket, against the loopback stand-ins. The events are read from the daemon's JSON log and from
GET /events, which must agree."""

from __future__ import annotations

import asyncio
import json
import subprocess
import wave
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from daemon.tools.bench.daemon_process import DaemonProcess
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from tests.pulse import PulseServer, pulse_server

pytestmark = pytest.mark.slow
QUESTIONS = ["what time is it", "tell me a joke", "who are you", "turn on the kitchen light"]
ANSWER = "Done."
FOLLOW_UP_S = 2.5
TURN_TIMEOUT = 40.0


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    with pulse_server() as server:
        yield server


def read_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def write_pcm(path: Path, *parts: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.concatenate(parts).tobytes())
    return path


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), dtype="<i2")


def espeak(text: str, path: Path, voice: str) -> np.ndarray:
    """espeak-ng's plain en-us voice is the one microWakeWord's hey_mycroft model hears."""
    raw = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    subprocess.run(["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(path)], input=raw, check=True)
    return read_pcm(path)


def write_config(path: Path, stubs: tuple[Any, ...], socket: Path) -> Path:
    asr, llm, tts = stubs
    q = json.dumps
    path.write_text(
        f"""
[asr]
url = {q(asr.url)}
final_timeout_s = 1.0
[llm]
url = {q(llm.url)}
[tts]
url = {q(tts.url)}
[audio]
input = "pyaudio:default"
output = "pyaudio:default"
[vad]
end_silence_ms = 500
no_speech_timeout_s = 8
[wake]
on_start = false
follow_up_s = {FOLLOW_UP_S}
[wake.hotword]
engine = "microwakeword"
phrases = ["hey_mycroft"]
[control]
listen = {q("unix:" + str(socket))}
[log]
format = "json"
""",
        encoding="utf-8",
    )
    return path


async def read_sse(client: httpx.AsyncClient, into: list[dict[str, Any]], opened: asyncio.Event) -> None:
    async with client.stream("GET", "http://daemon/events", timeout=None) as response:
        assert response.status_code == 200
        opened.set()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                into.append(json.loads(line[5:]))


async def test_twenty_turns_each_started_a_different_way(pulse: PulseServer, tmp_path: Path) -> None:
    wake_word = espeak("hey mycroft", tmp_path / "wake.wav", "en-us")
    spoken = {q: read_pcm(make_question_wav(q, tmp_path / f"raw{i}.wav")) for i, q in enumerate(QUESTIONS)}
    questions = {
        q: write_pcm(tmp_path / f"q{i}.wav", silence(0.6), pcm, silence(0.3))
        for i, (q, pcm) in enumerate(spoken.items())
    }
    one_breath = {
        q: write_pcm(tmp_path / f"w{i}.wav", silence(0.4), wake_word, silence(0.1), pcm, silence(0.3))
        for i, (q, pcm) in enumerate(spoken.items())
    }
    socket = tmp_path / "control.sock"
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(stack, llm=demo_llm_behaviour(default_answer=ANSWER, answers={}))
        daemon = await DaemonProcess.spawn(write_config(tmp_path / "moss.toml", stubs, socket), cwd=tmp_path)
        stack.push_async_callback(daemon.aclose)
        await daemon.wait_ready()
        await daemon.wait_for("control_api_listening")
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket)), timeout=30)
        )
        streamed: list[dict[str, Any]] = []
        opened = asyncio.Event()
        sse = asyncio.create_task(read_sse(client, streamed, opened))
        stack.callback(sse.cancel)
        await asyncio.wait_for(opened.wait(), 10)
        first_event = len(daemon.events)

        async def play(path: Path) -> None:
            await asyncio.to_thread(pulse.play_into_mic(path).wait, 30)

        async def finished(after: int, **fields: Any) -> dict[str, Any]:
            return await daemon.wait_for("turn_finished", after=after, timeout=TURN_TIMEOUT, **fields)

        turns: list[dict[str, Any]] = []
        for question in QUESTIONS:
            # 1. the wake word and the question in one breath
            mark = len(daemon.events)
            await play(one_breath[question])
            turns.append(await finished(mark))
            # 2. the follow-up window: the next question needs no wake word
            mark = len(daemon.events)
            await play(questions[question])
            turns.append(await finished(mark))
            await finished(len(daemon.events), outcome="no_speech")  # the window closes, quietly
            # 3. POST /wake, then the question
            mark = len(daemon.events)
            assert (await client.post("http://daemon/wake")).status_code == 202
            await daemon.wait_for("state_changed", after=mark, dst="listening", timeout=TURN_TIMEOUT)
            await play(questions[question])
            turns.append(await finished(mark))
            await finished(len(daemon.events), outcome="no_speech")
            # 4. GET /listen: the text comes back, unanswered
            mark = len(daemon.events)
            listening = asyncio.create_task(client.get("http://daemon/listen"))
            await daemon.wait_for("state_changed", after=mark, dst="listening", timeout=TURN_TIMEOUT)
            await play(questions[question])
            response = await asyncio.wait_for(listening, TURN_TIMEOUT)
            assert response.status_code == 200 and response.text == question
            turns.append(await finished(mark))
            # 5. POST /say: the robot says what it is told
            mark = len(daemon.events)
            said = await client.post("http://daemon/say", json={"text": f"You asked: {question}."})
            assert said.status_code == 202
            turns.append(await finished(mark))

        status = (await client.get("http://daemon/status")).json()
        code, _ = await daemon.stop()

    assert code == 0, daemon.tail()
    assert [t["wake_source"] for t in turns] == ["hotword", "follow_up", "control", "listen", "say"] * 4
    assert [t["outcome"] for t in turns] == ["answered", "answered", "answered", "listened", "said"] * 4
    asked = [t["transcript"] for t in turns if t["outcome"] != "said"]
    assert asked == [q for q in QUESTIONS for _ in range(4)]  # every question heard whole, every time
    assert all(t["reply"] == ANSWER for t in turns if t["outcome"] == "answered")
    assert status["state"] == "idle" and status["last_turn"]["outcome"] == "said"
    # GET /events carried the same events, in the same order, as the log
    shown = ("state_changed", "turn_finished")
    logged = [(e["event"], e.get("turn_id")) for e in daemon.events[first_event:] if e["event"] in shown]
    seen = [(e["event"], e.get("turn_id")) for e in streamed if e["event"] in shown]
    assert len(logged) >= 100 and seen[: len(logged)] == logged
