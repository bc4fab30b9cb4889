"""``moss-voice doctor``: what is fine on this robot, and what to do about what is not.

Each check is an async function that returns findings; :func:`run_checks` runs them one after
the other, each under its own timeout, and turns a timeout or an exception into a FAIL finding,
so one broken check never hides the others. The checks live beside this module: ``config_check``
(the file), ``audio`` (devices), ``services`` (ASR, LLM, TTS, the hotword engine) and ``system``
(groups, device permissions, the sound server, the control socket).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

Result = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Finding:
    check: str
    result: Result
    detail: str
    fix: str = ""
    """What to do about it; empty when there is nothing to do."""


CheckFn = Callable[[], Awaitable[list[Finding]]]


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn
    timeout_s: float
    subject: str = ""
    """What it talks to (a URL, a device), named when the check overruns its timeout."""


async def run_checks(checks: Sequence[Check]) -> list[Finding]:
    """Every check's findings in order; a check that raises or overruns its timeout is a FAIL."""
    findings: list[Finding] = []
    for check in checks:
        try:
            async with asyncio.timeout(check.timeout_s):
                findings.extend(await check.run())
        except TimeoutError:
            what = f"{check.subject}: " if check.subject else ""
            detail = f"{what}no answer in {check.timeout_s:g} s"
            findings.append(Finding(check.name, "FAIL", detail, "is it up and reachable? check it in the config"))
        except Exception as exc:  # noqa: BLE001 -- a check's bug or an unexpected library error: report, go on
            findings.append(Finding(check.name, "FAIL", f"{type(exc).__name__}: {exc}"))
    return findings


def failed(findings: Sequence[Finding]) -> bool:
    return any(f.result == "FAIL" for f in findings)


def to_json(findings: Sequence[Finding]) -> str:
    return json.dumps(
        {"ok": not failed(findings), "checks": [asdict(f) for f in findings]}, ensure_ascii=False, indent=2
    )


def to_table(findings: Sequence[Finding]) -> str:
    """A plain-text table: check, result, detail; what to do on an indented line below a row."""
    name_w = max([len("CHECK"), *(len(f.check) for f in findings)])
    lines = [f"{'CHECK':<{name_w}}  RESULT  DETAIL / WHAT TO DO"]
    for f in findings:
        lines.append(f"{f.check:<{name_w}}  {f.result:<6}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<{name_w}}          -> {f.fix}")
    fails = sum(f.result == "FAIL" for f in findings)
    warns = sum(f.result == "warn" for f in findings)
    lines.append(f"{len(findings)} checks: {fails} FAIL, {warns} warn")
    return "\n".join(lines)
