"""``moss-voice config check PATH``: validate a config file and name every wrong key or value."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.config_load import load_settings
from daemon.errors import ConfigError

EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    config = subparsers.add_parser("config", help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config and name every wrong key or value")
    check.add_argument("path", metavar="PATH")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        load_settings(args.path)
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
