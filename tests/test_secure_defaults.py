"""The defaults are the safe choice, and so is the shipped example config: TLS verified, no
control API unless asked for (and then local), bounded request bodies, hooks that can never be
a shell string. (The behaviours themselves are tested in test_tls, test_secrets,
test_control_api and test_hooks; this file holds the defaults to them.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from daemon.config import AsrSettings, ControlSettings, HooksSettings, LlmSettings, Settings, TtsSettings
from daemon.config_load import settings_from_dict
from daemon.control.server import Address
from daemon.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "moss-voice.toml"


@pytest.mark.parametrize("settings", [AsrSettings(), LlmSettings(), TtsSettings()], ids=["asr", "llm", "tts"])
def test_every_service_verifies_tls_by_default(settings: AsrSettings | LlmSettings | TtsSettings) -> None:
    assert settings.tls_verify is True and settings.ca_file is None


def test_the_control_api_is_off_by_default_and_its_bodies_are_bounded() -> None:
    control = ControlSettings()
    assert control.listen is None and control.token is None
    assert 0 < control.max_body_bytes <= 1 << 20


def test_the_example_config_keeps_verification_on_and_the_control_api_local() -> None:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for service in ("asr", "llm", "tts"):
        assert raw.get(service, {}).get("tls_verify", True) is True, service
    settings = settings_from_dict(raw, {})
    assert settings.control.listen is not None and Address.parse(settings.control.listen).is_local


def test_a_hook_given_as_one_string_is_one_program_name_never_a_shell_line(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"hooks": {"on_wake": f"touch {marker}; echo"}}, {})
    (problem,) = caught.value.problems
    assert problem == f"hooks.on_wake: 'touch {marker}; echo': no such file"  # the whole line is the program
    assert not marker.exists()
    assert all(isinstance(argv, tuple) for argv in vars(HooksSettings()).values() if not isinstance(argv, float))


def test_no_setting_of_the_file_is_a_secret() -> None:
    """The secrets are read from the environment or credentials only: the file cannot set them."""
    for table in ("llm", "control"):
        key = "api_key" if table == "llm" else "token"
        with pytest.raises(ConfigError, match="secrets do not go in the file"):
            settings_from_dict({table: {key: "x"}}, {})
    assert Settings().llm.api_key is None


@pytest.mark.parametrize(
    ("table", "url"),
    [
        ("asr", "wss://robot:pw-1234@gpu.lan:10095"),
        ("llm", "https://robot:pw-1234@gpu.lan/v1"),
        ("tts", "http://pw-1234@gpu.lan:8092/paddlespeech/tts/streaming"),
    ],
)
def test_a_service_url_cannot_carry_a_password(table: str, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({table: {"url": url}}, {})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{table}.url: must not carry a user name or password")
    assert "pw-1234" not in problem  # the refusal does not print it either
