"""The CLI: every command answers --help, and the commands the documents show exist with the
options they show."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    ("run",),
    ("config", "check"),
    ("stubs",),
    ("devices",),
    ("demo",),
    ("bench", "vad"),
    ("bench", "aec"),
    ("bench", "idle"),
    ("bench", "latency"),
    ("bench", "barge-in"),
    ("ctl", "wake"),
    ("ctl", "say"),
    ("ctl", "stop"),
    ("ctl", "status"),
    ("ctl", "listen"),
    ("ctl", "events"),
    ("bench", "hotword"),
    ("bench", "wake"),
    ("bench", "asr-wake"),
    ("bench", "faults"),
    ("bench", "soak"),
    ("bench", "speculation"),
    ("bench", "asr-end"),
    ("doctor",),
)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command(words: tuple[str, ...]) -> tuple[argparse.ArgumentParser, tuple[str, ...]]:
    """The parser of the longest command that ``words`` start with, and the words it used."""
    parser, used = build_parser(), ()
    for word in words:
        sub = _subcommands(parser).get(word)
        if sub is None:
            break
        parser, used = sub, (*used, word)
    return parser, used


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_the_commands_are_those_listed_here() -> None:
    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = _subcommands(parser)
        if not subs:
            found.append(path)
        for name, sub in subs.items():
            walk(sub, (*path, name))

    walk(build_parser(), ())
    assert sorted(found) == sorted(COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_answers_help(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*words, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: moss-voice {' '.join(words)}")


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_has_a_function_to_run(words: tuple[str, ...]) -> None:
    parser, _ = _command(words)
    assert callable(parser.get_default("func")), words


def _documented_commands() -> list[tuple[str, str]]:
    """(document, command line) for each ``moss-voice ...`` in backticks in README and BENCHMARKS."""
    found = []
    for name in ("README.md", "BENCHMARKS.md"):
        for line in re.findall(r"`moss-voice ([^`]+)`", (ROOT / name).read_text(encoding="utf-8")):
            found.append((name, line))
    return found


@pytest.mark.parametrize(("document", "line"), _documented_commands())
def test_documented_commands_and_options_exist(document: str, line: str) -> None:
    words = tuple(w for w in line.split() if re.fullmatch(r"[a-z][a-z-]*", w))
    parser, used = _command(words)
    assert used in COMMANDS, f"{document}: moss-voice {line}"
    shown = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line))
    assert shown <= _options(parser), f"{document}: moss-voice {line}: {sorted(shown - _options(parser))}"


@pytest.mark.parametrize("tool", ["vad", "aec"])
def test_the_evaluations_also_run_as_modules(tool: str) -> None:
    """``python -m daemon.tools.bench.vad`` (cited in their docstrings) is ``moss-voice bench vad``."""
    done = subprocess.run(
        [sys.executable, "-m", f"daemon.tools.bench.{tool}", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: moss-voice bench {tool}")
