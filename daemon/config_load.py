"""Load and check a TOML config into :class:`daemon.config.Settings`.

Every problem is collected, not just the first, and each names the key:
``asr.flavour: must be one of cpp-2pass, cpp-offline, python-classic, python-2026, got 'cpp'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.config import ASR_FLAVOURS, Settings
from daemon.errors import ConfigError

API_KEY_ENV = "MOSS_VOICE_LLM_API_KEY"

CHOICES: dict[str, tuple[str, ...]] = {
    "asr.flavour": ASR_FLAVOURS,
    "asr.mode": ("offline", "online", "2pass"),
    "vad.engine": ("silero", "webrtc"),
    "barge_in.mode": ("pause", "cancel"),
    "aec.engine": ("speex", "off"),
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("auto", "json", "console"),
}
URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "asr.url": ("ws", "wss"),
    "llm.url": ("http", "https"),
    "tts.url": ("http", "https", "ws", "wss"),
}
INPUT_SCHEMES = ("pyaudio", "wav", "room")
OUTPUT_SCHEMES = ("pyaudio", "wav")
SECRET_KEYS = {"llm.api_key": API_KEY_ENV}
ZERO_ALLOWED = ("_turns", "pre_roll_ms", "delay_ms", "duck_after_ms", "trim_ms", "gate_db")
"""Counts and durations that may be 0 (no history, no pre-roll); every other one must be positive."""
TYPE_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "list", "dict": "table"}


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (None: all defaults) and the environment. Raises ConfigError."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: no such file"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read: {exc}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return settings_from_dict(raw, env)


def settings_from_dict(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    problems: list[str] = []
    settings = _build(Settings, raw, "", problems)
    # Keys with a wrong type kept their defaults, so the value checks still see a whole config
    # and every problem is reported in one go.
    problems.extend(_check_values(settings))
    api_key = env.get(API_KEY_ENV) or None
    settings = dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, api_key=api_key))
    if problems:
        raise ConfigError(problems)
    return settings


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'config'}: must be a table, got {_show(raw)}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields or name in SECRET_KEYS:
            if name in SECRET_KEYS:
                problems.append(f"{name}: secrets do not go in the file; set {SECRET_KEYS[name]} in the environment")
                continue
            hint = difflib.get_close_matches(key, list(fields), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(f"{name}: unknown key{suggestion}; known keys: {', '.join(sorted(fields))}")
            continue
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{name}.", problems)
        else:
            converted = _convert(kind, value, name, problems)
            if converted is not _INVALID:
                kwargs[key] = converted
    return cls(**kwargs)


_INVALID = object()


def _convert(kind: Any, value: Any, name: str, problems: list[str]) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, name, problems)
    if kind is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{name}: must be true or false, got {_show(value)}")
        return _INVALID
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{name}: must be an integer, got {_show(value)}")
        return _INVALID
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{name}: must be a number, got {_show(value)}")
        return _INVALID
    if kind is str:
        if isinstance(value, str):
            return value
        problems.append(f"{name}: must be a string, got {_show(value)}")
        return _INVALID
    if origin is tuple:
        if isinstance(value, str) and args and args[-1] is Ellipsis:
            value = [value]  # stop = "<eom>" is as good as stop = ["<eom>"]
        if not isinstance(value, list):
            problems.append(f"{name}: must be a list, got {_show(value)}")
            return _INVALID
        if args and args[-1] is Ellipsis:
            item_kinds = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                problems.append(f"{name}: must be a list of {len(args)} items, got {_show(value)}")
                return _INVALID
            item_kinds = list(args)
        pairs = enumerate(zip(item_kinds, value, strict=True))
        items = [_convert(k, v, f"{name}[{i}]", problems) for i, (k, v) in pairs]
        return _INVALID if _INVALID in items else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{name}: must be a table, got {_show(value)}")
            return _INVALID
        out = {str(k): _convert(args[1], v, f"{name}.{k}", problems) for k, v in value.items()}
        return _INVALID if _INVALID in out.values() else out
    raise TypeError(f"config type {kind!r} of {name} is not supported")  # a bug in config.py


def _check_values(s: Settings) -> list[str]:
    problems: list[str] = []
    values = _flatten(s)
    for key, allowed in CHOICES.items():
        if values[key] not in allowed:
            problems.append(f"{key}: must be one of {', '.join(allowed)}, got {values[key]!r}")
    for key, schemes in URL_SCHEMES.items():
        parts = urlsplit(values[key])
        if parts.scheme not in schemes or not parts.hostname:
            problems.append(f"{key}: must be a {' or '.join(s + '://' for s in schemes)} URL, got {values[key]!r}")
    for key, schemes in (("audio.input", INPUT_SCHEMES), ("audio.output", OUTPUT_SCHEMES)):
        scheme, _, rest = values[key].partition(":")
        if scheme not in schemes or not rest:
            shapes = " or ".join(f"'{s}:{'DEVICE' if s == 'pyaudio' else 'PATH'}'" for s in schemes)
            problems.append(f"{key}: must look like {shapes}, got {values[key]!r}")
    for key in ("earcons.listening", "earcons.error"):
        if values[key] not in ("builtin", "off") and not Path(values[key]).is_file():
            problems.append(f"{key}: must be builtin, off, or an existing WAV file, got {values[key]!r}")
    if s.asr.ca_file is not None and not Path(s.asr.ca_file).is_file():
        problems.append(f"asr.ca_file: no such file {s.asr.ca_file!r}")
    if s.asr.chunk_size[1] <= 0 or min(s.asr.chunk_size) < 0:
        problems.append(f"asr.chunk_size: the middle value must be positive, got {list(s.asr.chunk_size)}")
    if s.asr.chunk_interval <= 0:
        problems.append(f"asr.chunk_interval: must be positive, got {s.asr.chunk_interval}")
    for key, value in values.items():
        if not key.endswith(("_s", "_ms", "_chars", "_weight", "_turns", "max_tokens")):
            continue
        if isinstance(value, int | float) and (value < 0 or (value == 0 and not key.endswith(ZERO_ALLOWED))):
            problems.append(f"{key}: must be positive, got {value}")
    if s.audio.output_rate is not None and not 8000 <= s.audio.output_rate <= 192000:
        problems.append(f"audio.output_rate: must be between 8000 and 192000, got {s.audio.output_rate}")
    if not 0.0 < s.vad.silero_threshold < 1.0:
        problems.append(f"vad.silero_threshold: must be between 0 and 1, got {s.vad.silero_threshold}")
    if not 0.0 <= s.vad.silero_gate_db <= 40.0:
        problems.append(f"vad.silero_gate_db: must be between 0 and 40, got {s.vad.silero_gate_db}")
    if s.vad.webrtc_aggressiveness not in (0, 1, 2, 3):
        problems.append(f"vad.webrtc_aggressiveness: must be 0, 1, 2 or 3, got {s.vad.webrtc_aggressiveness}")
    if s.aec.frame_ms not in (10, 20):
        problems.append(f"aec.frame_ms: must be 10 or 20, got {s.aec.frame_ms}")
    if s.audio.block_ms not in (10, 20, 30, 40, 50, 60, 80, 100):
        problems.append(f"audio.block_ms: must be one of 10, 20, 30, 40, 50, 60, 80, 100, got {s.audio.block_ms}")
    if s.reply.max_clause_chars < 2:
        problems.append(f"reply.max_clause_chars: must be at least 2, got {s.reply.max_clause_chars}")
    if s.reply.max_reply_chars < s.reply.max_clause_chars:
        problems.append("reply.max_reply_chars: must not be less than reply.max_clause_chars")
    return problems


def _flatten(s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in dataclasses.fields(s):
        sub = getattr(s, section.name)
        for f in dataclasses.fields(sub):
            out[f"{section.name}.{f.name}"] = getattr(sub, f.name)
    return out


def _show(value: Any) -> str:
    text = repr(value)
    kind = type(value).__name__
    kind = TYPE_NAMES.get(kind, kind)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"
