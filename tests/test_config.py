from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.app import assistant_settings
from daemon.config import MOSS_SYSTEM_PROMPT, LlmSettings, Settings
from daemon.config_load import API_KEY_ENV, file_keys, load_settings, settings_from_dict
from daemon.errors import ConfigError
from states.barge_in import BargeInSettings, EchoTraining, barge_in_endpointer
from states.endpointer import EndpointerSettings
from states.settings import Checked, SettingsError

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "moss-voice.toml"


def problems_of(raw: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(raw, env or {})
    return caught.value.problems


def test_defaults_work_against_the_stand_ins() -> None:
    s = settings_from_dict({}, {})
    assert s == Settings()
    assert s.asr.url == ("ws://127.0.0.1:10095",) and s.asr.flavour == "cpp-2pass"
    assert s.asr.frame_bytes == 1920
    assert s.llm.url == ("http://127.0.0.1:8000/v1",) and s.llm.model == "moss"
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


def test_a_service_url_may_be_a_list_of_replicas() -> None:
    s = settings_from_dict(
        {"llm": {"url": ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]}, "tts": {"url": "ws://t:1"}}, {}
    )
    assert s.llm.urls == ("http://gpu1:8000/v1", "http://gpu2:8000/v1") and s.llm.endpoint == "http://gpu1:8000/v1"
    assert s.llm.at("http://gpu2:8000/v1").urls == ("http://gpu2:8000/v1",)
    assert s.tts.urls == ("ws://t:1",) and s.tts.protocol == "websocket"
    assert LlmSettings(url="http://x/v1").url == ("http://x/v1",)  # one string from code is a list of one
    found = problems_of(
        {"asr": {"url": ["ws://a:1", "http://b:2"]}, "llm": {"url": []}, "tts": {"url": ["ws://t:1"] * 2}}
    )
    assert found == [
        "asr.url: must be a ws:// or wss:// URL, got 'http://b:2'",
        "llm.url: must name at least one URL",
        "tts.url: lists 'ws://t:1' twice",
    ]


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
    shapes = "'pyaudio:DEVICE' or 'wav:PATH' or 'room:PATH' or 'wavloop:PATH'"
    assert f"audio.input: must look like {shapes}, got 'mic'" in found
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


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_keys() -> list[str]:
    """The keys of the README's configuration table: the backticked names in its first column."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | default | meaning |")
    keys: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        keys.extend(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", line.split(" | ")[0]))
    return keys


def test_the_readme_documents_exactly_the_keys_the_file_may_set() -> None:
    documented = readme_keys()
    assert len(documented) > 50
    assert sorted(documented) == sorted(file_keys())


def test_every_readme_key_is_accepted_with_its_default() -> None:
    defaults = Settings()
    raw: dict[str, Any] = {}
    for key in readme_keys():
        *tables, name = key.split(".")
        owner: object = defaults
        table = raw
        for part in tables:
            owner = getattr(owner, part)
            table = table.setdefault(part, {})  # type: ignore[assignment]
        value = getattr(owner, name)
        if value is None:  # asr.ca_file, audio.output_rate: not set by default, TOML has no null
            continue
        table[name] = list(value) if isinstance(value, tuple) else value
    assert settings_from_dict(raw, {}) == defaults


def test_aec_warmup_is_a_real_setting() -> None:
    s = settings_from_dict({"barge_in": {"aec_warmup_s": 2.5}}, {})
    assert assistant_settings(s).barge_in.aec_warmup_s == 2.5
    training = EchoTraining(far_s=3.0)
    assert training.ready(s.barge_in)
    assert not training.ready(Settings().barge_in)  # the default stays 6 s
    assert problems_of({"barge_in": {"aec_warmup_s": -1}}) == ["barge_in.aec_warmup_s: must be at least 0, got -1.0"]


def test_the_conversation_gets_the_configured_tables() -> None:
    s = settings_from_dict(
        {
            "vad": {"end_silence_ms": 450, "pre_roll_ms": 120, "engine": "webrtc"},
            "reply": {"min_clause_weight": 5},
            "barge_in": {"min_speech_ms": 200, "mode": "cancel"},
        },
        {},
    )
    conversation = assistant_settings(s)
    assert conversation.endpointer.end_silence_ms == 450 and conversation.endpointer.pre_roll_ms == 120
    assert conversation.speech_text.min_clause_weight == 5
    assert conversation.barge_in.mode == "cancel"


def test_barge_in_listens_with_the_configured_endpointer() -> None:
    s = settings_from_dict({"vad": {"pre_roll_ms": 120, "end_trim_ms": 0, "max_utterance_s": 9}}, {})
    barge = barge_in_endpointer(s.vad, s.barge_in)
    assert barge.pre_roll_ms == 120 and barge.end_trim_ms == 0 and barge.max_utterance_s == 9
    assert barge.speech_start_ms == s.barge_in.min_speech_ms == 150
    assert barge.speech_start_ratio == 1.0 and barge.no_speech_timeout_s is None


def test_ranges_the_servers_would_reject_fail_the_check() -> None:
    found = problems_of(
        {
            "asr": {"url": "ws://asr:70000", "chunk_interval": 0},
            "llm": {"top_p": 0, "temperature": -0.1, "max_tokens": 0, "history_turns": -1},
            "tts": {"spk_id": -1, "url": "http://tts:0/x"},
            "audio": {"output_rate": 4000, "block_ms": 25},
            "vad": {"silero_threshold": 1.0, "silero_gate_db": 41, "webrtc_aggressiveness": 4},
            "aec": {"frame_ms": 15},
            "reply": {"max_clause_chars": 100, "max_reply_chars": 50},
        }
    )
    assert found == [
        "asr.url: must be a ws:// or wss:// URL, got 'ws://asr:70000'",
        "asr.chunk_interval: must be positive, got 0",
        "llm.max_tokens: must be positive, got 0",
        "llm.temperature: must be between 0 and 2, got -0.1",
        "llm.top_p: must be more than 0 and at most 1, got 0.0",
        "llm.history_turns: must be at least 0, got -1",
        "tts.url: must be a http:// or https:// or ws:// or wss:// URL, got 'http://tts:0/x'",
        "tts.spk_id: must be at least 0, got -1",
        "audio.output_rate: must be between 8000 and 192000, got 4000",
        "audio.block_ms: must be one of 10, 20, 30, 40, 50, 60, 80, 100, got 25",
        "vad.silero_threshold: must be more than 0 and less than 1, got 1.0",
        "vad.silero_gate_db: must be between 0 and 40, got 41.0",
        "vad.webrtc_aggressiveness: must be one of 0, 1, 2, 3, got 4",
        "aec.frame_ms: must be one of 10, 20, got 15",
        "reply.max_reply_chars: must not be less than max_clause_chars (100), got 50",
    ]
    assert settings_from_dict({"llm": {"top_p": 1, "temperature": 0}}, {}).llm.top_p == 1.0


def test_one_table_feeding_two_subsystems_reports_both_under_its_name() -> None:
    found = problems_of({"vad": {"end_silence_ms": 0, "engine": "energy", "pre_roll_ms": -5}})
    assert found == [
        "vad.end_silence_ms: must be positive, got 0",
        "vad.pre_roll_ms: must be at least 0, got -5",
        "vad.engine: must be one of silero, webrtc, got 'energy'",
    ]


def test_tuning_knobs_of_the_code_are_not_file_keys() -> None:
    found = problems_of({"vad": {"speech_start_ratio": 0.5}, "reply": {"wait_for_closers": True}})
    assert found[0].startswith("vad.speech_start_ratio: unknown key (did you mean 'speech_start_ms'?)")
    assert found[1].startswith("reply.wait_for_closers: unknown key")
    assert "api_key" not in found[0]


def test_direct_construction_checks_the_same_ranges_all_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        EndpointerSettings(end_silence_ms=0, pre_roll_ms=-1, speech_start_ratio=1.5)
    assert caught.value.problems == [
        ("speech_start_ratio", "must be more than 0 and at most 1, got 1.5"),
        ("end_silence_ms", "must be positive, got 0"),
        ("pre_roll_ms", "must be at least 0, got -1"),
    ]
    with pytest.raises(ValueError, match="mode: must be one of pause, cancel, got 'stop'"):
        BargeInSettings(mode="stop")
    with pytest.raises(ValueError, match=re.escape("top_p: must be more than 0 and at most 1, got 1.2")):
        LlmSettings(top_p=1.2)
    assert EndpointerSettings(no_speech_timeout_s=None).no_speech_timeout_s is None  # None: not set


def test_every_setting_field_has_a_default() -> None:
    """A new setting must work without the file: the defaults talk to the stand-ins."""
    for table in dataclasses.fields(Settings):
        for f in dataclasses.fields(getattr(Settings(), table.name)):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (
                f"{table.name}.{f.name}"
            )


def test_every_table_checks_itself() -> None:
    """A new table must be a Checked settings class, so that code and file meet the same rules."""
    for table in dataclasses.fields(Settings):
        assert isinstance(getattr(Settings(), table.name), Checked), table.name


def test_the_readme_states_the_real_defaults() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | default | meaning |")
    defaults = Settings()
    checked = 0
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        key_cell, default_cell = (cell.strip() for cell in line.replace("\\|", "¦").split(" | ")[:2])
        keys = re.findall(r"`([a-z_]+\.[a-z_]+)`", key_cell)
        shown = re.findall(r"`([^`]*)`", default_cell)
        if len(shown) != len(keys) or re.sub(r"`[^`]*`|[ ,]", "", default_cell):
            continue  # said in words ("TTS rate", "MOSS's prompt", a list in brief)
        for key, text in zip(keys, shown, strict=True):
            table, name = key.split(".")
            actual = getattr(getattr(defaults, table), name)
            try:
                documented = tomllib.loads(f"v = {text.replace('¦', '|')}")["v"]
            except tomllib.TOMLDecodeError:
                documented = text.replace("¦", "|")
            assert documented == (list(actual) if isinstance(actual, tuple) else actual), key
            checked += 1
    assert checked > 55


def test_a_hook_that_cannot_run_is_a_config_problem_named_by_its_key(tmp_path: Path) -> None:
    problems = problems_of({"hooks": {"on_wake": [str(tmp_path / "no-such-hook")], "on_idle": ["true", ""]}})
    assert [p.split(":")[0] for p in problems] == ["hooks.on_wake", "hooks.on_idle[1]"]


def test_the_control_address_is_checked() -> None:
    assert problems_of({"control": {"listen": "unix:relative.sock"}}) == [
        "control.listen: must be unix:/ABSOLUTE/PATH, got 'unix:relative.sock'"
    ]
    assert problems_of({"control": {"listen": "localhost"}})[0].startswith("control.listen: must look like")
    assert problems_of({"control": {"token": "x"}}) == [
        "control.token: secrets do not go in the file; set MOSS_VOICE_CONTROL_TOKEN in the environment"
    ]


def test_the_hotword_model_files_are_checked_before_the_daemon_starts(tmp_path: Path) -> None:
    missing = str(tmp_path / "hey_robot.json")
    assert problems_of({"wake": {"hotword": {"phrases": ["hey_mycroft", missing]}}}) == [
        f"wake.hotword.phrases[1]: no such model file {missing!r}"
    ]
    assert problems_of({"wake": {"hotword": {"engine": "sherpa-onnx", "phrases": ["你好摩斯"]}}}) == [
        "wake.hotword.model_dir: the sherpa-onnx engine needs its model directory (see the README)"
    ]
    nowhere = str(tmp_path / "kws")
    assert problems_of({"wake": {"hotword": {"engine": "sherpa-onnx", "model_dir": nowhere}}}) == [
        f"wake.hotword.model_dir: no such directory {nowhere!r}"
    ]


def test_once_without_on_start_is_rejected_before_it_can_wait_forever(tmp_path: Path) -> None:
    path = tmp_path / "robot.toml"
    path.write_text("[wake]\non_start = false\n")
    checked = subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0  # a daemon that waits for a wake word is fine
    for command in (["config", "check", "--once", str(path)], ["run", "--once", "--config", str(path)]):
        res = subprocess.run([sys.executable, "-m", "daemon", *command], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, command
        assert "wake.on_start: must be true with --once" in res.stderr
