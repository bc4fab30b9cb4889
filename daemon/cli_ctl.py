"""``moss-voice ctl wake|say TEXT|stop|status|listen|events``: the control API from a shell.

The address is ``--address``, else the config's ``control.listen``, else ``127.0.0.1:8765``; the
token (for a daemon that requires one) comes from MOSS_VOICE_CONTROL_TOKEN. Exit 0 on success, 1
when the daemon is not reachable or refused the call (the reason on stderr), 2 for a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any

from daemon.cli_config import config_failed
from daemon.config import CONTROL_TOKEN_ENV
from daemon.errors import ConfigError

if TYPE_CHECKING:
    import httpx

DEFAULT_ADDRESS = "127.0.0.1:8765"
TIMEOUT_S = 10.0
"""For every call but ``listen`` and ``events``, which wait as long as the daemon takes."""


class CtlError(Exception):
    """A call that did not work; the message is printed as is."""


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address", "-a", metavar="A", help=f"HOST:PORT or unix:/PATH (default: the config's, else {DEFAULT_ADDRESS})"
    )
    common.add_argument("--config", "-c", metavar="PATH", help="read control.listen from this config")
    ctl = subparsers.add_parser("ctl", help="control a running daemon through its control API")
    actions = ctl.add_subparsers(dest="ctl_command", required=True, metavar="ACTION")
    actions.add_parser("wake", parents=[common], help="start listening now (no wake word)")
    say = actions.add_parser("say", parents=[common], help="speak TEXT (after the current answer)")
    say.add_argument("text", metavar="TEXT")
    say.add_argument("--interrupt", action="store_true", help="cut into the current answer")
    actions.add_parser("stop", parents=[common], help="cancel everything and go idle")
    actions.add_parser("status", parents=[common], help="print the daemon's status as JSON")
    actions.add_parser("listen", parents=[common], help="listen now and print what was said (not answered)")
    actions.add_parser("events", parents=[common], help="print each event as a JSON line until Ctrl-C")
    for action in actions.choices.values():
        action.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        address = resolve_address(args.address, args.config)
    except ConfigError as exc:
        return config_failed(args.config, exc)
    return asyncio.run(
        ctl(args.ctl_command, address, text=getattr(args, "text", None), interrupt=getattr(args, "interrupt", False))
    )


def resolve_address(address: str | None, config: str | None) -> str:
    if address:
        return address
    if config:
        from daemon.config_load import load_settings

        listen = load_settings(config).control.listen
        if listen:
            return listen
    return DEFAULT_ADDRESS


async def ctl(
    command: str,
    address: str,
    *,
    text: str | None = None,
    interrupt: bool = False,
    token: str | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Run one ``ctl`` command against the daemon at ``address``; the exit code. ``token``
    defaults to MOSS_VOICE_CONTROL_TOKEN; ``out`` and ``err`` to stdout and stderr."""
    import httpx  # here, so that building the CLI's parser stays light

    out = out or sys.stdout
    err = err or sys.stderr
    token = token if token is not None else os.environ.get(CONTROL_TOKEN_ENV) or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    waits = command in ("listen", "events")
    timeout = httpx.Timeout(TIMEOUT_S, read=None if waits else TIMEOUT_S)
    if address.startswith("unix:"):
        client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=address[5:]),
            base_url="http://moss-voice",
            headers=headers,
            timeout=timeout,
        )
    else:
        client = httpx.AsyncClient(base_url=f"http://{address}", headers=headers, timeout=timeout)
    calls: dict[str, Callable[[], Awaitable[None]]] = {
        "wake": lambda: _call(client, "POST", "/wake"),
        "say": lambda: _call(client, "POST", "/say", json={"text": text, "interrupt": interrupt}),
        "stop": lambda: _call(client, "POST", "/stop"),
        "status": lambda: _print_json(client, out),
        "listen": lambda: _print_text(client, out),
        "events": lambda: _print_events(client, out),
    }
    try:
        async with client:
            await calls[command]()
    except httpx.TransportError as exc:
        print(
            f"moss-voice ctl: no daemon answers at {address} ({type(exc).__name__}: {exc or 'no detail'}); "
            "is `moss-voice run` running with [control] listen set to this address?",
            file=err,
        )
        return 1
    except CtlError as exc:
        print(f"moss-voice ctl {command}: {exc}", file=err)
        return 1
    return 0


async def _call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> None:
    response = await client.request(method, path, **kwargs)
    _check(response)


async def _print_json(client: httpx.AsyncClient, out: IO[str]) -> None:
    response = await client.get("/status")
    _check(response)
    print(json.dumps(response.json(), ensure_ascii=False, indent=2), file=out)


async def _print_text(client: httpx.AsyncClient, out: IO[str]) -> None:
    response = await client.get("/listen")
    _check(response)
    print(response.text, file=out)


async def _print_events(client: httpx.AsyncClient, out: IO[str]) -> None:
    from daemon.clients.sse import SseParser

    async with client.stream("GET", "/events") as response:
        if response.status_code != 200:
            await response.aread()
            _check(response)
        parser = SseParser()
        async for chunk in response.aiter_bytes():
            for data in parser.feed(chunk):
                print(data, file=out, flush=True)
    raise CtlError("the daemon closed the event stream")


def _check(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        reason = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        reason = response.text.strip() or response.reason_phrase
    if response.status_code == 401:
        reason += f" (set {CONTROL_TOKEN_ENV})"
    raise CtlError(f"{response.status_code}: {reason}")
