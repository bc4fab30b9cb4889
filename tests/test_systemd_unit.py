"""The unit files are valid for systemd and locked down (systemd-analyze works offline)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD_DIR / "moss-voice.service"
USER_UNIT = SYSTEMD_DIR / "moss-voice-user.service"
INSTALLED_PATH = "/opt/moss-voice/.venv/bin/moss-voice"
# The system unit's overall exposure from `systemd-analyze security --offline=true` (systemd 252):
# 1.6 when this was written (it was 2.1 before the device ACL and the syscall deny list). The check
# fails above 2.0, so a lost hardening line shows up here rather than on a robot.
EXPOSURE_THRESHOLD = 20

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit_with_real_binary(tmp_path: Path, unit: Path = UNIT) -> Path:
    """`verify` checks that ExecStart exists, so point it at this venv's console script."""
    script = Path(sys.executable).parent / "moss-voice"
    text = unit.read_text()
    assert INSTALLED_PATH in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_PATH, str(script)))
    return copy


def settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, in order (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_with_real_binary(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_user_unit_verifies(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit_with_real_binary(tmp_path, USER_UNIT))],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--threshold={EXPOSURE_THRESHOLD}",
            str(unit_with_real_binary(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-1500:]
    assert "Overall exposure level" in result.stdout


def test_unit_runs_the_daemon_with_the_config_and_the_secret_file() -> None:
    found = settings(UNIT)
    assert found["ExecStart"] == [f"{INSTALLED_PATH} run --config /etc/moss-voice/moss-voice.toml"]
    assert found["EnvironmentFile"] == ["-/etc/moss-voice/env"]
    assert found["Restart"] == ["on-failure"]
    assert found["RuntimeDirectory"] == ["moss-voice"]


@pytest.mark.parametrize("unit", [UNIT, USER_UNIT], ids=["system", "user"])
def test_units_speak_the_notify_protocol_and_are_rate_limited(unit: Path) -> None:
    found = settings(unit)
    assert found["Type"] == ["notify"]
    assert found["NotifyAccess"] == ["main"]
    assert found["WatchdogSec"] == ["30s"]
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert found["Restart"] == ["on-failure"]
    assert int(found["StartLimitBurst"][0]) > 1
    assert int(found["StartLimitIntervalSec"][0]) > 0


def test_system_unit_runs_as_the_installed_user_and_reaches_sound_and_gpio() -> None:
    found = settings(UNIT)
    assert found["User"] == ["moss-voice"]
    assert found["Group"] == ["moss-voice"]
    # A missing group here fails every start (216/GROUP); gpio comes from /etc/group membership.
    assert found["SupplementaryGroups"] == ["audio"]
    assert found["DevicePolicy"] == ["closed"]
    assert set(found["DeviceAllow"]) == {"char-alsa rw", "char-gpiochip rw"}
    assert "PrivateDevices" not in found
    # char-alsa is resolved when the unit starts: ALSA's core must be loaded by then.
    assert "modprobe@snd.service" in found["Wants"]
    assert "modprobe@snd.service" in found["After"]
    assert "PrivateNetwork" not in found
    assert found["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_user_unit_reads_the_users_config() -> None:
    found = settings(USER_UNIT)
    assert found["ExecStart"] == [f"{INSTALLED_PATH} run --config %E/moss-voice/moss-voice.toml"]
    assert found["WantedBy"] == ["default.target"]
    assert "User" not in found
