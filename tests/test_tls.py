"""TLS towards the services: verification is on by default, a pinned CA file is trusted,
``tls_verify = false`` accepts anything, and an untrusted certificate is an error that names the
service and ``ca_file``.

The LLM and TTS servers are the stand-ins behind a TLS front on 127.0.0.1 that this file runs
(the FunASR stand-in serves TLS itself), with a throwaway self-signed certificate made by the
``openssl`` command for the test session.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from daemon.clients.asr import FunAsrClient
from daemon.clients.http_pool import make_http_client
from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.clients.tls import TlsContexts, make_tls_context, transport_risks
from daemon.clients.tts import make_tts
from daemon.config import API_KEY_ENV, AsrSettings, LlmSettings, Settings, TtsSettings
from daemon.config_load import settings_from_dict
from daemon.doctor.services import check_transport
from daemon.errors import AsrError, ConfigError, LlmError, ServiceError, TtsError
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from daemon.tools.stubs.paddlespeech import PaddleSpeechStub
from states.events import ChatMessage

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
TIMEOUT = 20


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _self_signed(directory: Path, name: str) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost (EC: quick to make)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=moss-voice test",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return Certificate(cert, key)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return _self_signed(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="session")
def other_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """Another self-signed certificate: pinning it must not trust the server's."""
    return _self_signed(tmp_path_factory.mktemp("tls-other"), "other")


@asynccontextmanager
async def tls_front(target: str, certificate: Certificate) -> AsyncIterator[str]:
    """Serve TLS on a free port of 127.0.0.1 and pass the bytes on to the plain ``target`` URL's
    server; yields ``target`` with the secure scheme and the front's port."""
    parts = urlsplit(target)
    assert parts.hostname is not None and parts.port is not None
    host, port = parts.hostname, parts.port
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certificate.cert, certificate.key)
    handlers: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    front_port = server.sockets[0].getsockname()[1]
    scheme = {"http": "https", "ws": "wss"}[parts.scheme]
    try:
        yield urlunsplit((scheme, f"127.0.0.1:{front_port}", parts.path, parts.query, ""))
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


# --- one real exchange with each service -------------------------------------------------------

Exchange = Callable[[str, bool, str | None], Awaitable[str]]
"""(secure url, tls_verify, ca_file) -> what the service answered."""


async def llm_exchange(url: str, verify: bool, ca_file: str | None) -> str:
    settings = LlmSettings(url=url, tls_verify=verify, ca_file=ca_file, connect_timeout_s=3)
    tls = make_tls_context(verify=settings.tls_verify, ca_file=settings.ca_file)
    async with make_http_client(tls) as http:
        llm = OpenAiCompatibleLlm(settings, http)
        text = []
        async with llm.stream_chat([ChatMessage("user", "hello")]) as stream:
            async for piece in stream:
                text.append(piece)
    return "".join(text)


async def asr_exchange(url: str, verify: bool, ca_file: str | None) -> str:
    """A session: a little silence, the end marker, the transcript (the stand-in's fixed one)."""
    client = FunAsrClient(AsrSettings(url=url, tls_verify=verify, ca_file=ca_file, final_timeout_s=1.0))
    session = await client.open_session()
    await session.send_audio(bytes(3200))
    return (await session.finish()).text


async def tts_exchange(url: str, verify: bool, ca_file: str | None) -> str:
    """The sample rate, then one sentence (over HTTP, or the websocket: the same context)."""
    settings = TtsSettings(url=url, tls_verify=verify, ca_file=ca_file, connect_timeout_s=3, read_timeout_s=5)
    tls = make_tls_context(verify=settings.tls_verify, ca_file=settings.ca_file)
    async with make_http_client(tls) as http:
        tts = make_tts(settings, http, tls=tls)
        rate = await tts.sample_rate()
        size = 0
        async with tts.synthesize("你好") as stream:
            async for chunk in stream:
                size += len(chunk)
    return f"{rate} Hz, {size} bytes"


@asynccontextmanager
async def service(name: str, certificate: Certificate) -> AsyncIterator[tuple[str, Exchange]]:
    """The stand-in of ``name`` behind the TLS front: its secure URL and the exchange to try."""
    if name == "asr":  # the FunASR stand-in serves TLS itself, as FunASR's own servers do
        behaviour = FunAsrBehaviour(transcript_override="你好。")
        async with FunAsrStub(behaviour=behaviour, certfile=certificate.cert, keyfile=certificate.key) as asr:
            yield asr.url, asr_exchange
        return
    if name == "llm":
        llm = OpenAiStub(behaviour=OpenAiBehaviour(default_answer="Hello there."))
        async with llm, tls_front(llm.url, certificate) as url:
            yield url, llm_exchange
        return
    tts = PaddleSpeechStub(protocol="websocket" if name == "tts-websocket" else "http")
    async with tts, tls_front(tts.url, certificate) as url:
        yield url, tts_exchange


SERVICES = ["asr", "llm", "tts-http", "tts-websocket"]


@pytest.mark.parametrize("name", SERVICES)
async def test_verification_is_on_by_default_and_refuses_a_self_signed_server(
    name: str, certificate: Certificate
) -> None:
    assert LlmSettings().tls_verify and TtsSettings().tls_verify
    async with service(name, certificate) as (url, exchange):
        with pytest.raises(ServiceError) as caught:
            await asyncio.wait_for(exchange(url, True, None), TIMEOUT)
    key = name.split("-")[0]
    message = str(caught.value)
    assert isinstance(caught.value, {"asr": AsrError, "llm": LlmError, "tts": TtsError}[key])
    assert caught.value.service == key
    assert f"TLS certificate of the {key.upper()} server" in message and "not trusted" in message
    assert f"{key}.ca_file" in message and "self-signed" in message
    assert url.split("/")[2] in message  # names the server


@pytest.mark.parametrize("name", SERVICES)
async def test_a_pinned_ca_file_is_trusted(name: str, certificate: Certificate) -> None:
    async with service(name, certificate) as (url, exchange):
        answer = await asyncio.wait_for(exchange(url, True, str(certificate.cert)), TIMEOUT)
    expected = {"asr": "你好。", "llm": "Hello there."}
    if name in expected:
        assert answer == expected[name]
    else:
        assert answer.endswith("bytes") and not answer.endswith(" 0 bytes")


@pytest.mark.parametrize("name", SERVICES)
async def test_pinning_another_certificate_trusts_only_that_one(
    name: str, certificate: Certificate, other_certificate: Certificate
) -> None:
    async with service(name, certificate) as (url, exchange):
        with pytest.raises(ServiceError, match="not trusted"):
            await asyncio.wait_for(exchange(url, True, str(other_certificate.cert)), TIMEOUT)


@pytest.mark.parametrize("name", SERVICES)
async def test_tls_verify_false_accepts_the_self_signed_server(name: str, certificate: Certificate) -> None:
    async with service(name, certificate) as (url, exchange):
        answer = await asyncio.wait_for(exchange(url, False, None), TIMEOUT)
    assert answer


async def test_the_readiness_check_fails_at_once_on_an_untrusted_certificate(certificate: Certificate) -> None:
    """Waiting does not change a certificate: no polling until the deadline."""
    async with OpenAiStub() as llm, tls_front(llm.url, certificate) as url, make_http_client() as http:
        client = OpenAiCompatibleLlm(LlmSettings(url=url), http)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LlmError, match=r"not trusted.*llm\.ca_file"):
            await client.wait_ready(max_wait_s=30)
        assert loop.time() - started < 15  # far below the 30 s it would poll for


def test_contexts_are_built_once_per_distinct_setting(certificate: Certificate) -> None:
    contexts = TlsContexts()
    default = contexts.get(verify=True, ca_file=None)
    assert contexts.get(verify=True, ca_file=None) is default
    pinned = contexts.get(verify=True, ca_file=str(certificate.cert))
    off = contexts.get(verify=False, ca_file=None)
    assert len({id(default), id(pinned), id(off)}) == 3
    assert default.verify_mode == pinned.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname


# --- config check ------------------------------------------------------------------------------


@pytest.mark.parametrize("service_key", ["asr", "llm", "tts"])
def test_config_check_loads_each_ca_file(service_key: str, certificate: Certificate, tmp_path: Path) -> None:
    assert settings_from_dict({service_key: {"ca_file": str(certificate.cert)}}, {})
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({service_key: {"ca_file": str(missing)}}, {})
    assert caught.value.problems == [f"{service_key}.ca_file: no such file {str(missing)!r}"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({service_key: {"ca_file": str(garbage)}}, {})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{service_key}.ca_file: cannot load {str(garbage)!r} as PEM certificates")


def test_config_check_takes_tls_verify_for_llm_and_tts() -> None:
    settings = settings_from_dict({"llm": {"tls_verify": False}, "tts": {"tls_verify": False}}, {})
    assert settings.llm.tls_verify is False and settings.tts.tls_verify is False
    with pytest.raises(ConfigError, match=r"llm\.tls_verify: must be true or false"):
        settings_from_dict({"llm": {"tls_verify": "no"}}, {})


# --- what is open to whoever is on the path ------------------------------------------------------


def test_transport_risks_name_an_unchecked_certificate_and_a_key_in_clear() -> None:
    assert transport_risks(Settings()) == []  # the defaults: loopback, no key
    settings = settings_from_dict(
        {
            "asr": {"url": "wss://gpu.lan:10095", "tls_verify": False},
            "llm": {"url": "http://gpu.lan:8000/v1"},
            "tts": {"url": "https://gpu.lan:8092/paddlespeech/tts/streaming"},
        },
        {API_KEY_ENV: "sk-test"},
    )
    risks = transport_risks(settings)
    assert [service for service, _ in risks] == ["asr", "llm"]
    assert "asr.tls_verify = false" in risks[0][1] and "asr.ca_file" in risks[0][1]
    assert risks[1][1] == "the API key goes to http://gpu.lan:8000/v1 in clear text; use https://"
    assert "sk-test" not in repr(risks)
    on_loopback = settings_from_dict({"llm": {"url": "http://127.0.0.1:8000/v1"}}, {API_KEY_ENV: "sk-test"})
    assert transport_risks(on_loopback) == []


async def test_the_doctor_warns_of_each_transport_risk() -> None:
    (ok,) = await check_transport(Settings())
    assert ok.result == "ok"
    settings = settings_from_dict({"tts": {"url": "wss://gpu.lan:8092/x", "tls_verify": False}}, {})
    (warned,) = await check_transport(settings)
    assert warned.result == "warn" and warned.detail.startswith("tts: the certificate of wss://gpu.lan:8092/x")
