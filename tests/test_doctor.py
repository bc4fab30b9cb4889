"""``moss-voice doctor`` against the stand-ins up and down, a bad config, WAV devices, and the
system checks on a made-up /dev and runtime directory."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import wave
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest

from daemon.__main__ import main
from daemon.cli_doctor import run_doctor
from daemon.config import AudioSettings, ControlSettings, HotwordSettings, Settings, WakeSettings
from daemon.doctor import Check, Finding, failed, run_checks, to_table
from daemon.doctor.audio import check_device_list, check_microphone, check_speaker, level_dbfs
from daemon.doctor.run import DoctorOptions, doctor, system_checks
from daemon.doctor.services import check_hotword
from daemon.doctor.system import User, check_control_socket, check_device_nodes, check_sound_server
from daemon.tools.stubs.runner import start_stubs
from tests.pulse import pulse_server

SERVICES = ("asr", "llm", "tts")


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
    return path


def tone_wav(path: Path, amplitude: float, seconds: float = 1.5) -> Path:
    t = np.arange(int(16000 * seconds)) / 16000
    return write_wav(path, amplitude * 32767 * np.sin(2 * np.pi * 300 * t))


def config_file(tmp_path: Path, asr: str, llm: str, tts: str, extra: str = "") -> Path:
    mic = tone_wav(tmp_path / "mic.wav", 0.1)
    path = tmp_path / "moss-voice.toml"
    path.write_text(
        f'[asr]\nurl = "{asr}"\n[llm]\nurl = "{llm}"\nconnect_timeout_s = 0.5\n[tts]\nurl = "{tts}"\n'
        f'[audio]\ninput = "wav:{mic}"\noutput = "wav:{tmp_path / "out.wav"}"\n'
        f'[wake.hotword]\nengine = "off"\n{extra}',
        encoding="utf-8",
    )
    return path


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def stub_urls() -> AsyncIterator[tuple[str, str, str]]:
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack)
        yield asr.url, llm.url, tts.url


async def test_every_service_check_passes_against_the_stand_ins(
    stub_urls: tuple[str, str, str], tmp_path: Path
) -> None:
    findings = by_check(await doctor(DoctorOptions(config=config_file(tmp_path, *stub_urls))))
    for name, url in zip(SERVICES, stub_urls, strict=True):
        assert findings[name].result == "ok", findings[name]
        assert url in findings[name].detail
    assert "serves 'moss'" in findings["llm"].detail
    assert "Hz" in findings["tts"].detail and "s of audio" in findings["tts"].detail
    assert findings["config"].result == "ok"
    assert findings["microphone"].result == "ok" and "dBFS" in findings["microphone"].detail
    assert not (tmp_path / "out.wav").exists(), "nothing is played (or written) without --play"


async def test_each_service_fails_naming_its_url_when_nothing_listens(tmp_path: Path) -> None:
    port = dead_port()
    urls = (
        f"ws://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/v1",
        f"http://127.0.0.1:{port}/paddlespeech/tts/streaming",
    )
    args = argparse.Namespace(config=str(config_file(tmp_path, *urls)), json=False, play=False, user=None)
    out = io.StringIO()
    assert await run_doctor(args, out) == 1
    table = out.getvalue()
    rows = {line.split()[0]: line for line in table.splitlines() if line and not line.startswith(" ")}
    for name in SERVICES:
        assert rows[name].split()[1] == "FAIL", table
        assert f"127.0.0.1:{port}" in rows[name]
    assert "-> start the FunASR server" in table
    assert "checks:" in table.splitlines()[-1]


async def test_each_endpoint_of_a_service_is_checked(stub_urls: tuple[str, str, str]) -> None:
    from daemon.config import LlmSettings
    from daemon.doctor.services import check_llm

    dead = f"http://127.0.0.1:{dead_port()}/v1"
    settings = Settings(llm=LlmSettings(url=(dead, stub_urls[1]), connect_timeout_s=0.5))
    findings = await check_llm(settings, max_wait_s=0.5)
    assert [(f.check, f.result) for f in findings] == [("llm", "FAIL"), ("llm", "ok")]
    assert dead in findings[0].detail and stub_urls[1] in findings[1].detail


async def test_json_form_lists_every_check(stub_urls: tuple[str, str, str], tmp_path: Path) -> None:
    args = argparse.Namespace(config=str(config_file(tmp_path, *stub_urls)), json=True, play=False, user=None)
    out = io.StringIO()
    status = await run_doctor(args, out)
    report = json.loads(out.getvalue())
    assert report["ok"] is (status == 0)
    checks = {c["check"]: c for c in report["checks"]}
    assert {"config", "audio devices", "microphone", "speaker", *SERVICES, "hotword", "user"} <= set(checks)
    assert all(set(c) == {"check", "result", "detail", "fix"} for c in report["checks"])
    assert all(checks[name]["result"] == "ok" for name in SERVICES)


def test_a_bad_config_names_every_problem_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[asr]\nflavour = "cpp"\n[llm]\nmodle = "x"\n', encoding="utf-8")
    assert main(["doctor", "--config", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = [c for c in report["checks"] if c["check"] == "config"]
    assert len(problems) == 2 and all(c["result"] == "FAIL" for c in problems)
    assert any("asr.flavour" in c["detail"] for c in problems)
    assert any("llm.modle" in c["detail"] for c in problems)
    assert any(c["check"] == "user" for c in report["checks"]), "the system checks still run"


async def test_microphone_level_and_silence(tmp_path: Path) -> None:
    loud = await check_microphone(AudioSettings(input=f"wav:{tone_wav(tmp_path / 'a.wav', 0.5)}"))
    assert loud[0].result == "ok"
    assert -12 < float(loud[0].detail.split("level ")[1].split()[0]) < -6  # a 0.5 sine: -9 dBFS
    silent = await check_microphone(AudioSettings(input=f"wav:{write_wav(tmp_path / 's.wav', np.zeros(16000))}"))
    assert silent[0].result == "ok" and "silent" in silent[0].detail  # a file, not a muted card (see the pulse test)
    missing = await check_microphone(AudioSettings(input=f"wav:{tmp_path / 'nope.wav'}"))
    assert missing[0].result == "FAIL" and "nope.wav" in missing[0].detail


def test_level_dbfs() -> None:
    assert level_dbfs(np.full(100, 32767, dtype=np.int16).tobytes()) == pytest.approx(0, abs=0.01)
    assert level_dbfs(bytes(200)) == float("-inf")


async def test_speaker_plays_a_tone_only_when_asked(tmp_path: Path) -> None:
    audio = AudioSettings(output=f"wav:{tmp_path / 'out.wav'}", output_rate=16000)
    quiet = await check_speaker(audio, play=False)
    assert quiet[0].result == "ok" and not (tmp_path / "out.wav").exists()
    played = await check_speaker(audio, play=True)
    assert played[0].result == "ok" and "tone" in played[0].detail
    with wave.open(str(tmp_path / "out.wav")) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert samples.size >= 16000 * 0.3 - 1 and np.abs(samples).max() > 5000


async def test_a_check_that_hangs_or_raises_does_not_stop_the_others() -> None:
    async def hangs() -> list[Finding]:
        await asyncio.Event().wait()
        return []

    async def raises() -> list[Finding]:
        raise RuntimeError("boom")

    async def fine() -> list[Finding]:
        return [Finding("fine", "ok", "yes")]

    findings = await run_checks(
        [Check("hangs", hangs, 0.05, "ws://x:1"), Check("raises", raises, 1.0), Check("fine", fine, 1.0)]
    )
    assert [(f.check, f.result) for f in findings] == [("hangs", "FAIL"), ("raises", "FAIL"), ("fine", "ok")]
    assert "ws://x:1" in findings[0].detail and "boom" in findings[1].detail
    assert failed(findings) and "3 checks: 2 FAIL, 0 warn" in to_table(findings)


def _user(uid: int = 1000, gids: tuple[int, ...] = (1000,)) -> User:
    return User("robot", uid, frozenset(gids), frozenset(str(g) for g in gids))


def test_device_nodes_by_mode_owner_and_group(tmp_path: Path) -> None:
    (tmp_path / "snd").mkdir()
    node = tmp_path / "snd" / "pcmC0D0c"
    node.touch()
    node.chmod(0o660)
    gid = node.stat().st_gid
    s = Settings(audio=AudioSettings(input="pyaudio:default"))
    assert check_device_nodes(_user(gids=(gid,)), s, dev=tmp_path)[0].result == "ok"
    denied = check_device_nodes(_user(uid=54321, gids=(54321,)), s, dev=tmp_path)[0]
    assert denied.result == "FAIL" and "pcmC0D0c" in denied.detail
    assert check_device_nodes(_user(), s, dev=tmp_path / "empty")[0].result == "FAIL"


def test_sound_server_found_by_its_socket(tmp_path: Path) -> None:
    s = Settings(audio=AudioSettings(input="pyaudio:default"))
    (tmp_path / "pulse").mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "pulse" / "native"))
        server.listen()
        found = check_sound_server(_user(), s, {"XDG_RUNTIME_DIR": str(tmp_path)})[0]
    assert found.result == "ok" and "pulse/native" in found.detail and "systemctl --user" in found.fix
    none = check_sound_server(_user(uid=54321), s, {"XDG_RUNTIME_DIR": str(tmp_path / "gone")})[0]
    assert none.result == "warn" and "ALSA devices directly" in none.detail


def test_control_socket_directory(tmp_path: Path) -> None:
    gone = Settings(control=ControlSettings(listen=f"unix:{tmp_path}/missing/ctl.sock"))
    assert check_control_socket(_user(uid=0), gone)[0].result == "FAIL"
    there = Settings(control=ControlSettings(listen=f"unix:{tmp_path}/ctl.sock"))
    assert check_control_socket(_user(uid=0), there)[0].result == "ok"
    assert check_control_socket(_user(), Settings()) == []


async def test_audio_checks_through_a_private_pulseaudio_server(tmp_path: Path) -> None:
    """pyaudio:default under a sound server: listed, a silent microphone warned about, the tone
    heard on the speaker's monitor, and the server's socket found."""
    with pulse_server() as pulse:
        audio = AudioSettings(input="pyaudio:default", output="pyaudio:default", output_rate=16000)
        listed = (await check_device_list(audio))[0]
        assert listed.result == "ok" and "0 input(s)" not in listed.detail
        mic = (await check_microphone(audio))[0]
        assert mic.result == "warn" and "silent" in mic.detail  # nothing plays into the virtual microphone
        with pulse.record_speaker() as recording:
            played = (await check_speaker(audio, play=True))[0]
            heard = recording.stop()
        assert played.result == "ok"
        assert np.abs(heard).max() > 3000, "the tone reached the speaker's monitor"
        server = check_sound_server(_user(), Settings(audio=audio), dict(os.environ))[0]
        assert server.result == "ok" and "PulseAudio" in server.detail


async def test_hotword_engine_builds_or_names_its_missing_model(tmp_path: Path) -> None:
    built = (await check_hotword(Settings()))[0]
    assert built.result == "ok" and "microwakeword" in built.detail
    missing = str(tmp_path / "robot.json")
    broken = Settings(wake=WakeSettings(hotword=HotwordSettings(phrases=(missing,))))
    failure = (await check_hotword(broken))[0]
    assert failure.result == "FAIL" and missing in failure.detail
    off = Settings(wake=WakeSettings(hotword=HotwordSettings(engine="off")))
    assert (await check_hotword(off))[0].result == "ok"


async def test_another_users_checks_ignore_this_shells_sound_server() -> None:
    options = DoctorOptions(user="nobody", env={"PULSE_SERVER": "tcp:elsewhere:4713"})
    checks = by_check(await run_checks(system_checks(options, Settings())))
    assert "nobody" in checks["user"].detail
    assert "elsewhere" not in checks["sound server"].detail
    unknown = await run_checks(system_checks(DoctorOptions(user="no-such-user-here"), Settings()))
    assert [(f.check, f.result) for f in unknown] == [("user", "FAIL")]
