"""Logs under systemd: the journal's native protocol with fields, JOURNAL_STREAM detection,
PortAudio's chatter kept off stderr, and recurring faults logged once with a count."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.journal import encode, field_name, under_journal
from daemon.logs import configure_logging
from hardware.pyaudio_devices import captured_stderr
from states.repeats import RepeatedFault
from tests.pulse import pulse_server

ROOT = Path(__file__).resolve().parents[1]


def parse(datagram: bytes) -> dict[str, str]:
    """The native protocol read back: ``NAME=value\\n`` or ``NAME\\n<u64 le length><value>\\n``."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line_end = rest.index(b"\n")
        head = rest[:line_end]
        if b"=" in head:
            name, _, value = head.partition(b"=")
            fields[name.decode()] = value.decode()
            rest = rest[line_end + 1 :]
        else:
            (length,) = struct.unpack("<Q", rest[line_end + 1 : line_end + 9])
            start = line_end + 9
            fields[head.decode()] = rest[start : start + length].decode()
            assert rest[start + length : start + length + 1] == b"\n"
            rest = rest[start + length + 1 :]
    return fields


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "journal.socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5.0)
    yield path, server
    server.close()
    structlog.reset_defaults()


def test_events_arrive_with_fields_priorities_and_the_current_state(
    journal_socket: tuple[Path, socket.socket],
) -> None:
    path, server = journal_socket
    out = io.StringIO()
    configure_logging("debug", "journal", stream=out, journal_socket=path)
    log = structlog.get_logger()
    log.info("state_changed", src="idle", dst="listening", trigger="wake", turn_id="t1")
    log.warning("llm_error", turn_id="t1", service="llm", status=503, detail={"retry": [1, 2]})
    log.debug("portaudio_chatter", lines=3)
    log.error("asr_failed", service="asr")
    changed, warned, debug, error = (parse(server.recv(65536)) for _ in range(4))
    assert changed["MESSAGE"] == "state_changed src=idle dst=listening trigger=wake turn_id=t1"
    assert changed["EVENT"] == "state_changed" and changed["STATE"] == "listening" and changed["TURN_ID"] == "t1"
    assert changed["SYSLOG_IDENTIFIER"] == "moss-voice" and changed["PRIORITY"] == "6"
    assert warned["PRIORITY"] == "4" and warned["SERVICE"] == "llm" and warned["STATUS"] == "503"
    assert json.loads(warned["DETAIL"]) == {"retry": [1, 2]}
    assert warned["STATE"] == "listening"  # the state the daemon is in, on every record
    assert "TIMESTAMP" not in warned and "LEVEL" not in warned  # the journal has its own
    assert debug["PRIORITY"] == "7" and error["PRIORITY"] == "3"
    assert out.getvalue() == ""  # nothing on stdout while the journal works


def test_a_multi_line_value_uses_the_binary_length_form(journal_socket: tuple[Path, socket.socket]) -> None:
    path, server = journal_socket
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=path)
    structlog.get_logger().info("transcript", text="first line\nsecond line")
    datagram = server.recv(65536)
    value = b"first line\nsecond line"
    assert b"TEXT\n" + struct.pack("<Q", len(value)) + value + b"\n" in datagram
    assert parse(datagram)["TEXT"] == "first line\nsecond line"


def test_stdlib_loggers_reach_the_journal_too(journal_socket: tuple[Path, socket.socket]) -> None:
    import logging

    path, server = journal_socket
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=path)
    logging.getLogger("httpx").warning("server said %s", "no")
    fields = parse(server.recv(65536))
    assert fields["EVENT"] == "server said no" and fields["LOGGER"] == "httpx" and fields["PRIORITY"] == "4"


def test_without_the_socket_records_fall_back_to_json_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("info", "journal", stream=out, journal_socket=tmp_path / "missing.socket")
    try:
        structlog.get_logger().info("state_changed", dst="idle", turn_id=None)
        structlog.get_logger().info("second")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["journal_unavailable", "state_changed", "second"]
    assert "missing.socket" in lines[0]["error"]  # said once, naming the socket


def test_field_names_are_what_the_journal_accepts() -> None:
    assert field_name("turn_id") == "TURN_ID"
    assert field_name("_pid") == "PID"  # leading _ is reserved for journald's trusted fields
    assert field_name("first-audio.ms") == "FIRST_AUDIO_MS"
    assert field_name("2x") == "F_2X"
    assert encode({"A": "b"}) == b"A=b\n"


def test_journal_stream_is_recognised_only_when_stdout_is_that_stream(tmp_path: Path) -> None:
    target = tmp_path / "stdout"
    other = tmp_path / "other"
    other.write_text("")
    with target.open("w") as stream:
        st = os.fstat(stream.fileno())
        assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        elsewhere = os.stat(other)
        assert not under_journal({"JOURNAL_STREAM": f"{elsewhere.st_dev}:{elsewhere.st_ino}"}, stream)
        assert not under_journal({}, stream)
        assert not under_journal({"JOURNAL_STREAM": "garbage"}, stream)
    assert not under_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO())  # no file descriptor


def test_auto_picks_the_journal_under_systemd(journal_socket: tuple[Path, socket.socket], tmp_path: Path) -> None:
    path, server = journal_socket
    with (tmp_path / "stdout").open("w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        configure_logging("info", "auto", stream=stream, environ=env, journal_socket=path)
        structlog.get_logger().info("daemon_ready", turn_id="t9")
        assert parse(server.recv(65536))["TURN_ID"] == "t9"
        configure_logging("info", "auto", stream=stream, environ={}, journal_socket=path)
        structlog.get_logger().info("plain")
    assert json.loads((tmp_path / "stdout").read_text())["event"] == "plain"


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A standalone systemd-journald in a namespace of its own (its socket under
    /run/systemd/journal.<namespace>/), so nothing else on the machine is touched."""
    binary = Path("/lib/systemd/systemd-journald")
    if not binary.exists() or shutil.which("journalctl") is None or os.geteuid() != 0:
        pytest.skip("a standalone systemd-journald needs the binary, journalctl and root")
    namespace = f"mosstest{uuid.uuid4().hex[:8]}"
    run_dir = Path(f"/run/systemd/journal.{namespace}")
    process = subprocess.Popen(
        [str(binary), namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10.0
        while not (run_dir / "socket").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip("systemd-journald did not start here")
            time.sleep(0.02)
        yield namespace, run_dir / "socket"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        shutil.rmtree(run_dir, ignore_errors=True)
        machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
        for base in (Path("/var/log/journal"), Path("/run/log/journal")):
            shutil.rmtree(base / f"{machine_id}.{namespace}", ignore_errors=True)


def test_journalctl_finds_a_turn_by_its_id_and_warnings_by_priority(journald: tuple[str, Path]) -> None:
    namespace, path = journald
    turn_id = uuid.uuid4().hex[:12]
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=path)
    try:
        structlog.get_logger().info("state_changed", src="idle", dst="listening", turn_id=turn_id)
        structlog.get_logger().warning("llm_error", turn_id=turn_id, service="llm")
    finally:
        structlog.reset_defaults()
    query = ["journalctl", f"--namespace={namespace}", "-o", "json", "--no-pager", f"TURN_ID={turn_id}"]
    deadline = time.monotonic() + 10.0
    while True:  # journald writes asynchronously: ask again until both records are there
        out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
        records = [json.loads(line) for line in out.splitlines()]
        if len(records) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [r["EVENT"] for r in records] == ["state_changed", "llm_error"]
    assert records[0]["STATE"] == "listening" and records[1]["SERVICE"] == "llm"
    warnings = subprocess.run(
        ["journalctl", f"--namespace={namespace}", "-t", "moss-voice", "-p", "warning", "-o", "json", "--no-pager"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert [json.loads(line)["EVENT"] for line in warnings.splitlines()] == ["llm_error"]


def test_chatter_on_fd_2_is_caught_logged_once_and_fd_2_restored() -> None:
    before = os.fstat(2)
    with capture_logs() as logs:
        with captured_stderr("initialise"):
            os.write(2, b"ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM sysdefault\n")
            os.write(2, b"jack server is not running or cannot be started\n")
        with pytest.raises(RuntimeError), captured_stderr("open"):
            os.write(2, b"ALSA lib one more\n")
            raise RuntimeError("the open failed")
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)  # fd 2 is back, even after the raise
    assert [(e["event"], e["during"], e["lines"]) for e in logs] == [
        ("portaudio_chatter", "initialise", 2),
        ("portaudio_chatter", "open", 1),
    ]
    assert logs[0]["first"].startswith("ALSA lib") and logs[0]["last"].startswith("jack server")


def test_moss_voice_devices_prints_no_alsa_noise() -> None:
    pytest.importorskip("pyaudio")
    with pulse_server():
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "devices"],
            cwd=ROOT,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "ALSA lib" not in result.stdout + result.stderr
    assert "jack" not in (result.stdout + result.stderr).lower()
    assert "pulse" in result.stdout  # the useful lines are there
    assert result.stdout.splitlines()[0].split() == ["index", "in", "out", "rate", "api", "name"]


def test_a_recurring_fault_is_logged_once_then_once_a_minute_with_a_count() -> None:
    now = [0.0]
    fault = RepeatedFault("mic_reopen_failed", clock=lambda: now[0])
    with capture_logs() as logs:
        written = []
        for attempt in range(1, 46):  # every 3 s for 135 s
            written.append(fault.failed(attempt=attempt))
            now[0] += 3.0
        fault.recovered("mic_recovered")
        fault.recovered("mic_recovered")  # nothing failed since: no line
    assert [(e["event"], e.get("attempt"), e.get("repeats"), e.get("failures")) for e in logs] == [
        ("mic_reopen_failed", 1, None, None),
        ("mic_reopen_failed", 21, 20, None),  # 60 s later, standing for the 20 since the last line
        ("mic_reopen_failed", 41, 20, None),
        ("mic_recovered", None, None, 45),
    ]
    assert logs[0]["log_level"] == "warning" and sum(written) == 3
    fault.failed()  # after a recovery, the next failure is a first one again
    assert fault.total == 1 and fault.unlogged == 0


def test_a_recurring_fault_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="every_s"):
        RepeatedFault("x", every_s=-1)
    with pytest.raises(ValueError, match="level"):
        RepeatedFault("x", level="loud")


def test_a_record_too_big_for_a_datagram_is_sent_with_its_values_cut(
    journal_socket: tuple[Path, socket.socket],
) -> None:
    path, server = journal_socket
    out = io.StringIO()
    # Fields are cut at 2000 characters before they reach the sink; lift that to test the sink's own cut.
    configure_logging("info", "journal", stream=out, journal_socket=path, max_field_chars=10_000_000)
    structlog.get_logger().info("transcript", text="x" * 4_000_000)
    structlog.get_logger().info("after")
    big, after = parse(server.recv(65536)), parse(server.recv(65536))
    assert big["EVENT"] == "transcript" and len(big["TEXT"]) == 4096 and big["TEXT"].endswith("…")
    assert after["EVENT"] == "after" and out.getvalue() == ""  # the journal is kept


def test_an_exception_arrives_as_a_readable_traceback(journal_socket: tuple[Path, socket.socket]) -> None:
    path, server = journal_socket
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=path)
    try:
        raise ValueError("bad block")
    except ValueError:
        structlog.get_logger().exception("asr_wake_failed", url="ws://asr")
    fields = parse(server.recv(65536))
    assert fields["PRIORITY"] == "3"
    assert fields["EXCEPTION"].startswith("Traceback") and "ValueError: bad block" in fields["EXCEPTION"]
    assert (
        fields["MESSAGE"].startswith("asr_wake_failed url=ws://asr\n") and "ValueError: bad block" in fields["MESSAGE"]
    )
