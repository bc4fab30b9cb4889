"""A private PulseAudio server for tests of the real audio path: PyAudio -> PortAudio -> ALSA -> pulse.

The server runs as the current user (root works: no ``--system``) from a private temporary
directory, with two null sinks (``norewinds=1``: without it the first read on a monitor waits for
seconds and the first milliseconds played into an idle sink are lost):

- ``speaker``: the default sink; what the code under test plays is recorded from ``speaker.monitor``;
- ``micfeed``: what a test plays into it (``paplay -d micfeed``) comes out of the source ``mic``
  (a remap of ``micfeed.monitor``), the default source.

While the server runs, ``PULSE_SERVER``, ``PULSE_RUNTIME_PATH``, ``XDG_RUNTIME_DIR`` and
``PULSE_COOKIE`` point at it in ``os.environ`` (PortAudio's ALSA pulse plugin reads them when
PortAudio initialises, so create PyAudio objects inside the ``with``). Everything is undone and the
server killed on exit. ``pulse_server()`` skips the test if the ``pulseaudio`` binary is missing.

    with pulse_server() as pulse:
        with pulse.record_speaker() as rec:
            ...                                  # play something through PyAudio
        samples = rec.samples                    # int16 numpy array at rec.rate
        pulse.play_into_mic(wav_path).wait()     # the default PyAudio input hears it
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np
import pytest

START_TIMEOUT_S = 10.0

_ENV_KEYS = ("PULSE_SERVER", "PULSE_RUNTIME_PATH", "XDG_RUNTIME_DIR", "PULSE_COOKIE", "PULSE_SINK", "PULSE_SOURCE")


def _script(sink_rate: int) -> str:
    null = f"rate={sink_rate} channels=1 norewinds=1"
    return "\n".join(
        [
            "load-module module-native-protocol-unix auth-anonymous=1",
            f"load-module module-null-sink sink_name=speaker sink_properties=device.description=VirtualSpeaker {null}",
            f"load-module module-null-sink sink_name=micfeed sink_properties=device.description=MicFeed {null}",
            "load-module module-remap-source master=micfeed.monitor source_name=mic"
            " source_properties=device.description=VirtualMic",
            "set-default-sink speaker",
            "set-default-source mic",
            "",
        ]
    )


class Recorder:
    """``parec`` on a source, read by a thread so the pipe never fills. Use as a context manager,
    or call ``stop()``; ``samples`` holds the int16 mono audio recorded so far."""

    def __init__(self, env: dict[str, str], source: str, rate: int) -> None:
        self.rate = rate
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            ["parec", "-d", source, "--raw", f"--rate={rate}", "--channels=1", "--format=s16le", "--latency-msec=10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name="parec-reader", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._chunks:  # recording really runs once the first bytes arrive
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"parec on {source} produced nothing")
            time.sleep(0.005)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        while chunk := self._proc.stdout.read1(4096):
            with self._lock:
                self._chunks.append(chunk)

    @property
    def samples(self) -> np.ndarray:
        with self._lock:
            data = b"".join(self._chunks)
        return np.frombuffer(data[: len(data) // 2 * 2], "<i2")

    def stop(self) -> np.ndarray:
        if self._proc.poll() is None:
            self._proc.terminate()
        self._proc.wait(5)
        self._reader.join(5)
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        return self.samples

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PulseServer:
    """A running private server; see the module docstring."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes], env: dict[str, str]) -> None:
        self.root = root
        self.process = process
        self.env = env  # the full environment clients need (also set in os.environ while running)
        self.log_path = root / "pulseaudio.log"

    def pactl(self, *args: str) -> str:
        return subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def play_into_mic(self, wav: Path) -> subprocess.Popen[bytes]:
        """Start ``paplay -d micfeed``: the default input device hears the file. Wait for it."""
        return subprocess.Popen(["paplay", "-d", "micfeed", str(wav)], env=self.env, stderr=subprocess.DEVNULL)

    def record_speaker(self, rate: int = 16000) -> Recorder:
        """Record what is played to the ``speaker`` sink (the default output) from its monitor."""
        return self.record("speaker.monitor", rate)

    def record(self, source: str, rate: int = 16000) -> Recorder:
        return Recorder(self.env, source, rate)

    def kill(self) -> None:
        """Kill the server at once (a device that disappears)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@contextmanager
def pulse_server(*, sink_rate: int = 16000) -> Iterator[PulseServer]:
    """Start a private PulseAudio; skip the test if the ``pulseaudio`` binary is missing."""
    for tool in ("pulseaudio", "pactl", "paplay", "parec"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    root = Path(tempfile.mkdtemp(prefix="moss-pulse-"))  # short: the socket path must fit in 108 bytes
    runtime = root / "xdg"
    runtime.mkdir(mode=0o700)
    script = root / "server.pa"
    script.write_text(_script(sink_rate))
    ours = {
        "XDG_RUNTIME_DIR": str(runtime),
        "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
        "PULSE_SERVER": f"unix:{runtime / 'pulse' / 'native'}",
        "PULSE_COOKIE": str(root / "cookie"),
    }
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env.update(ours)
    server_env = dict(env, HOME=str(root), PULSE_STATE_PATH=str(root / "state"))
    log_path = root / "pulseaudio.log"
    process = subprocess.Popen(
        [
            "pulseaudio",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--realtime=no",
            "--high-priority=no",
            "--use-pid-file=no",
            "-n",
            "-F",
            str(script),
            f"--log-target=file:{log_path}",
        ],
        env=server_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    server = PulseServer(root, process, env)
    try:
        _wait_ready(server)
        for k in _ENV_KEYS:
            os.environ.pop(k, None)
        os.environ.update(ours)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PulseServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        ok = subprocess.run(["pactl", "info"], env=server.env, capture_output=True, timeout=10).returncode == 0
        if ok:
            return
        if server.process.poll() is not None or time.monotonic() > deadline:
            log = server.log_path.read_text(errors="replace")[-2000:] if server.log_path.exists() else ""
            raise RuntimeError(f"private PulseAudio did not start (exit {server.process.poll()}):\n{log}")
        time.sleep(0.02)
