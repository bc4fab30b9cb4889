"""The unit file is valid for systemd and reasonably locked down (systemd-analyze works offline)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "moss-voice.service"
INSTALLED_PATH = "/opt/moss-voice/.venv/bin/moss-voice"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit_with_real_binary(tmp_path: Path) -> Path:
    """`verify` checks that ExecStart exists, so point it at this venv's console script."""
    script = Path(sys.executable).parent / "moss-voice"
    text = UNIT.read_text()
    assert INSTALLED_PATH in text
    unit = tmp_path / "moss-voice.service"
    unit.write_text(text.replace(INSTALLED_PATH, str(script)))
    return unit


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_with_real_binary(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@needs_systemd_analyze
def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=50", str(unit_with_real_binary(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-1500:]


def test_unit_runs_the_daemon_with_the_config_and_the_secret_file() -> None:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_PATH} run --config /etc/moss-voice/moss-voice.toml" in text
    assert "EnvironmentFile=-/etc/moss-voice/env" in text
    assert "Restart=on-failure" in text
