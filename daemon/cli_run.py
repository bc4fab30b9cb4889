"""``moss-voice run``: load the config, configure logging, run the daemon until a signal; and the
signal-aware asyncio runner the long-running commands share."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from daemon.cli_config import config_failed
from daemon.config_load import load_settings, once_problems
from daemon.errors import ConfigError, ControlError, HardwareError
from daemon.logs import configure_logging
from daemon.secrets import secret_values

log = structlog.get_logger()

Start = Callable[[asyncio.Event], Coroutine[Any, Any, int]]
"""What a long-running command runs: given the stop event, a coroutine that returns the exit code."""


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", metavar="PATH", help="TOML config (default: built-in defaults)")
    run.add_argument(
        "--once",
        action="store_true",
        help="exit after one finished turn: 0 answered, 1 failed, 3 nobody spoke, 4 stopped by a signal",
    )
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        if args.once and (problems := once_problems(settings)):
            raise ConfigError(problems)
    except ConfigError as exc:
        return config_failed(args.config, exc)
    configure_logging(settings.log.level, settings.log.format, secrets=secret_values(settings))
    from daemon.app import App  # here, so that the other commands do not pay for its imports
    from daemon.systemd_notify import Notifier

    notifier = Notifier()  # $NOTIFY_SOCKET: started by systemd with Type=notify
    app = App(settings, once=args.once, freeze_gc=True, notifier=notifier, config_path=args.config)
    try:
        return run_until_signal(app.run, on_reload=app.reload)
    finally:
        notifier.close()


def run_until_signal(start: Start, *, on_reload: Callable[[], None] | None = None) -> int:
    """asyncio.run with SIGTERM and SIGINT setting a stop event (systemd stops us with SIGTERM),
    and SIGHUP calling ``on_reload`` (``systemctl reload``) when given."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, on_reload)
        try:
            return await start(stop)
        except HardwareError as exc:
            log.error("hardware_error", error=str(exc))
            return 1
        except ControlError as exc:  # the control API cannot listen: address in use, no directory
            log.error("control_error", error=str(exc))
            return 1

    return asyncio.run(runner())
