"""``moss-voice doctor``: check the config, the audio devices, the services, the user's groups
and permissions and the sound server; print what is fine and what to do about what is not."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from daemon.logs import configure_logging

EXIT_FAILED = 1


def register(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="check config, audio devices, services, groups, permissions and the sound server"
    )
    doctor.add_argument("--config", metavar="PATH", help="the config file the daemon uses (default: built-in defaults)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON (for scripts)")
    doctor.add_argument("--play", action="store_true", help="play a short tone through the configured speaker")
    doctor.add_argument("--user", metavar="NAME", help="check groups and permissions of this user (default: you)")
    doctor.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    # The clients' own log lines (warnings of a failed probe) would repeat the table: errors only, on stderr.
    configure_logging("error", "console", sys.stderr)
    return asyncio.run(run_doctor(args))


async def run_doctor(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run every check and print the table (or JSON) on ``out`` (stdout); 1 if anything FAILed."""
    from daemon.doctor import failed, to_json, to_table
    from daemon.doctor.run import DoctorOptions, doctor

    findings = await doctor(DoctorOptions(config=args.config, user=args.user, play=args.play))
    print(to_json(findings) if args.json else to_table(findings), file=out or sys.stdout)
    return EXIT_FAILED if failed(findings) else 0
