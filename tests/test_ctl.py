"""``moss-voice ctl``: each command against a real control API server (TCP and a Unix socket),
the token from the environment, and a clear message when no daemon is running."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.__main__ import main
from daemon.cli_ctl import DEFAULT_ADDRESS, ctl, resolve_address
from daemon.config import ControlSettings
from daemon.control.metrics import Metrics
from daemon.control.server import ControlServer
from tests.fake_control import FakeControl

TOKEN = "ctl-token"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["tcp", "unix"])
async def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ControlServer, FakeControl]]:
    listen = "127.0.0.1:0" if request.param == "tcp" else f"unix:{tmp_path_factory.mktemp('c')}/ctl.sock"
    control = FakeControl()
    server = ControlServer(ControlSettings(listen=listen, token=TOKEN), control, metrics=Metrics())
    await server.start()
    yield server, control
    await server.aclose()


async def _ctl(server: ControlServer, command: str, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await ctl(command, server.address, token=TOKEN, out=out, err=err, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


async def test_wake_say_stop(served: tuple[ControlServer, FakeControl]) -> None:
    server, control = served
    assert await _ctl(server, "wake") == (0, "", "")
    assert await _ctl(server, "say", text="你好") == (0, "", "")
    assert await _ctl(server, "say", text="now", interrupt=True) == (0, "", "")
    assert await _ctl(server, "stop") == (0, "", "")
    assert control.calls == [("wake",), ("say", "你好", False, False), ("say", "now", True, False), ("stop",)]


async def test_status_and_listen_print_the_answers(served: tuple[ControlServer, FakeControl]) -> None:
    server, control = served
    code, out, _ = await _ctl(server, "status")
    assert code == 0 and json.loads(out) == control.status()
    control.heard = "打开灯"
    assert await _ctl(server, "listen") == (0, "打开灯\n", "")


async def test_events_prints_one_json_line_per_event(served: tuple[ControlServer, FakeControl]) -> None:
    server, control = served
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.create_task(ctl("events", server.address, token=TOKEN, out=out, err=err))
    await control.bus.subscribed.wait()  # the server has opened the stream
    control.bus.emit("wake", turn_id=1, source="control", word=None)
    control.bus.emit("transcript", turn_id=1, text="几点")
    await server.aclose()  # ends the stream: ctl reports it and exits 1
    assert await task == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["seq"]) for e in lines] == [("wake", 1), ("transcript", 2)]
    assert lines[1]["text"] == "几点"
    assert "closed the event stream" in err.getvalue()


async def test_a_wrong_or_missing_token_is_reported(served: tuple[ControlServer, FakeControl]) -> None:
    server, control = served
    for token in ("wrong", ""):
        err = io.StringIO()
        assert await ctl("wake", server.address, token=token, out=io.StringIO(), err=err) == 1
        assert "401" in err.getvalue() and "MOSS_VOICE_CONTROL_TOKEN" in err.getvalue()
    assert control.calls == []


async def test_the_command_line_with_the_token_from_the_environment(
    served: tuple[ControlServer, FakeControl],
) -> None:
    server, control = served
    env = {**os.environ, "MOSS_VOICE_CONTROL_TOKEN": TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "ctl", "say", "前方 有人", "--interrupt", "--address", server.address,
        env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert control.calls == [("say", "前方 有人", True, False)]


def test_no_daemon_is_a_clear_message_and_exit_1(
    tmp_path: Path, unused_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    for address in (f"127.0.0.1:{unused_tcp_port}", f"unix:{tmp_path}/none.sock"):
        assert main(["ctl", "status", "--address", address]) == 1
        err = capsys.readouterr().err
        assert f"no daemon answers at {address}" in err


def test_the_address_comes_from_the_option_the_config_or_the_default(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[control]\nlisten = "unix:/run/moss-voice/control.sock"\n')
    assert resolve_address("10.0.0.2:9000", str(config)) == "10.0.0.2:9000"
    assert resolve_address(None, str(config)) == "unix:/run/moss-voice/control.sock"
    assert resolve_address(None, None) == DEFAULT_ADDRESS == "127.0.0.1:8765"
    (tmp_path / "empty.toml").write_text("")
    assert resolve_address(None, str(tmp_path / "empty.toml")) == DEFAULT_ADDRESS


def test_a_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[control]\nlisten = "nowhere"\n')
    assert main(["ctl", "wake", "--config", str(config)]) == 2
    assert "control.listen" in capsys.readouterr().err
