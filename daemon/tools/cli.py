"""The tools' commands, as the CLI registers them: ``stubs``, ``demo`` and ``bench ...``.

Light on purpose: ``moss-voice config check`` builds the whole parser, so this module and
``bench/cli.py`` import only argparse and constants; each command imports the tool it runs (the
stand-ins' servers, the App, numpy) inside the function that runs it.
"""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli_run import run_until_signal
from daemon.config import ASR_FLAVOURS
from daemon.logs import configure_logging
from daemon.tools.bench.cli import register as register_bench

__all__ = ["register_bench", "register_demo", "register_stubs"]


def register_stubs(subparsers: Any) -> None:
    stubs = subparsers.add_parser("stubs", help="run the loopback stand-ins for FunASR, vLLM and PaddleSpeech")
    stubs.add_argument("--host", default="127.0.0.1")
    stubs.add_argument("--asr-port", type=int, default=10095)
    stubs.add_argument("--llm-port", type=int, default=8000)
    stubs.add_argument("--tts-port", type=int, default=8092)
    stubs.add_argument("--asr-flavour", default="cpp-2pass", choices=ASR_FLAVOURS)
    stubs.add_argument("--tts-protocol", default="http", choices=("http", "websocket"))
    stubs.add_argument(
        "--control-port",
        type=int,
        default=8099,
        help="POST /_stub/misbehave here makes a stand-in misbehave at run time (default 8099; -1: off)",
    )
    stubs.set_defaults(func=_stubs)


def register_demo(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="one full voice turn against the stand-ins, WAV in, WAV out")
    demo.add_argument("--workdir", default="out", help="where the question and reply WAVs go (default: out)")
    demo.add_argument("--question", default=None, help="English question to speak (default: a weather question)")
    demo.set_defaults(func=_demo)


def _stubs(args: argparse.Namespace) -> int:
    configure_logging("info", "auto")
    from daemon.tools.stubs.runner import run_stubs

    return run_until_signal(lambda stop: run_stubs(args, stop))


def _demo(args: argparse.Namespace) -> int:
    from daemon.tools.demo import run_demo

    return run_until_signal(lambda stop: run_demo(args.workdir, question=args.question, stop=stop))
