"""Secrets: from the environment or systemd credentials only, never in a log line (JSON, journal,
console, a traceback, a library's record), never in the doctor's report, never handed to a hook."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import sys
import threading
import wave
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import structlog

from daemon.app import EXIT_ANSWERED, EXIT_FAILED, App
from daemon.config import API_KEY_ENV, CONTROL_TOKEN_ENV, HooksSettings, LlmSettings, Settings
from daemon.config_load import load_settings, settings_from_dict
from daemon.doctor import to_json, to_table
from daemon.doctor.run import DoctorOptions, doctor
from daemon.errors import ConfigError
from daemon.event_bus import Event
from daemon.hooks import Hooks
from daemon.logs import REDACTED, configure_logging, redact_secrets
from daemon.secrets import CREDENTIALS, CREDENTIALS_DIRECTORY, child_environment, known_secrets, secret_values
from daemon.tools.stubs.funasr import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs

KEY = "sk-moss-7f3a9c1e5b2d4a68"
TOKEN = "ctl-2b8e6d0f4c1a9e73"
RUN_TIMEOUT = 60


def question(tmp_path: Path, text: str = "who are you") -> Path:
    """The spoken question after 0.4 s of silence (the VAD hears its start)."""
    with wave.open(str(make_question_wav(text, tmp_path / "raw.wav")), "rb") as raw:
        pcm = raw.readframes(raw.getnframes())
    path = tmp_path / "question.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(bytes(int(0.4 * 16000) * 2) + pcm)
    return path


def credentials(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


# --- where secrets come from -------------------------------------------------------------------


def test_secrets_come_from_the_environment() -> None:
    settings = settings_from_dict({}, {API_KEY_ENV: KEY, CONTROL_TOKEN_ENV: TOKEN})
    assert settings.llm.api_key == KEY and settings.control.token == TOKEN
    assert secret_values(settings) == (KEY, TOKEN)
    assert secret_values(Settings()) == ()


def test_systemd_credentials_hold_the_secrets_and_win_over_the_environment(tmp_path: Path) -> None:
    directory = credentials(tmp_path, llm_api_key=KEY + "\n", control_token=f"  {TOKEN}\n")
    env = {CREDENTIALS_DIRECTORY: str(directory), API_KEY_ENV: "stale-key-from-an-env-file"}
    settings = settings_from_dict({}, env)
    assert settings.llm.api_key == KEY and settings.control.token == TOKEN  # trimmed, as `echo` adds a newline
    assert set(known_secrets(env)) == {KEY, TOKEN, "stale-key-from-an-env-file"}  # both kept out of the logs


@pytest.mark.parametrize("empty", ["", "\n"])
def test_an_empty_or_missing_credential_leaves_the_environment_s_value(tmp_path: Path, empty: str) -> None:
    directory = credentials(tmp_path, llm_api_key=empty)  # the unit's default (SetCredential=llm_api_key:\n)
    settings = settings_from_dict({}, {CREDENTIALS_DIRECTORY: str(directory), API_KEY_ENV: KEY})
    assert settings.llm.api_key == KEY and settings.control.token is None


def test_a_credential_that_cannot_be_read_is_a_config_problem(tmp_path: Path) -> None:
    directory = credentials(tmp_path)
    (directory / "llm_api_key").mkdir()  # not a file
    (directory / "control_token").write_bytes(b"x" * 70_000)
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({}, {CREDENTIALS_DIRECTORY: str(directory)})
    assert [p.split(":")[0] for p in caught.value.problems] == ["credential llm_api_key", "credential control_token"]
    assert "cannot read" in caught.value.problems[0] and "not a key" in caught.value.problems[1]


def test_a_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "moss.toml"
    path.write_text(f'[llm]\napi_key = "{KEY}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert KEY not in str(caught.value)
    assert caught.value.problems == [
        f"llm.api_key: secrets do not go in the file; set {API_KEY_ENV} in the environment"
    ]


def test_the_system_unit_passes_each_credential_with_a_default_when_its_file_is_missing() -> None:
    lines = (Path(__file__).resolve().parents[1] / "systemd" / "moss-voice.service").read_text().splitlines()
    for name in CREDENTIALS.values():
        assert f"LoadCredential={name}:/etc/credstore/moss-voice.{name}" in lines
        assert f"SetCredential={name}:\\n" in lines  # the default that keeps a missing file from failing the start
    assert "EnvironmentFile=-/etc/moss-voice/env" in lines  # the environment still works


def test_a_child_process_environment_has_no_secrets() -> None:
    env = {"PATH": "/usr/bin", API_KEY_ENV: KEY, CONTROL_TOKEN_ENV: TOKEN, CREDENTIALS_DIRECTORY: "/run/c"}
    assert child_environment(env) == {"PATH": "/usr/bin"}


async def test_a_hook_runs_without_the_secrets_and_its_arguments_never_reach_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    monkeypatch.setenv(CONTROL_TOKEN_ENV, TOKEN)
    monkeypatch.setenv("MOSS_VOICE_TEST_KEPT", "yes")
    out, marker = tmp_path / "env.json", tmp_path / "injected"
    script = "import json, os, sys; json.dump({'env': dict(os.environ), 'argv': sys.argv[1:]}, open(sys.argv[1], 'w'))"
    hostile = f"$(touch {marker}); touch {marker}"
    hooks = Hooks(HooksSettings(on_wake=(sys.executable, "-c", script, str(out), hostile)))
    hooks.fire(Event("wake", {"turn_id": 1, "source": "button", "word": None}, 1, 0.0))
    await hooks.aclose(grace_s=10)
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(out), hostile] and not marker.exists()
    assert seen["env"]["MOSS_VOICE_TEST_KEPT"] == "yes"
    assert API_KEY_ENV not in seen["env"] and CONTROL_TOKEN_ENV not in seen["env"]
    assert KEY not in out.read_text() and TOKEN not in out.read_text()


# --- redaction ---------------------------------------------------------------------------------


def test_the_redaction_finds_a_secret_anywhere_in_an_event() -> None:
    redact = redact_secrets([KEY, "", TOKEN])
    event = redact(
        None,
        "info",
        {
            "event": f"odd {KEY}",
            "header": f"Bearer {KEY}",
            "nested": {"list": [1, f"x{TOKEN}y", (KEY,)], KEY: True},
            "error": ValueError(f"the server said {KEY}"),
            "raw": f"key={KEY}".encode(),
            "Authorization": "Basic anything",
            "headers": {"authorization": "whatever", "accept": "text/event-stream"},
            "count": 3,
            "flag": None,
        },
    )
    assert KEY not in repr(event) and TOKEN not in repr(event)
    assert event["event"] == f"odd {REDACTED}" and event["header"] == f"Bearer {REDACTED}"
    assert event["nested"] == {"list": [1, f"x{REDACTED}y", [REDACTED]], REDACTED: True}
    assert event["error"] == f"the server said {REDACTED}" and event["raw"] == f"key={REDACTED}"
    assert event["Authorization"] == REDACTED
    assert event["headers"] == {"authorization": REDACTED, "accept": "text/event-stream"}
    assert event["count"] == 3 and event["flag"] is None


def test_without_secrets_the_fields_are_left_as_they_are() -> None:
    error = ValueError("x")
    event = redact_secrets([])(None, "info", {"event": "e", "error": error, "Authorization": "Bearer x"})
    assert event == {"event": "e", "error": error, "Authorization": REDACTED}


def _log_everything(key: str) -> None:
    """One of each way a value reaches a log line."""
    log = structlog.get_logger()
    log.info("llm_request", url="https://llm/v1", headers={"Authorization": f"Bearer {key}"})
    log.warning("llm_error", error=f"401 for key {key}")
    try:
        raise RuntimeError(f"failed with {key}")
    except RuntimeError:
        log.exception("crashed")
    logging.getLogger("httpx").warning("library record mentioning %s", key)
    try:
        raise RuntimeError(f"library failure with {key}")
    except RuntimeError:
        logging.getLogger("websockets").exception("library traceback")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_format_shows_a_secret_of_the_environment(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("debug", fmt, stream=out, environ={API_KEY_ENV: KEY})
    _log_everything(KEY)
    text = out.getvalue()
    for needle in ("llm_request", "llm_error", "crashed", "library record", "library traceback", "RuntimeError"):
        assert needle in text
    assert KEY not in text
    assert text.count(REDACTED) >= 5  # one per line, and in each traceback


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A journal socket and what arrives on it (read by a thread, so the daemon never waits)."""
    path = tmp_path / "journal.socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(0.1)
    received: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                received.append(server.recv(1 << 20))
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=read, name="journal-reader", daemon=True)
    reader.start()
    yield path, received
    stop.set()
    reader.join(5)
    server.close()


def test_the_journal_format_shows_no_secret(journal: tuple[Path, list[bytes]]) -> None:
    path, received = journal
    fallback = io.StringIO()
    configure_logging("debug", "journal", stream=fallback, journal_socket=path, secrets=[KEY])
    _log_everything(KEY)
    structlog.get_logger().info("last")
    for _ in range(100):
        if any(b"MESSAGE=last" in d for d in received):
            break
        threading.Event().wait(0.02)
    blob = b"".join(received)
    assert b"library traceback" in blob and b"RuntimeError" in blob
    assert KEY.encode() not in blob and KEY not in fallback.getvalue()


# --- a whole daemon: every log line of a run --------------------------------------------------


async def _daemon_run(tmp_path: Path, env: dict[str, str], stub_key: str) -> tuple[int, str, list[dict]]:
    """``moss-voice run --once`` at debug level, JSON lines, against the stand-ins (the LLM
    requiring ``stub_key``); its exit code, all it printed, and its JSON log lines."""
    qwav = question(tmp_path)
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(
            stack, llm=demo_llm_behaviour(answers={"who": "I am MOSS."}, api_key=stub_key)
        )
        config = tmp_path / "moss-voice.toml"
        config.write_text(
            f'[asr]\nurl = "{asr.url}"\n[llm]\nurl = "{llm.url}"\n[tts]\nurl = "{tts.url}"\n'
            f'[audio]\ninput = "wav:{qwav}"\noutput = "wav:{tmp_path / "reply.wav"}"\n'
            '[wake]\nfollow_up_s = 0\n[log]\nlevel = "debug"\nformat = "json"\n'
        )
        base = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, CONTROL_TOKEN_ENV, CREDENTIALS_DIRECTORY)}
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
            env={**base, **env},
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    text = stdout.decode() + stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert proc.returncode is not None
    return proc.returncode, text, lines


def _outcome(lines: list[dict]) -> str:
    (finished,) = [e for e in lines if e["event"] == "turn_finished"]
    return str(finished["outcome"])


@pytest.mark.slow
async def test_a_daemon_turn_with_a_key_logs_no_trace_of_it(tmp_path: Path) -> None:
    code, text, lines = await _daemon_run(tmp_path, {API_KEY_ENV: KEY, CONTROL_TOKEN_ENV: TOKEN}, stub_key=KEY)
    assert code == EXIT_ANSWERED, text[-2000:]
    assert _outcome(lines) == "answered" and len(lines) > 20  # debug: many lines, none with the key
    assert KEY not in text and TOKEN not in text


@pytest.mark.slow
async def test_a_wrong_key_fails_the_turn_and_logs_no_trace_of_it(tmp_path: Path) -> None:
    code, text, lines = await _daemon_run(tmp_path, {API_KEY_ENV: KEY}, stub_key="the-server-wants-another")
    assert code == EXIT_FAILED, text[-2000:]
    assert _outcome(lines) == "failed"
    assert any(e["event"] == "llm_error" and "401" in str(e.get("error")) for e in lines)
    assert KEY not in text


@pytest.mark.slow
async def test_a_key_from_a_systemd_credential_is_used_and_logs_no_trace_of_it(tmp_path: Path) -> None:
    directory = credentials(tmp_path, llm_api_key=KEY + "\n")
    code, text, lines = await _daemon_run(tmp_path, {CREDENTIALS_DIRECTORY: str(directory)}, stub_key=KEY)
    assert code == EXIT_ANSWERED, text[-2000:]
    assert _outcome(lines) == "answered"
    assert KEY not in text


@pytest.mark.slow
async def test_a_daemon_turn_in_the_journal_format_logs_no_trace_of_the_key(
    tmp_path: Path, journal: tuple[Path, list[bytes]]
) -> None:
    """In process, as ``moss-voice run`` configures it: the journal's native protocol at debug level."""
    path, received = journal
    qwav = question(tmp_path)
    fallback = io.StringIO()
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers={"who": "I am MOSS."}, api_key=KEY))
        settings = settings_from_dict(
            {
                "asr": {"url": asr.url},
                "llm": {"url": llm.url},
                "tts": {"url": tts.url},
                "audio": {"input": f"wav:{qwav}", "output": f"wav:{tmp_path / 'reply.wav'}"},
                "wake": {"follow_up_s": 0},
            },
            {API_KEY_ENV: KEY},
        )
        assert settings.llm == LlmSettings(url=llm.url, api_key=KEY)
        configure_logging("debug", "journal", stream=fallback, journal_socket=path, secrets=secret_values(settings))
        app = App(settings, once=True)
        code = await asyncio.wait_for(app.run(), RUN_TIMEOUT)
    structlog.get_logger().info("last")
    for _ in range(100):
        if any(b"MESSAGE=last" in d for d in received):
            break
        await asyncio.sleep(0.02)
    assert code == EXIT_ANSWERED
    blob = b"".join(received)
    assert b"EVENT=turn_finished" in blob and blob.count(b"\nEVENT=") > 20
    assert KEY.encode() not in blob and KEY not in fallback.getvalue()


# --- the doctor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("right_key", [True, False], ids=["key-accepted", "key-refused"])
async def test_the_doctor_reports_without_the_secrets(tmp_path: Path, right_key: bool) -> None:
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(api_key=KEY if right_key else "other"))
        config = tmp_path / "moss-voice.toml"
        config.write_text(
            f'[asr]\nurl = "{asr.url}"\n[llm]\nurl = "{llm.url}"\n[tts]\nurl = "{tts.url}"\n'
            f'[audio]\ninput = "wav:{question(tmp_path, "hello")}"\n'
            f'output = "wav:{tmp_path / "out.wav"}"\n[wake.hotword]\nengine = "off"\n'
        )
        findings = await doctor(DoctorOptions(config=config, env={API_KEY_ENV: KEY, CONTROL_TOKEN_ENV: TOKEN}))
    llm_finding = next(f for f in findings if f.check == "llm")
    assert llm_finding.result == ("ok" if right_key else "FAIL"), llm_finding
    for report in (to_table(findings), to_json(findings)):
        assert KEY not in report and TOKEN not in report


def test_a_secret_in_an_enormous_field_leaves_no_part_of_it() -> None:
    """Whatever cuts long fields (a length cap) must run after the redaction: a cap first would
    leave a piece of a key the redaction can no longer recognise. Each field starts the repeated
    key at another offset, so wherever a cap cuts, some field is cut inside a key."""
    key = "Qx9-" + KEY
    out = io.StringIO()
    configure_logging("info", "json", stream=out, secrets=[key])
    period = len(key) + 1
    fields = {f"f{i}": "." * i + f"{key} " * 40_000 for i in range(period)}
    structlog.get_logger().info("flood", **fields)
    text = out.getvalue()
    assert "flood" in text and "Qx9" not in text
