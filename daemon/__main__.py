"""The ``moss-voice`` command: parse arguments, load the config, configure logging, run."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from daemon import __version__
from daemon.config_load import load_settings
from daemon.errors import ConfigError, HardwareError
from daemon.logs import configure_logging

log = structlog.get_logger()

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "latency"]:  # its options are its own, --help included
        from daemon.tools.bench.latency import main as latency_main

        return int(latency_main(argv[2:]) or 0)
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss-voice", description="The voice of a service robot.")
    parser.add_argument("--version", action="version", version=f"moss-voice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", metavar="PATH", help="TOML config (default: built-in defaults)")
    run.add_argument(
        "--once", action="store_true", help="exit after one finished turn: 0 answered, 1 failed, 3 nobody spoke"
    )
    run.set_defaults(func=_cmd_run)

    config = sub.add_parser("config", help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config and name every wrong key or value")
    check.add_argument("path", metavar="PATH")
    check.set_defaults(func=_cmd_config_check)

    stubs = sub.add_parser("stubs", help="run the loopback stand-ins for FunASR, vLLM and PaddleSpeech")
    stubs.add_argument("--host", default="127.0.0.1")
    stubs.add_argument("--asr-port", type=int, default=10095)
    stubs.add_argument("--llm-port", type=int, default=8000)
    stubs.add_argument("--tts-port", type=int, default=8092)
    stubs.add_argument(
        "--asr-flavour", default="cpp-2pass", choices=("cpp-2pass", "cpp-offline", "python-classic", "python-2026")
    )
    stubs.add_argument("--tts-protocol", default="http", choices=("http", "websocket"))
    stubs.set_defaults(func=_cmd_stubs)

    devices = sub.add_parser("devices", help="list the sound cards' inputs and outputs (for [audio])")
    devices.set_defaults(func=_cmd_devices)

    demo = sub.add_parser("demo", help="one full voice turn against the stand-ins, WAV in, WAV out")
    demo.add_argument("--workdir", default="out", help="where the question and reply WAVs go (default: out)")
    demo.add_argument("--question", default=None, help="English question to speak (default: a weather question)")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="measurements")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    vad = bench_sub.add_parser("vad", help="both VADs on speech, silence, noise and motor hum")
    vad.set_defaults(func=_cmd_bench_vad)
    aec = bench_sub.add_parser("aec", help="echo cancellation: echo removed, double talk, VAD false triggers")
    aec.add_argument("--seconds", type=float, default=60.0, help="seconds of robot speech fed back (default 60)")
    aec.set_defaults(func=_cmd_bench_aec)
    idle = bench_sub.add_parser("idle", help="cost while waiting for a wake word: start to ready, idle CPU, peak RSS")
    idle.add_argument("-n", type=int, default=5, help="daemon starts to time (default 5)")
    idle.add_argument("--window", type=float, default=20.0, metavar="SECONDS", help="idle window (default 20)")
    idle.add_argument("--pipeline-seconds", type=float, default=30.0, metavar="SECONDS", help="default 30")
    idle.add_argument("--input", metavar="SPEC", help="daemon microphone (default: a room-noise WAV)")
    idle.add_argument("--output", metavar="SPEC", help="daemon speaker (default: a WAV file)")
    idle.add_argument("--no-importtime", action="store_true", help="skip the start under -X importtime")
    idle.add_argument("--json", metavar="PATH", help="write the raw figures here")
    idle.set_defaults(func=_cmd_bench_idle)
    latency = bench_sub.add_parser(
        "latency",
        help="first-audio latency at the output, against the stand-ins, with injected service delays",
        add_help=False,  # its own --help lists its options
    )
    latency.add_argument("args", nargs=argparse.REMAINDER, help="options of the latency benchmark (see --help)")
    barge = bench_sub.add_parser("barge-in", help="reaction to a user cutting in, over n interruptions")
    barge.add_argument("-n", type=int, default=20, help="interruptions (default 20)")
    barge.add_argument("--mode", choices=("pause", "cancel"), default="pause")
    barge.add_argument("--tts-protocol", choices=("http", "websocket"), default="http")
    barge.add_argument("--json", metavar="PATH", help="also write the raw figures here")
    barge.set_defaults(func=_cmd_bench_barge_in)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _config_failed(args.config, exc)
    configure_logging(settings.log.level, settings.log.format)
    from daemon.app import App

    return _run_until_signal(lambda stop: App(settings, once=args.once).run(stop))


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        load_settings(args.path)
    except ConfigError as exc:
        return _config_failed(args.path, exc)
    print(f"{args.path}: OK")
    return 0


def _cmd_stubs(args: argparse.Namespace) -> int:
    configure_logging("info", "auto")
    from daemon.tools.stubs.runner import run_stubs

    return _run_until_signal(lambda stop: run_stubs(args, stop))


def _cmd_devices(args: argparse.Namespace) -> int:
    from hardware.pyaudio_devices import format_devices, list_devices

    try:
        print(format_devices(list_devices()))
    except HardwareError as exc:
        print(f"moss-voice devices: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from daemon.tools.demo import run_demo

    return _run_until_signal(lambda stop: run_demo(args.workdir, question=args.question, stop=stop))


def _cmd_bench_vad(args: argparse.Namespace) -> int:
    from daemon.tools.bench import vad as vad_eval

    return int(vad_eval.main([]) or 0)


def _cmd_bench_aec(args: argparse.Namespace) -> int:
    from daemon.tools.bench import aec as aec_eval

    return int(aec_eval.main(["--seconds", str(args.seconds)]) or 0)


def _cmd_bench_idle(args: argparse.Namespace) -> int:
    from daemon.tools.bench import idle as bench_idle

    argv = ["-n", str(args.n), "--window", str(args.window), "--pipeline-seconds", str(args.pipeline_seconds)]
    for flag, value in (("--input", args.input), ("--output", args.output), ("--json", args.json)):
        if value:
            argv += [flag, value]
    if args.no_importtime:
        argv.append("--no-importtime")
    return int(bench_idle.main(argv) or 0)


def _cmd_bench_barge_in(args: argparse.Namespace) -> int:
    from daemon.tools.bench import barge_in as bench_barge_in

    argv = ["-n", str(args.n), "--mode", args.mode, "--tts-protocol", args.tts_protocol]
    return int(bench_barge_in.main(argv + (["--json", args.json] if args.json else [])) or 0)


def _config_failed(path: str | None, exc: ConfigError) -> int:
    print(f"{path or 'config'}: {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _run_until_signal(start: Any) -> int:
    """asyncio.run with SIGTERM and SIGINT setting a stop event (systemd stops us with SIGTERM)."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        coro: Coroutine[Any, Any, int] = start(stop)
        try:
            return await coro
        except HardwareError as exc:
            log.error("hardware_error", error=str(exc))
            return 1

    return asyncio.run(runner())


if __name__ == "__main__":
    sys.exit(main())
