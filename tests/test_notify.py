"""systemd's notify protocol, against a datagram socket the test binds as ``NOTIFY_SOCKET``: the
notifier alone, the watchdog with a microphone that hangs, and real daemon processes against the
stand-ins (READY after the probes, STATUS, WATCHDOG, STOPPING on SIGTERM idle and mid-turn,
RELOADING on SIGHUP with a good and a bad file)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.config_load import settings_from_dict
from daemon.config_reload import changed_keys
from daemon.event_bus import Event
from daemon.health import Health
from daemon.systemd_notify import Notifier, notify_address, watchdog_interval_s
from daemon.systemd_status import StatusLine, feed_watchdog
from daemon.tools.bench.daemon_process import DaemonProcess
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.mic_feed import MicFeed

WAIT_S = 30.0


class NotifyListener:
    """What systemd does with the notify socket: receive datagrams, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    async def next(self, timeout: float = WAIT_S) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        message = data.decode()
        self.received.append(message)
        return message

    async def until(self, prefix: str, timeout: float = WAIT_S) -> str:
        """The next message that starts with ``prefix`` (those before it are kept in ``received``)."""
        async with asyncio.timeout(timeout):
            while not (message := await self.next()).startswith(prefix):
                pass
        return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    server = NotifyListener(tmp_path / "notify.sock")
    yield server
    server.close()


# --------------------------------------------------------------------------- the notifier alone


async def test_notifier_sends_each_message(listener: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
    notifier.ready()
    notifier.status("idle\n| asr up")
    notifier.status("idle | asr up")  # unchanged: not sent again
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    messages = [await listener.next(5) for _ in range(5)]
    notifier.close()
    assert messages[:3] == ["READY=1", "STATUS=idle | asr up", "WATCHDOG=1"]
    reloading, usec = messages[3].split("\n")
    assert reloading == "RELOADING=1" and usec.startswith("MONOTONIC_USEC=") and int(usec.split("=")[1]) > 0
    assert messages[4] == "STOPPING=1"


async def test_abstract_socket() -> None:
    name = f"moss-voice-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.close()
        server.settimeout(5)
        assert server.recv(100) == b"READY=1"
    finally:
        server.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready()
    assert notifier.failures == 0
    assert notify_address({"NOTIFY_SOCKET": "@x"}) == "\0x"


def test_a_failed_send_never_raises(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    notifier.ready()
    notifier.watchdog()
    notifier.close()
    assert notifier.failures == 2


def test_watchdog_interval_is_half_of_what_systemd_asks() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}, pid=5) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "5"}, pid=5) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "6"}, pid=5) is None
    assert watchdog_interval_s({}, pid=5) is None


def test_reload_names_what_needs_a_restart() -> None:
    old = Settings()
    new = settings_from_dict(
        {"log": {"level": "debug"}, "llm": {"system_prompt": "Be brief."}, "asr": {"url": "ws://other:10095"}}, {}
    )
    live, restart = changed_keys(old, new)
    assert live == ["llm.system_prompt", "log.level"]
    assert restart == ["asr.url"]


# --------------------------------------------------------------------------- the watchdog and a hung mic


class GatedMic:
    """A microphone that delivers 20 ms blocks while ``flowing`` is set, and hangs otherwise."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def open(self) -> None:
        return None

    async def read(self) -> bytes:
        await self.flowing.wait()
        await asyncio.sleep(0.02)
        return bytes(640)

    async def aclose(self) -> None:
        return None


async def test_the_watchdog_stops_while_the_microphone_hangs(listener: NotifyListener) -> None:
    mic = GatedMic()
    feed = MicFeed(mic)
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
    feed.start()
    watchdog = asyncio.create_task(feed_watchdog(notifier, feed, 0.05, stale_after_s=0.3))
    try:
        for _ in range(3):
            assert await listener.next(5) == "WATCHDOG=1"
        mic.flowing.clear()
        # Once the microphone is stale, nothing comes: a second of quiet arrives before long.
        async with asyncio.timeout(10):
            while True:
                try:
                    await listener.next(1.0)
                except TimeoutError:
                    break
        mic.flowing.set()
        assert await listener.next(5) == "WATCHDOG=1"
    finally:
        watchdog.cancel()
        await feed.aclose()
        notifier.close()


# --------------------------------------------------------------------------- a real daemon process


def write_config(path: Path, urls: dict[str, str], mic: Path, out: Path, *, level: str = "info") -> Path:
    q = json.dumps
    path.write_text(
        f"[asr]\nurl = {q(urls['asr'])}\n[llm]\nurl = {q(urls['llm'])}\n[tts]\nurl = {q(urls['tts'])}\n"
        f"[audio]\ninput = {q('wav:' + str(mic))}\noutput = {q('wav:' + str(out))}\n"
        f'[wake]\non_start = true\nfollow_up_s = 0\n[log]\nformat = "json"\nlevel = {q(level)}\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_question_wav("what time is it", tmp_path_factory.mktemp("notify") / "question.wav")


@contextlib.asynccontextmanager
async def daemon(config: Path, listener: NotifyListener, cwd: Path) -> AsyncIterator[DaemonProcess]:
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"}
    process = await DaemonProcess.spawn(config, cwd=cwd, env=env)
    try:
        yield process
    finally:
        await process.aclose()


async def stand_ins(stack: AsyncExitStack, **llm: object) -> dict[str, str]:
    asr, llm_stub, tts = await start_stubs(stack, llm=demo_llm_behaviour(**llm))
    return {"asr": asr.url, "llm": llm_stub.url, "tts": tts.url}


async def test_a_daemon_tells_systemd_its_story(tmp_path: Path, listener: NotifyListener, question: Path) -> None:
    async with AsyncExitStack() as stack:
        urls = await stand_ins(stack)
        config = write_config(tmp_path / "voice.toml", urls, question, tmp_path / "out.wav")
        async with daemon(config, listener, tmp_path) as process:
            await listener.until("READY=1")
            names = [e["event"] for e in process.events]
            # every service was probed before READY
            assert {"asr", "llm", "tts"} <= {e["service"] for e in process.events if e["event"] == "service_up"}
            assert names.index("service_up") < names.index("daemon_ready")
            # the question is answered: STATUS goes through the states and ends with the latency
            await listener.until("STATUS=idle | asr up, llm up, tts up | last first audio")
            statuses = [m for m in listener.received if m.startswith("STATUS=")]
            assert any(s.startswith("STATUS=listening") for s in statuses)
            assert any(s.startswith("STATUS=speaking") for s in statuses)
            # the watchdog, every 100 ms: five in a row, whatever the machine's speed
            for _ in range(5):
                await listener.until("WATCHDOG=1")

            # SIGHUP with a good file: RELOADING, then READY; the log level changes at once
            write_config(
                config, {**urls, "asr": urls["asr"] + "/moved"}, question, tmp_path / "out.wav", level="warning"
            )
            before = len(process.events)
            process.proc.send_signal(signal.SIGHUP)
            assert (await listener.until("RELOADING=1")).startswith("RELOADING=1\nMONOTONIC_USEC=")
            await listener.until("READY=1")
            restart = await process.wait_for("config_reload_needs_restart", after=before)
            assert restart["keys"] == ["asr.url"]

            # SIGHUP with a bad file: reported with every problem, the old config kept
            config.write_text('[log]\nlevel = "loud"\n[vad]\nnope = 1\n', encoding="utf-8")
            process.proc.send_signal(signal.SIGHUP)
            await listener.until("RELOADING=1")
            await listener.until("READY=1")
            failed = await process.wait_for("config_reload_failed", after=before)
            assert len(failed["problems"]) == 2

            # SIGTERM in idle: STOPPING, a clean exit
            code, _ = await process.stop()
            assert code == 0
            await listener.until("STOPPING=1")
            # the reloaded level (warning) held through the bad reload: no info line since
            assert [e["event"] for e in process.events[before:] if e.get("level") == "info"] == []


async def test_sigterm_mid_turn_stops_promptly(tmp_path: Path, listener: NotifyListener, question: Path) -> None:
    async with AsyncExitStack() as stack:
        urls = await stand_ins(stack)
        config = write_config(tmp_path / "voice.toml", urls, question, tmp_path / "out.wav")
        async with daemon(config, listener, tmp_path) as process:
            await listener.until("READY=1")
            await listener.until("STATUS=listening")
            # SIGHUP mid-turn: applied when the turn ends; the turn goes on
            write_config(config, urls, question, tmp_path / "out.wav", level="debug")
            process.proc.send_signal(signal.SIGHUP)
            await listener.until("RELOADING=1")
            await listener.until("READY=1")
            reloaded = await process.wait_for("config_reloaded")
            assert reloaded["applied"] == ["log.level"] and reloaded["deferred"] is True
            await listener.until("STATUS=speaking")
            code, _ = await process.stop()  # DaemonProcess kills it (code None) after 10 s
            assert code == 0
            await listener.until("STOPPING=1")
            assert any(e["event"] == "daemon_stopping" and e["state"] != "idle" for e in process.events)


@pytest.mark.parametrize("state", ["listening", "thinking"])
async def test_sigterm_while_listening_or_thinking_stops_at_once(
    tmp_path: Path, listener: NotifyListener, question: Path, state: str
) -> None:
    async with AsyncExitStack() as stack:
        urls = await stand_ins(stack, first_token_delay_s=30.0)  # thinking lasts until the stop
        config = write_config(tmp_path / "voice.toml", urls, question, tmp_path / "out.wav")
        async with daemon(config, listener, tmp_path) as process:
            await listener.until("READY=1")
            await listener.until(f"STATUS={state}")
            code, _ = await process.stop()
            assert code == 0
            await listener.until("STOPPING=1")
            (stopping,) = [e for e in process.events if e["event"] == "daemon_stopping"]
            assert stopping["state"] == state
            (finished,) = [e for e in process.events if e["event"] == "turn_finished"]
            assert finished["outcome"] == "stopped"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_service_down_is_reported_not_fatal(tmp_path: Path, listener: NotifyListener, question: Path) -> None:
    async with AsyncExitStack() as stack:
        urls = {**await stand_ins(stack), "llm": f"http://127.0.0.1:{closed_port()}/v1"}
        config = write_config(tmp_path / "voice.toml", urls, question, tmp_path / "out.wav")
        async with daemon(config, listener, tmp_path) as process:
            await listener.until("READY=1")
            down = await process.wait_for("service_down", service="llm")
            assert down["error"]
            await listener.until("STATUS=idle | asr up, llm down, tts up")
            code, _ = await process.stop()
            assert code == 0


def test_the_status_line_follows_the_turns(tmp_path: Path) -> None:
    notifier = Notifier({})
    health = Health()
    for name, ok in {"asr": True, "llm": False, "tts": True}.items():
        health.probed(name, ok)
    line = StatusLine(notifier, health)

    def observe(event: Event) -> None:
        health.observe(event)
        line.observe(event)

    observe(Event("state_changed", {"dst": "listening"}, 1, 0.0))
    assert notifier.last_status == "listening | asr up, llm down, tts up"
    observe(Event("turn_failed", {"service": "tts", "reason": "refused"}, 2, 0.0))
    observe(Event("turn_finished", {"outcome": "answered", "first_audio_ms": 412}, 3, 0.0))
    observe(Event("state_changed", {"dst": "idle"}, 4, 0.0))
    assert notifier.last_status == "idle | asr up, llm up, tts up | last first audio 412 ms"
