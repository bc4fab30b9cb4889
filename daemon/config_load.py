"""Load and check a TOML config into :class:`daemon.config.Settings`.

Every problem is collected, not just the first, and each names the key:
``asr.flavour: must be one of cpp-2pass, cpp-offline, python-classic, python-2026, got 'cpp'``.
The loader checks the keys and the types of the values; the ranges are the settings classes' own
(``states.settings``), checked when each table's class is built. Only what depends on this
machine is checked here: that the files named (earcons, the CA) exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import ssl
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon.clients.tls import load_ca_file
from daemon.config import API_KEY_ENV, Settings
from daemon.errors import ConfigError
from daemon.hooks import check_hooks
from daemon.secrets import with_credentials
from states.settings import SettingsError, rule_of

__all__ = ["API_KEY_ENV", "file_keys", "load_settings", "once_problems", "settings_from_dict"]

TYPE_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "list", "dict": "table"}


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (None: all defaults), the environment and the systemd credentials. Raises ConfigError."""
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
    """``env``: the environment, whose ``$CREDENTIALS_DIRECTORY`` (systemd) may hold the secrets
    too (``daemon.secrets``: a credential wins over the variable)."""
    problems: list[str] = []
    env = with_credentials(os.environ if env is None else env, problems)
    # A table with a problem keeps its defaults, so the rest is still checked and every problem
    # is reported in one go.
    settings: Settings = _build(Settings, raw, "", problems, env)
    problems.extend(_check_files(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def once_problems(settings: Settings) -> list[str]:
    """What ``run --once`` cannot run with: it waits for one turn, and without ``wake.on_start``
    nothing may ever start it."""
    if not settings.wake.on_start:
        return ["wake.on_start: must be true with --once (the one turn it waits for starts at start-up)"]
    return []


def file_keys(cls: type = Settings, prefix: str = "") -> list[str]:
    """Every key the file may set, ``table.key``, in declaration order."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if _is_settings(kind):
            keys.extend(file_keys(kind, f"{prefix}{f.name}."))
        elif rule_of(f).in_file and rule_of(f).env is None:
            keys.append(f"{prefix}{f.name}")
    return keys


def _build(cls: type, raw: Any, prefix: str, problems: list[str], env: Mapping[str, str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'config'}: must be a table, got {_show(raw)}")
        raw = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = [name for name, f in fields.items() if rule_of(f).in_file and rule_of(f).env is None]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        secret = rule_of(fields[key]).env if key in fields else None
        if secret is not None:
            problems.append(f"{name}: secrets do not go in the file; set {secret} in the environment")
            continue
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(f"{name}: unknown key{suggestion}; known keys: {', '.join(sorted(known))}")
            continue
        kind = hints[key]
        if _is_settings(kind):
            kwargs[key] = _build(kind, value, f"{name}.", problems, env)
        else:
            converted = _convert(kind, value, name, problems)
            if converted is not _INVALID:
                kwargs[key] = converted
    for name, f in fields.items():
        variable = rule_of(f).env
        if variable is not None:
            kwargs[name] = env.get(variable) or None
        elif name not in kwargs and _is_settings(hints[name]):
            kwargs[name] = _build(hints[name], {}, f"{prefix}{name}.", problems, env)  # secrets inside
    try:
        return cls(**kwargs)
    except SettingsError as exc:
        problems.extend(f"{prefix}{key}: {message}" for key, message in exc.problems)
        return cls(**{k: v for k, v in kwargs.items() if rule_of(fields[k]).env is not None})


def _is_settings(kind: Any) -> bool:
    """A table of the file: a settings dataclass."""
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


_INVALID = object()
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}
"""TOML scalars: what each field type accepts (TOML's booleans are not numbers), and its name."""


def _convert(kind: Any, value: Any, name: str, problems: list[str]) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, name, problems)
    if kind in _SCALARS:
        accepts, what = _SCALARS[kind]
        if accepts(value):
            return float(value) if kind is float else value
        problems.append(f"{name}: must be {what}, got {_show(value)}")
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


def _check_files(s: Settings) -> list[str]:
    problems: list[str] = []
    for key in ("listening", "error", "thinking"):
        value = getattr(s.earcons, key)
        if value not in ("builtin", "off") and not Path(value).is_file():
            problems.append(f"earcons.{key}: must be builtin, off, or an existing WAV file, got {value!r}")
    problems.extend(_check_ca_files(s))
    problems.extend(check_hooks(s.hooks))
    problems.extend(_check_hotword_files(s))
    return problems


def _check_ca_files(s: Settings) -> list[str]:
    """Each service's ``ca_file`` exists and holds certificates (PEM) a TLS context can load."""
    problems: list[str] = []
    for service in ("asr", "llm", "tts"):
        ca_file: str | None = getattr(s, service).ca_file
        if ca_file is None:
            continue
        if not Path(ca_file).is_file():
            problems.append(f"{service}.ca_file: no such file {ca_file!r}")
            continue
        try:
            load_ca_file(ca_file)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{service}.ca_file: cannot load {ca_file!r} as PEM certificates: {exc}")
    return problems


def _check_hotword_files(s: Settings) -> list[str]:
    """The model files the hotword engine will load (the engine checks what is inside them)."""
    h = s.wake.hotword
    problems: list[str] = []
    if h.model_dir is not None and not Path(h.model_dir).is_dir():
        problems.append(f"wake.hotword.model_dir: no such directory {h.model_dir!r}")
    if h.engine == "sherpa-onnx" and h.model_dir is None:
        problems.append("wake.hotword.model_dir: the sherpa-onnx engine needs its model directory (see the README)")
    if h.engine == "microwakeword":
        for i, phrase in enumerate(h.phrases):
            if phrase.endswith(".json") and not Path(phrase).is_file():
                problems.append(f"wake.hotword.phrases[{i}]: no such model file {phrase!r}")
    return problems


def _show(value: Any) -> str:
    text = repr(value)
    kind = type(value).__name__
    kind = TYPE_NAMES.get(kind, kind)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"
