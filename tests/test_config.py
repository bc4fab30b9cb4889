from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import MOSS_SYSTEM_PROMPT, Settings
from daemon.config_load import API_KEY_ENV, load_settings, settings_from_dict
from daemon.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "moss-voice.toml"


def problems_of(raw: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(raw, env or {})
    return caught.value.problems


def test_defaults_work_against_the_stand_ins() -> None:
    s = settings_from_dict({}, {})
    assert s == Settings()
    assert s.asr.url == "ws://127.0.0.1:10095" and s.asr.flavour == "cpp-2pass"
    assert s.asr.frame_bytes == 1920
    assert s.llm.url == "http://127.0.0.1:8000/v1" and s.llm.model == "moss"
    assert s.llm.stop == ("<|end_of_assistant|>",) and s.llm.max_tokens == 512
    assert s.llm.system_prompt == MOSS_SYSTEM_PROMPT
    assert s.tts.protocol == "http"
    assert s.tts.samplerate_url == "http://127.0.0.1:8092/paddlespeech/tts/streaming/samplerate"


def test_the_documented_keys_load() -> None:
    s = settings_from_dict(
        {
            "asr": {"url": "wss://asr.local:10096", "flavour": "python-classic", "tls_verify": False},
            "llm": {
                "url": "https://gpu:8000/v1",
                "model": "moss-moon",
                "system_prompt": "Be brief.",
                "stop": ["<eom>", "<eoa>"],
                "max_tokens": 128,
            },
            "tts": {"url": "ws://gpu:8092/paddlespeech/tts/streaming"},
            "audio": {"input": "wav:q.wav", "output": "wav:r.wav", "output_rate": 48000},
        },
        {},
    )
    assert s.asr.tls_verify is False and s.asr.flavour == "python-classic"
    assert s.llm.stop == ("<eom>", "<eoa>") and s.llm.max_tokens == 128
    assert s.tts.protocol == "websocket"
    assert s.tts.samplerate_url == "http://gpu:8092/paddlespeech/tts/streaming/samplerate"
    assert s.audio.output_rate == 48000


def test_stop_may_be_a_single_string() -> None:
    assert settings_from_dict({"llm": {"stop": "<eom>"}}, {}).llm.stop == ("<eom>",)


def test_api_key_comes_from_the_environment_only() -> None:
    assert settings_from_dict({}, {API_KEY_ENV: "sk-1"}).llm.api_key == "sk-1"
    assert settings_from_dict({}, {}).llm.api_key is None
    found = problems_of({"llm": {"api_key": "sk-1"}})
    assert found == [f"llm.api_key: secrets do not go in the file; set {API_KEY_ENV} in the environment"]


def test_every_problem_is_named_at_once() -> None:
    found = problems_of(
        {
            "asr": {"flavour": "cpp", "urll": "ws://x", "tls_verify": "no"},
            "llm": {"max_tokens": "many", "temperature": True},
            "tts": {"url": "ftp://x"},
            "audio": {"input": "mic"},
            "vad": {"engine": "energy"},
            "colour": "blue",
        }
    )
    text = "\n".join(found)
    assert "asr.flavour: must be one of cpp-2pass, cpp-offline, python-classic, python-2026, got 'cpp'" in found
    assert "asr.urll: unknown key (did you mean 'url'?)" in text
    assert "asr.tls_verify: must be true or false, got string 'no'" in found
    assert "llm.max_tokens: must be an integer, got string 'many'" in found
    assert "llm.temperature: must be a number, got boolean True" in found
    assert "tts.url: must be a http:// or https:// or ws:// or wss:// URL, got 'ftp://x'" in found
    assert "audio.input: must look like 'pyaudio:DEVICE' or 'wav:PATH' or 'room:PATH', got 'mic'" in found
    assert "vad.engine: must be one of silero, webrtc, got 'energy'" in found
    assert "colour: unknown key" in text
    assert len(found) == 9


def test_wrong_shapes() -> None:
    assert problems_of({"asr": {"chunk_size": [5, 10]}}) == [
        "asr.chunk_size: must be a list of 3 items, got list [5, 10]"
    ]
    assert problems_of({"asr": {"chunk_size": [5, 0, 5]}}) == [
        "asr.chunk_size: the middle value must be positive, got [5, 0, 5]"
    ]
    assert problems_of({"asr": {"url": "http://x:10095"}}) == [
        "asr.url: must be a ws:// or wss:// URL, got 'http://x:10095'"
    ]
    assert problems_of({"llm": "x"}) == ["llm: must be a table, got string 'x'"]
    assert problems_of({"llm": {"max_tokens": 0}}) == ["llm.max_tokens: must be positive, got 0"]
    assert problems_of({"asr": {"hotwords": {"小明": "x"}}}) == [
        "asr.hotwords.小明: must be an integer, got string 'x'"
    ]


def test_load_settings_reports_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[asr\nurl = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, {})


def test_example_config_is_valid() -> None:
    s = load_settings(EXAMPLE, {})
    assert s.asr.flavour in ("cpp-2pass", "cpp-offline", "python-classic", "python-2026")


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[asr]\nflavour = "python-2026"\n')
    ok = subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", str(good)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[asr]\nflavor = "python-2026"\n[llm]\nmax_tokens = "x"\n')
    res = subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "asr.flavor: unknown key (did you mean 'flavour'?)" in res.stderr
    assert "llm.max_tokens: must be an integer" in res.stderr


def test_earcons_are_builtin_off_or_an_existing_wav(tmp_path: Path) -> None:
    assert settings_from_dict({"earcons": {"listening": "off", "error": "builtin"}}, {}).earcons.listening == "off"
    wav = tmp_path / "beep.wav"
    wav.write_bytes(b"RIFF")
    assert settings_from_dict({"earcons": {"error": str(wav)}}, {}).earcons.error == str(wav)
    assert problems_of({"earcons": {"listening": "/nope/beep.wav"}}) == [
        "earcons.listening: must be builtin, off, or an existing WAV file, got '/nope/beep.wav'"
    ]
