"""Serving a Starlette app from the caller's event loop, as the HTTP stand-ins do: a socket bound
before the server starts (so the port is known, and can be held without listening), and uvicorn
without its signal handlers (the process that hosts the stand-ins owns SIGINT and SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.requests import Request


class InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (port 0: a free one), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(
    config: uvicorn.Config, sock: socket.socket, *, name: str, timeout: float
) -> tuple[InLoopServer, asyncio.Task[None]]:
    """Start serving ``config``'s app on ``sock`` (uvicorn owns and closes it from now on) and
    return once it accepts connections. Raises the startup error, or RuntimeError after ``timeout``."""
    server = InLoopServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name=name)
    try:
        async with asyncio.timeout(timeout):
            while not server.started:
                if task.done():
                    task.result()  # raises the startup error
                    raise RuntimeError(f"{name}: uvicorn stopped during startup")
                await asyncio.sleep(0.002)
    except BaseException as exc:
        task.cancel()
        await asyncio.wait({task})
        if isinstance(exc, TimeoutError):
            raise RuntimeError(f"{name} did not start within {timeout:g} s") from None
        raise
    return server, task


async def wait_http_disconnect(request: Request) -> None:
    """Return when the HTTP client has gone away (its ``http.disconnect`` message)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
