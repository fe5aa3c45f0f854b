"""Looking at a homeserver from outside: DNS, TLS with SNI, HTTP, and signed server keys.

Names are resolved with dnspython against a chosen DNS server (the lab's, or the system's),
so checks see what a remote homeserver would see without touching the controller's resolver.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field

import dns.resolver
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    peer_certificate: dict = field(default_factory=dict)

    def json(self):
        return json.loads(self.body)


def resolver(dns_server: str | None = None) -> dns.resolver.Resolver:
    if dns_server is None:
        return dns.resolver.Resolver()
    custom = dns.resolver.Resolver(configure=False)
    custom.nameservers = [dns_server]
    custom.lifetime = 5.0
    return custom


def resolve_address(name: str, dns_server: str | None = None) -> str:
    """The first IPv4 address of `name` (an IP literal is returned as it is)."""
    try:
        socket.inet_aton(name)
        return name
    except OSError:
        pass
    return resolver(dns_server).resolve(name, "A")[0].to_text()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = True
    return context


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the host name."""

    def __init__(self, host: str, port: int, address: str, **kwargs):
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def https_get(name: str, port: int, path: str, *, ca_file: str | None = None,
              dns_server: str | None = None, timeout: float = 10.0,
              address: str | None = None) -> Response:
    """GET https://name:port/path, connecting to `address` (default: `name` resolved)."""
    address = address or resolve_address(name, dns_server)
    connection = _PinnedHTTPSConnection(name, port, address, timeout=timeout,
                                        context=tls_context(ca_file))
    try:
        connection.request("GET", path, headers={"Host": name if port == 443 else f"{name}:{port}",
                                                  "User-Agent": "federate-probe"})
        reply = connection.getresponse()
        body = reply.read(1024 * 1024)
        certificate = connection.sock.getpeercert() or {}
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body, certificate)
    finally:
        connection.close()


@dataclass
class KeyCheck:
    key_id: str
    valid: bool
    problem: str = ""


def verify_server_keys(document: dict, server_name: str) -> list[KeyCheck]:
    """Check every ed25519 key in a /_matrix/key/v2/server answer against its self-signature."""
    checks = []
    for key_id, entry in sorted(document.get("verify_keys", {}).items()):
        if not key_id.startswith("ed25519:"):
            continue
        try:
            verify_key = decode_verify_key_bytes(key_id, decode_base64(entry["key"]))
            verify_signed_json(document, server_name, verify_key)
            checks.append(KeyCheck(key_id, True))
        except (SignatureVerifyException, KeyError, ValueError) as error:
            checks.append(KeyCheck(key_id, False, str(error)))
    return checks
