"""TLS towards the services: one SSL context per service, built once, and a clear error when a
server's certificate is not trusted.

Each service has ``tls_verify`` (default true) and ``ca_file``. With ``ca_file`` only that CA (or
that self-signed certificate) is trusted: pinning, the way to talk to a server with its own
certificate without turning verification off. Without it the usual store is used (certifi's, or
``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, as httpx does). Building a context costs ~25 ms, so
:class:`TlsContexts` builds each distinct one once and services with the same settings share it.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from daemon.config import Settings

__all__ = [
    "SERVICE_NAMES",
    "TlsContexts",
    "load_ca_file",
    "make_tls_context",
    "transport_risks",
    "untrusted_certificate_message",
]

SERVICE_NAMES = {"asr": "ASR", "llm": "LLM", "tts": "TTS"}


def load_ca_file(ca_file: str) -> ssl.SSLContext:
    """A verifying context that trusts only ``ca_file`` (PEM). Raises OSError or ssl.SSLError."""
    return ssl.create_default_context(cafile=ca_file)


def make_tls_context(*, verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The context a service's settings ask for. Raises OSError or ssl.SSLError when ``ca_file``
    cannot be loaded (``config check`` reports that before the daemon starts)."""
    import httpx  # here: ``config check`` loads CA files without importing httpx

    context = httpx.create_ssl_context() if ca_file is None else load_ca_file(ca_file)
    if not verify:
        context.check_hostname = False  # must be cleared before verify_mode
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class TlsContexts:
    """Contexts by (verify, ca_file): ``get`` builds each distinct one once."""

    _built: dict[tuple[bool, str | None], ssl.SSLContext] = field(default_factory=dict)

    def get(self, *, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        key = (verify, ca_file)
        if key not in self._built:
            self._built[key] = make_tls_context(verify=verify, ca_file=ca_file)
        return self._built[key]


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (httpx and websockets wrap it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def untrusted_certificate_message(service: str, url: str, exc: BaseException) -> str | None:
    """When ``exc`` comes from a server certificate that did not verify: the error text, naming
    the service and what to do about it. None for any other failure."""
    found = _certificate_error(exc)
    if found is None:
        return None
    reason = found.verify_message or found.reason or str(found)
    return (
        f"the TLS certificate of the {SERVICE_NAMES.get(service, service)} server {url} is not trusted ({reason}); "
        f"pin its CA or its own certificate with {service}.ca_file"
        f" (or, on a network you trust, set {service}.tls_verify = false)"
    )


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def transport_risks(settings: Settings) -> list[tuple[str, str]]:
    """(service, what is wrong) for each service whose traffic is open to whoever is on the path:
    a TLS certificate left unchecked, or the API key sent in clear text beyond this machine.
    Plain ws:// and http:// without a secret are a choice (a trusted LAN), not listed."""
    risks: list[tuple[str, str]] = []
    for service, s in (("asr", settings.asr), ("llm", settings.llm), ("tts", settings.tts)):
        for url in s.urls:
            if urlsplit(url).scheme in ("https", "wss") and not s.tls_verify:
                risks.append(
                    (
                        service,
                        f"the certificate of {url} is not checked ({service}.tls_verify = false): whoever is on"
                        f" the path can pose as the server; pin it with {service}.ca_file instead",
                    )
                )
    llm = settings.llm
    for url in llm.urls:
        if llm.api_key and urlsplit(url).scheme == "http" and not _is_loopback(urlsplit(url).hostname):
            risks.append(("llm", f"the API key goes to {url} in clear text; use https://"))
    return risks
