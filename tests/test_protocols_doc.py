"""Every section of docs/protocols.md that a comment cites by name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocols.md"
_CITED = re.compile(r'"((?:FunASR|PaddleSpeech|OpenAI)(?:-compatible)?(?: [\w ]+)?(?:: [\w -]+)?)"')
"""A quoted section name: "FunASR websocket", "PaddleSpeech: base64 in pieces", ..."""


def headings() -> set[str]:
    """Each heading, also without its parenthesised part ("FunASR websocket (ASR)" -> "FunASR websocket")."""
    titles = {
        line.lstrip("#").strip() for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("##")
    }
    return titles | {title.split(" (")[0] for title in titles}


def citing_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "grep", "-l", "docs/protocols.md", "--", "*.py"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    return [ROOT / name for name in listed]


def test_cited_sections_exist() -> None:
    files = citing_files()
    assert files, "no file cites docs/protocols.md"
    known = headings()
    cited = {(path.relative_to(ROOT).as_posix(), m) for path in files for m in _CITED.findall(path.read_text("utf-8"))}
    assert cited
    missing = sorted((path, name) for path, name in cited if name not in known)
    assert not missing, f"sections cited but not in {DOC.name}: {missing}"
