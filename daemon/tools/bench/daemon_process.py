"""The daemon as a process, for ``moss-voice bench idle``: spawn ``python -m daemon run``, wait
for its ``daemon_ready`` line, watch its CPU and memory in ``/proc``, stop it with SIGTERM; and
``-X importtime``'s report of where a start spends its imports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SETTLE_S = 1.0
"""After ready and before the idle window: the start's last tasks (the LLM check) finish."""
SAMPLE_EVERY_S = 1.0
TOP_IMPORTS = 8


class BenchError(Exception):
    """The daemon did not start, or a measurement could not be made: the message says why."""


@dataclass(frozen=True)
class Start:
    ready_ms: float
    """From just before the spawn to the ``daemon_ready`` line read off its stdout."""
    daemon_ms: float | None
    """The daemon's own ``ms`` field: App.run's start (after interpreter, imports, config) to ready."""
    cpu_s: float
    """CPU the daemon used from spawn to ready."""
    peak_rss_mb: float
    """VmHWM at ready."""
    exit_code: int | None
    """After SIGTERM (None: it did not exit within ``STOP_TIMEOUT_S`` and was killed)."""
    stop_ms: float
    """SIGTERM to exit."""


@dataclass(frozen=True)
class Idle:
    window_s: float
    cpu_s: float
    cpu_s_per_s: float
    worst_interval_cpu_s_per_s: float
    """The highest rate over one sampling interval (``SAMPLE_EVERY_S``) of the window."""
    peak_rss_mb: float
    """VmHWM at the end of the window: the peak since the process started."""
    rss_mb: float
    """VmRSS at the end of the window."""
    threads: int


@dataclass(frozen=True)
class ImportCost:
    module: str
    cumulative_ms: float


# --------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and brackets
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (``VmHWM``, ``VmRSS`` in kB, ``Threads``)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def mb(kb: int) -> float:
    return kb / 1024


# --------------------------------------------------------------------------- the daemon


def write_config(path: Path, *, asr: str, llm: str, tts: str, audio_input: str, audio_output: str) -> Path:
    """An idle daemon's TOML: the stand-ins, the devices, no wake at start, JSON logs."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    path.write_text(
        "\n".join(
            [
                "[asr]",
                f"url = {q(asr)}",
                "[llm]",
                f"url = {q(llm)}",
                "[tts]",
                f"url = {q(tts)}",
                "[audio]",
                f"input = {q(audio_input)}",
                f"output = {q(audio_output)}",
                "[wake]",
                "on_start = false",
                "[log]",
                'format = "json"',
                'level = "info"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """One ``moss-voice run`` subprocess; its stdout (JSON lines) and stderr are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, spawned_at: float) -> None:
        self.proc = proc
        self.spawned_at = spawned_at
        self.ready = asyncio.Event()
        self.ready_at: float | None = None
        self.ready_event: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._new_event = asyncio.Event()
        self.stderr = bytearray()
        self._readers = [
            asyncio.create_task(self._read_stdout(), name="daemon-stdout"),
            asyncio.create_task(self._read_stderr(), name="daemon-stderr"),
        ]

    @classmethod
    async def spawn(
        cls, config: Path, *, cwd: Path, python_flags: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> DaemonProcess:
        """``env``: the daemon's whole environment (None: ours), e.g. with ``NOTIFY_SOCKET``."""
        cmd = [sys.executable, *python_flags, "-m", "daemon", "run", "--config", str(config)]
        spawned_at = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        return cls(proc, spawned_at)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            now = time.perf_counter()
            text = line.decode("utf-8", "replace").strip()
            try:
                event = json.loads(text)
            except ValueError:
                self.other_lines.append(text)
                continue
            if not isinstance(event, dict):
                self.other_lines.append(text)
                continue
            self.events.append(event)
            self._new_event.set()
            if event.get("event") == "daemon_ready" and not self.ready.is_set():
                self.ready_at = now
                self.ready_event = event
                self.ready.set()
        self._new_event.set()  # the end: whoever waits sees it

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    async def wait_for(self, event: str, *, after: int = 0, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The first log event named ``event`` with these ``fields``, from index ``after`` of
        ``events`` on, already logged or still to come. Raises BenchError on timeout or exit."""

        def find() -> dict[str, Any] | None:
            for e in self.events[after:]:
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()):
                    return e
            return None

        async def arrival() -> dict[str, Any]:
            while (found := find()) is None:
                if self.proc.stdout is not None and self.proc.stdout.at_eof():
                    raise BenchError(f"the daemon stopped before {event} {fields}\n{self.tail()}")
                self._new_event.clear()
                await self._new_event.wait()
            return found

        try:
            return await asyncio.wait_for(arrival(), timeout)
        except TimeoutError:
            raise BenchError(f"no {event} {fields} within {timeout:.0f} s\n{self.tail()}") from None

    def tail(self, lines: int = 12) -> str:
        """The last lines it wrote, for an error message."""
        out = [json.dumps(e, ensure_ascii=False) for e in self.events[-lines:]] + self.other_lines[-lines:]
        err = self.stderr.decode("utf-8", "replace").strip().splitlines()[-lines:]
        return "\n".join(["stdout:", *out, "stderr:", *err])

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from spawn to ready. Raises BenchError if it exits first or takes too long."""
        ready = asyncio.create_task(self.ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        try:
            await asyncio.wait({ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, exited):
                task.cancel()
            await asyncio.wait({ready, exited})
        if self.ready_at is None:
            why = (
                f"exited with status {self.proc.returncode}"
                if self.proc.returncode is not None
                else f"was not ready after {timeout:.0f} s"
            )
            raise BenchError(f"the daemon {why} before daemon_ready\n{self.tail()}")
        return self.ready_at - self.spawned_at

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> tuple[int | None, float]:
        """SIGTERM, as systemd stops it; its exit status (None: killed after ``timeout``) and the seconds it took."""
        started = time.perf_counter()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            code = None
            self.proc.kill()
            await self.proc.wait()
        took = time.perf_counter() - started
        await asyncio.wait(self._readers, timeout=5.0)
        return code, took

    async def aclose(self) -> None:
        """Kill it if it still runs (after an error), and stop reading."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.wait(self._readers)


async def measure_idle(pid: int, window_s: float, every_s: float = SAMPLE_EVERY_S) -> Idle:
    """CPU per second of wall time of ``pid`` over ``window_s`` (after ``SETTLE_S``), and its memory."""
    await asyncio.sleep(SETTLE_S)
    t0 = time.perf_counter()
    c0 = proc_cpu_s(pid)
    last_t, last_c = t0, c0
    worst = 0.0
    end = t0 + window_s
    while (now := time.perf_counter()) < end:
        await asyncio.sleep(min(every_s, end - now))
        t, c = time.perf_counter(), proc_cpu_s(pid)
        if t > last_t:
            worst = max(worst, (c - last_c) / (t - last_t))
        last_t, last_c = t, c
    status = proc_status(pid)
    cpu = last_c - c0
    return Idle(
        window_s=last_t - t0,
        cpu_s=cpu,
        cpu_s_per_s=cpu / (last_t - t0),
        worst_interval_cpu_s_per_s=worst,
        peak_rss_mb=mb(status.get("VmHWM", 0)),
        rss_mb=mb(status.get("VmRSS", 0)),
        threads=status.get("Threads", 0),
    )


async def one_start(config: Path, workdir: Path, *, window_s: float | None = None) -> tuple[Start, Idle | None]:
    """Spawn, wait for ready, optionally watch it idle, then SIGTERM."""
    daemon = await DaemonProcess.spawn(config, cwd=workdir)
    try:
        ready_s = await daemon.wait_ready()
        cpu_at_ready = proc_cpu_s(daemon.pid)
        hwm_at_ready = proc_status(daemon.pid).get("VmHWM", 0)
        idle = await measure_idle(daemon.pid, window_s) if window_s is not None else None
        code, stop_s = await daemon.stop()
    finally:
        await daemon.aclose()
    own = daemon.ready_event.get("ms")
    start = Start(
        ready_ms=ready_s * 1000,
        daemon_ms=float(own) if isinstance(own, int | float) else None,
        cpu_s=cpu_at_ready,
        peak_rss_mb=mb(hwm_at_ready),
        exit_code=code,
        stop_ms=stop_s * 1000,
    )
    return start, idle


async def import_costs(config: Path, workdir: Path) -> tuple[list[ImportCost], float]:
    """One start under ``-X importtime``: the slowest top-level imports, and all of them together (ms)."""
    daemon = await DaemonProcess.spawn(config, cwd=workdir, python_flags=("-X", "importtime"))
    try:
        await daemon.wait_ready()
        await daemon.stop()
    finally:
        await daemon.aclose()
    return parse_importtime(daemon.stderr.decode("utf-8", "replace"))


def parse_importtime(text: str, top: int = TOP_IMPORTS) -> tuple[list[ImportCost], float]:
    """``-X importtime`` output: the ``top`` slowest top-level imports, and the sum of all top-level ones."""
    costs: list[ImportCost] = []
    for line in text.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header
        name = parts[2][1:]
        if name.startswith(" "):
            continue  # imported by another import: inside its parent's cumulative time
        costs.append(ImportCost(module=name.strip(), cumulative_ms=int(parts[1]) / 1000))
    total = sum(c.cumulative_ms for c in costs)
    return sorted(costs, key=lambda c: c.cumulative_ms, reverse=True)[:top], total
