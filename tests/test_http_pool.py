"""The shared HTTP pool: a request on a connection the server is closing is sent once more."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from daemon.clients.http_pool import KEEPALIVE_EXPIRY_S, make_http_client, send_retrying_stale

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class KeepAliveServer:
    """Answers the first ``answered`` requests of each connection, then closes it when the next
    request arrives, without a response: what uvicorn does to an idle connection it is closing
    just as the client reuses it."""

    def __init__(self, answered: int) -> None:
        self.answered = answered
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/tts"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
                await reader.readexactly(length)
                self.requests += 1
                if served >= self.answered:
                    return  # closed without a response
                served += 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def test_a_request_on_a_connection_the_server_closed_is_sent_once_more() -> None:
    async with KeepAliveServer(answered=1) as url, make_http_client() as http:
        for _ in range(2):  # the second goes out on the kept-alive connection, which the server drops
            response = await asyncio.wait_for(send_retrying_stale(http, http.build_request("POST", url, json={})), 10)
            assert response.status_code == 200 and await response.aread() == b"ok"
            await response.aclose()


async def test_the_retry_happens_once_and_on_a_new_connection() -> None:
    server = KeepAliveServer(answered=1)
    async with server as url, make_http_client() as http:
        for _ in range(2):
            response = await asyncio.wait_for(send_retrying_stale(http, http.build_request("POST", url, json={})), 10)
            await response.aread()  # read to the end, or the connection is not kept alive
            await response.aclose()
    assert (server.connections, server.requests) == (2, 3)


async def test_a_server_that_never_answers_fails_after_the_second_try() -> None:
    server = KeepAliveServer(answered=0)
    async with server as url, make_http_client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await asyncio.wait_for(send_retrying_stale(http, http.build_request("POST", url, json={})), 10)
    assert (server.connections, server.requests) == (2, 2)


def test_idle_connections_are_dropped_before_uvicorn_drops_them() -> None:
    assert KEEPALIVE_EXPIRY_S < 5.0  # uvicorn's default keep-alive timeout
