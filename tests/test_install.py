"""`make install` / `make uninstall` into a temporary root (DESTDIR): what lands where.

The venv and pip step is skipped here (INSTALL_VENV=no: a real install takes about a minute); its
command lines are checked with `make -n`. Every call passes DESTDIR or -n: the real / is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return make("install", f"DESTDIR={root}", "INSTALL_VENV=no")


def test_install_puts_code_config_and_units_in_place(tmp_path: Path) -> None:
    install(tmp_path)
    src = tmp_path / "opt/moss-voice/src"
    assert (src / "pyproject.toml").read_text() == (REPO / "pyproject.toml").read_text()
    assert (src / "daemon/__main__.py").is_file()
    assert (src / "states").is_dir()
    assert (src / "hardware").is_dir()
    assert not list(src.rglob("__pycache__"))
    example = (REPO / "systemd/moss-voice.toml").read_text()
    assert (tmp_path / "etc/moss-voice/moss-voice.toml").read_text() == example
    assert (tmp_path / "etc/moss-voice/moss-voice.toml.example").read_text() == example
    unit = tmp_path / "etc/systemd/system/moss-voice.service"
    assert unit.read_text() == (REPO / "systemd/moss-voice.service").read_text()
    assert unit.stat().st_mode & 0o777 == 0o644
    user_unit = tmp_path / "etc/systemd/user/moss-voice-user.service"
    assert user_unit.read_text() == (REPO / "systemd/moss-voice-user.service").read_text()
    assert not (tmp_path / "opt/moss-voice/.venv").exists()


def test_install_again_upgrades_and_never_overwrites_the_config(tmp_path: Path) -> None:
    install(tmp_path)
    config = tmp_path / "etc/moss-voice/moss-voice.toml"
    config.write_text('[llm]\nurl = "http://robot-brain:8000/v1"\n')
    example = tmp_path / "etc/moss-voice/moss-voice.toml.example"
    example.write_text("# an old example\n")
    stale = tmp_path / "opt/moss-voice/src/daemon/removed_module.py"
    stale.write_text("")

    result = install(tmp_path)

    assert config.read_text() == '[llm]\nurl = "http://robot-brain:8000/v1"\n'
    assert example.read_text() == (REPO / "systemd/moss-voice.toml").read_text()
    assert "kept /etc/moss-voice/moss-voice.toml" in result.stdout
    assert not stale.exists()


def test_uninstall_removes_code_and_units_and_keeps_the_config(tmp_path: Path) -> None:
    install(tmp_path)
    (tmp_path / "etc/moss-voice/env").write_text("MOSS_VOICE_LLM_API_KEY=secret\n")

    result = make("uninstall", f"DESTDIR={tmp_path}")

    assert not (tmp_path / "opt/moss-voice").exists()
    assert not (tmp_path / "etc/systemd/system/moss-voice.service").exists()
    assert not (tmp_path / "etc/systemd/user/moss-voice-user.service").exists()
    assert (tmp_path / "etc/moss-voice/moss-voice.toml").is_file()
    assert (tmp_path / "etc/moss-voice/env").is_file()
    assert "kept /etc/moss-voice" in result.stdout


def test_install_with_destdir_creates_no_user_and_calls_no_systemctl(tmp_path: Path) -> None:
    commands = make("-n", "install", f"DESTDIR={tmp_path}", "SYSTEMD_RUNNING=yes").stdout
    assert "useradd" not in commands
    assert "usermod" not in commands
    assert "systemctl" not in commands


def test_install_on_the_robot_creates_the_user_and_enables_the_unit(tmp_path: Path) -> None:
    # A dry run (-n) with every path under tmp_path: prints the commands, runs none of them.
    commands = make(
        "-n",
        "install",
        "SYSTEMD_RUNNING=yes",
        f"PREFIX={tmp_path}/opt",
        f"CONFDIR={tmp_path}/etc",
        f"UNITDIR={tmp_path}/system",
        f"USERUNITDIR={tmp_path}/user",
    ).stdout
    assert "useradd --system --user-group --home-dir /var/lib/moss-voice" in commands
    assert "usermod -a -G audio moss-voice" in commands
    assert "getent group gpio" in commands
    assert "systemctl daemon-reload" in commands
    assert "systemctl enable moss-voice" in commands
    assert "systemctl try-restart moss-voice" in commands
    assert "DPkg::Lock::Timeout=600" in commands


def test_the_venv_step_installs_from_the_copied_source_and_relocates_the_scripts(tmp_path: Path) -> None:
    commands = make("-n", "install-venv", f"DESTDIR={tmp_path}").stdout
    venv = f"{tmp_path}/opt/moss-voice/.venv"
    assert f"-m venv '{venv}'" in commands
    pip = f"'{venv}/bin/python' -m pip install -q --disable-pip-version-check"
    assert f"{pip} '{tmp_path}/opt/moss-voice/src[audio,aec]'" in commands
    assert "--no-deps --force-reinstall" in commands
    assert "about a minute" in commands
    assert f"sed -i 's|{tmp_path}/opt/moss-voice|/opt/moss-voice|g'" in commands


def test_install_refuses_a_relative_prefix(tmp_path: Path) -> None:
    result = subprocess.run(
        ["make", "-C", str(REPO), "uninstall", f"DESTDIR={tmp_path}", "PREFIX=opt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "PREFIX must be an absolute path" in result.stderr


def test_make_test_installs_systemd_for_systemd_analyze_when_missing() -> None:
    assert "for p in systemd;" in make("-n", "test-packages").stdout
    assert "systemd" not in make("-n", "system-packages").stdout
