"""The code stays linted, formatted and type-checked (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["daemon", "states", "hardware", "tests"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check() -> None:
    result = run("ruff", "check", *PATHS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", *PATHS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_mypy() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
