"""``moss-voice config check PATH``: validate a config file and name every wrong key or value."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.config_load import load_settings, once_problems
from daemon.errors import ConfigError

EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    config = subparsers.add_parser("config", help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config and name every wrong key or value")
    check.add_argument("path", metavar="PATH")
    check.add_argument("--once", action="store_true", help="also check it can run with `run --once`")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.path)
        if args.once and (problems := once_problems(settings)):
            raise ConfigError(problems)
    except ConfigError as exc:
        return config_failed(args.path, exc)
    print(f"{args.path}: OK")
    return 0


def config_failed(path: str | None, exc: ConfigError) -> int:
    """Print each problem of a config on stderr; return the exit code of a bad config."""
    print(f"{path or 'config'}: {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_CONFIG
