"""The ``moss-voice`` command: one parser, to which each command adds itself.

Each command's module declares its options and the function that runs it in ``register``; this
is the one place that lists the commands, and the one module outside ``daemon/tools`` that
imports from the tools (only their light ``register``; ``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon import __version__, cli_config, cli_ctl, cli_devices, cli_doctor, cli_run
from daemon.tools.cli import register_bench, register_demo, register_stubs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss-voice", description="The voice of a service robot.")
    parser.add_argument("--version", action="version", version=f"moss-voice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_run.register(sub)
    cli_config.register(sub)
    register_stubs(sub)
    cli_devices.register(sub)
    register_demo(sub)
    register_bench(sub)
    cli_ctl.register(sub)
    cli_doctor.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
