"""Settings that check themselves: each field declares its range, one routine checks them all.

A settings class is a frozen dataclass based on :class:`Checked` whose fields are made with
:func:`setting`: building one checks it (:func:`validate`). The same rules then hold whether the values come from
code or from the TOML file: the loader (``daemon/config_load.py``) builds the very same classes,
catches :class:`SettingsError` and puts the table name in front of each key. Every field of a
class is checked, so one error names all of the class's problems, not just the first.

This lives in ``states`` because it is the lowest layer that owns settings (the endpointer, the
speech text, barge-in); ``daemon`` builds its own settings on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

RULE = "moss_voice_rule"
"""The key of a field's :class:`Rule` in ``dataclasses.Field.metadata``."""


@dataclass(frozen=True)
class Rule:
    """What a field accepts. None (the value) always passes: it means "not set"."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    one_of: tuple[Any, ...] | None = None
    not_below: str | None = None
    """The name of another field of the same class that this one must not be less than."""
    check: Callable[[Any], str | None] | None = None
    """Anything else about the value: returns what is wrong ("must be ...") or None."""
    in_file: bool = True
    """False: a tuning knob for code and tests, not a key of the TOML file."""
    env: str | None = None
    """A secret: read from this environment variable only, never from the file."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    one_of: tuple[Any, ...] | None = None,
    not_below: str | None = None,
    check: Callable[[Any], str | None] | None = None,
    in_file: bool = True,
    env: str | None = None,
) -> Any:
    """A dataclass field with its default and its :class:`Rule`."""
    rule = Rule(gt=gt, ge=ge, lt=lt, le=le, one_of=one_of, not_below=not_below, check=check, in_file=in_file, env=env)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={RULE: rule})
    return dataclasses.field(default=default, metadata={RULE: rule})


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    """The field's rule; a plain field (no :func:`setting`) accepts anything of its type."""
    rule = f.metadata.get(RULE)
    return rule if isinstance(rule, Rule) else Rule()


class Checked:
    """The base of every settings dataclass: building one checks each field against its rule."""

    def __post_init__(self) -> None:
        validate(self)


class SettingsError(ValueError):
    """Values out of their range. ``problems``: (field name, what is wrong) pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


def validate(settings: Any) -> None:
    """Raise :class:`SettingsError` naming every field of ``settings`` that breaks its rule."""
    found = list(problems(settings))
    if found:
        raise SettingsError(found)


def problems(settings: Any) -> Iterator[tuple[str, str]]:
    """(field name, what is wrong) for each field of the dataclass ``settings`` that breaks its rule."""
    for f in dataclasses.fields(settings):
        message = _problem(rule_of(f), getattr(settings, f.name), settings)
        if message is not None:
            yield f.name, message


def _problem(rule: Rule, value: Any, settings: Any) -> str | None:
    if value is None:
        return None
    if rule.one_of is not None and value not in rule.one_of:
        return f"must be one of {', '.join(str(c) for c in rule.one_of)}, got {_show(value)}"
    bounds = (rule.gt, rule.ge, rule.lt, rule.le)
    if any(b is not None for b in bounds) and not _in_range(value, *bounds):
        return f"{_range_text(*bounds)}, got {_show(value)}"
    if rule.not_below is not None and value < getattr(settings, rule.not_below):
        return f"must not be less than {rule.not_below} ({getattr(settings, rule.not_below)}), got {_show(value)}"
    if rule.check is not None:
        return rule.check(value)
    return None


def _in_range(value: float, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )


def _range_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    if ge is not None and le is not None:
        return f"must be between {ge:g} and {le:g}"
    if gt == 0 and lt is None and le is None:
        return "must be positive"
    parts = []
    if gt is not None:
        parts.append(f"more than {gt:g}")
    if ge is not None:
        parts.append(f"at least {ge:g}")
    if lt is not None:
        parts.append(f"less than {lt:g}")
    if le is not None:
        parts.append(f"at most {le:g}")
    return "must be " + " and ".join(parts)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
