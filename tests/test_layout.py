"""The package layout rules, checked: who may import whom, the tools kept off the runtime path,
cited documents that exist, and no python-daemon beside us."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"states": {"daemon", "hardware"}, "hardware": {"daemon", "states"}}
TOOLS = ROOT / "daemon" / "tools"
CLI = ROOT / "daemon" / "__main__.py"
"""The one runtime module that may import from the tools: the CLI, to register their commands."""
HEAVY = ("daemon.app", "uvicorn", "starlette", "matplotlib", "pocketsphinx", "websockets", "pyaudio")
"""Modules that building the CLI's parser must not load: ``moss-voice config check`` stays fast."""
LIGHT_TOOLS = {
    "daemon.tools",
    "daemon.tools.cli",  # stubs, demo
    "daemon.tools.bench",
    "daemon.tools.bench.cli",  # bench ...
    "daemon.tools.bench.scenarios",  # the latency scenarios' names and defaults
    "daemon.tools.stubs",
    "daemon.tools.stubs.tokens",  # which the scenarios count with
}
"""The tools' modules the CLI may load to build its parser: registration, names and defaults."""


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every absolute import of a module: (module, the names taken from it; [] for ``import x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _imported_top_levels(path: Path) -> set[str]:
    return {module.split(".")[0] for module, _ in _imports(path)}


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _modules_loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_states_and_hardware_import_neither_daemon_nor_each_other(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    offenders = {str(f.relative_to(ROOT)): sorted(_imported_top_levels(f) & FORBIDDEN[package]) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_clients_do_not_import_hardware() -> None:
    files = sorted((ROOT / "daemon" / "clients").rglob("*.py"))
    assert files
    offenders = [str(f.relative_to(ROOT)) for f in files if "hardware" in _imported_top_levels(f)]
    assert offenders == []


def test_the_runtime_imports_the_tools_only_to_register_their_commands() -> None:
    runtime = [f for f in sorted((ROOT / "daemon").rglob("*.py")) if not f.is_relative_to(TOOLS)]
    assert CLI in runtime
    offenders = {
        str(f.relative_to(ROOT)): [m for m, _ in _imports(f) if _is_within(m, "daemon.tools")]
        for f in runtime
        if f != CLI
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    from_tools = [(m, names) for m, names in _imports(CLI) if _is_within(m, "daemon.tools")]
    assert from_tools, "the CLI registers no tool command"
    for module, names in from_tools:
        assert names and all(n.startswith("register") for n in names), (module, names)


def test_the_app_and_the_run_command_load_no_tool() -> None:
    loaded = _modules_loaded_by("import daemon.app, daemon.cli_run")
    assert "daemon.app" in loaded
    assert sorted(m for m in loaded if _is_within(m, "daemon.tools")) == []
    # through the CLI, `moss-voice run` adds the tools' registration and nothing else of them
    loaded = _modules_loaded_by(
        "from daemon.__main__ import build_parser\nbuild_parser().parse_args(['run'])\nimport daemon.app"
    )
    assert {m for m in loaded if _is_within(m, "daemon.tools")} <= LIGHT_TOOLS


def test_building_the_parser_loads_only_the_tools_registration_and_nothing_heavy() -> None:
    loaded = _modules_loaded_by("from daemon.__main__ import build_parser\nbuild_parser()")
    tools = {m for m in loaded if _is_within(m, "daemon.tools")}
    assert {"daemon.tools.cli", "daemon.tools.bench.cli"} <= tools <= LIGHT_TOOLS
    assert sorted(m for m in loaded if any(_is_within(m, heavy) for heavy in HEAVY)) == []


_CITED = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def _cited_documents(path: Path) -> set[str]:
    """The ``*.md`` names in a module's comments and docstrings."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    prose = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                prose.append(value.value)
    return {match for chunk in prose for match in _CITED.findall(chunk)}


def _exists_in_repository(cited: str) -> bool:
    """A path from the root (``docs/protocols.md``), or a bare name of a file somewhere in it."""
    if (ROOT / cited).is_file():
        return True
    return "/" not in cited and any(not p.is_relative_to(ROOT / ".venv") for p in ROOT.rglob(cited) if p.is_file())


def test_every_document_cited_in_the_code_exists() -> None:
    files = [f for package in ("daemon", "states", "hardware", "tests") for f in sorted((ROOT / package).rglob("*.py"))]
    missing = {
        str(f.relative_to(ROOT)): sorted(c for c in _cited_documents(f) if not _exists_in_repository(c)) for f in files
    }
    assert {k: v for k, v in missing.items() if v} == {}


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
