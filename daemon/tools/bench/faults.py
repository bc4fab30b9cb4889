"""``moss-voice bench faults``: the fault matrix, cell by cell (daemon/tools/bench/fault_cells.py),
as a table: how each faulty turn ended, how long after the fault struck, what the user heard, how
many log lines named the service, and whether the next turn was answered."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from daemon.tools.bench.fault_cells import BOUND_S, CELLS, EXTRA, STAGE_TIMEOUT_S, CellResult, run_cell


def parse_cell(text: str) -> tuple[str, str]:
    """``llm:cut`` -> ("llm", "cut"); ValueError naming what is known otherwise."""
    service, _, fault = text.partition(":")
    known = (*CELLS, *EXTRA)
    if (service, fault) not in known:
        raise ValueError(f"unknown cell {text!r}; known: {', '.join(f'{s}:{f}' for s, f in known)}")
    return service, fault


GIVE_UP_S = 10.0
"""Here a turn that has not ended 10 s after its wake is hung: past every bound (the test waits longer)."""


async def run_matrix(cells: list[tuple[str, str]], workdir: Path, *, progress: bool = True) -> list[CellResult]:
    results = []
    for service, fault in cells:
        started = time.monotonic()
        result = await run_cell(service, fault, workdir, give_up_s=GIVE_UP_S)
        results.append(result)
        if progress:
            print(f"  {service}:{fault} ({result.misbehave}): {time.monotonic() - started:.1f} s", flush=True)
    return results


def heard(r: CellResult) -> str:
    if r.apology:
        return "apology"
    if r.error_earcons:
        return "earcon"
    return "sound" if r.sound_after_failure else "-"


def render(results: list[CellResult]) -> str:
    rows = [("service", "fault", "stand-in", "outcome", "fault->end s", "heard", "log lines", "next turn")]
    for r in results:
        outcome = "hung" if r.outcome is None else r.outcome
        if r.outcome == "failed" and r.failed_service != r.service:
            outcome += f" ({r.failed_service})"
        rows.append(
            (
                r.service,
                r.fault,
                r.misbehave,
                outcome + (" CRASH" if r.crashed else ""),
                "-" if r.fault_to_end_s is None else f"{r.fault_to_end_s:.2f}",
                heard(r),
                str(len(r.fault_logs)),
                r.next_outcome or "none",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"fault matrix: every stage timeout {STAGE_TIMEOUT_S:g} s; a failed stage should end its turn within "
        f"{BOUND_S:g} s of the fault"
    ]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("fault->end: from the wake (ASR), the LLM request or the first TTS request to the turn's end;")
    lines.append("heard: the error earcon in the output, an apology, or (sound) other audio after the failure;")
    lines.append("log lines: warnings and errors naming the service (turn_failed included);")
    lines.append(f"hung: no end {GIVE_UP_S:g} s after the wake.")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    try:
        cells = [parse_cell(c) for c in args.cell] if args.cell else list(CELLS)
    except ValueError as exc:
        print(exc)
        return 2
    if args.extra and not args.cell:
        cells += list(EXTRA)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="moss-voice-faults-") as tmp:
        workdir = args.keep or Path(tmp)
        results = asyncio.run(run_matrix(cells, workdir))
    print(render(results))
    print(f"{len(results)} cells in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1, default=str), encoding="utf-8")
    return 1 if any(r.crashed for r in results) else 0
