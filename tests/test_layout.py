"""The package layout rules of README.md "Architecture", checked: import directions and no python-daemon."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"states": {"daemon", "hardware"}, "hardware": {"daemon", "states"}}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_states_and_hardware_import_neither_daemon_nor_each_other(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    offenders = {str(f.relative_to(ROOT)): sorted(_imported_top_levels(f) & FORBIDDEN[package]) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_python_daemon_is_not_installed_beside_us() -> None:
    """python-daemon's import name is also `daemon`: installing it would overwrite our package."""
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("python-daemon")
    import daemon

    assert Path(daemon.__file__).resolve().is_relative_to(ROOT), daemon.__file__
    assert hasattr(daemon, "__version__")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "moss-voice"
    assert script.exists() or shutil.which("moss-voice"), "moss-voice console script missing"
    entry = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "moss-voice"]
    assert entry and entry[0].value == "daemon.__main__:main"
