"""`make demo` runs `moss-voice demo`: it must keep answering, and say so in plain words."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


async def test_demo_answers_the_spoken_question_into_a_wav(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "demo", "--workdir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "heard:      'what is the weather like today'" in text
    assert "answered:   'It is sunny today" in text
    steps = ["listening: ", "heard: 'what is the weather like today'", "thinking: ", "  says: 'It is sunny today,'",
             "speaking: ", "idle again", "done: the answer began"]  # fmt: skip
    at = [text.index(step) for step in steps]  # the story of the turn, for a person, in order
    assert at == sorted(at)
    assert "state_changed" not in text  # the developers' log went to demo.log
    assert '"event": "state_changed"' in (tmp_path / "demo.log").read_text(encoding="utf-8")
    assert "end of speech -> first reply sample played" in text
    # the answer was prepared during the pause; it still began after the question, not at the earcon
    began = int(re.search(r"done: the answer began (-?\d+) ms after the question ended", text).group(1))  # type: ignore[union-attr]
    assert 0 <= began < 2000
    with wave.open(str(tmp_path / "reply.wav"), "rb") as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        rate = w.getframerate()
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    assert len(loud) / rate > 3.0  # several seconds of spoken answer


async def test_a_missing_microphone_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[audio]\ninput = "wav:{tmp_path}/nope.wav"\noutput = "wav:{tmp_path}/r.wav"\n'
                      '[log]\nformat = "json"\n')  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config), "--once",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()[-2000:]
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    (error,) = [e for e in events if e["event"] == "hardware_error"]
    assert "nope.wav" in error["error"] and "microphone" in error["error"]
