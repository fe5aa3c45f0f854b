"""Looking at a homeserver from outside: DNS, TLS with SNI, HTTP, and signed server keys.

Names are resolved with dnspython against a chosen DNS server (the lab's, or the system's),
so checks see what a remote homeserver would see without touching the controller's resolver.
"""

from __future__ import annotations

import _ssl
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
    tls_version: str = ""
    cipher: str = ""
    certificate_chain: list[bytes] = field(default_factory=list)  # DER, leaf first

    def json(self):
        return json.loads(self.body)


def resolver(dns_server: str | None = None) -> dns.resolver.Resolver:
    """A resolver asking `dns_server` ("IP", "IP:PORT" or "[IPv6]:PORT"), or the system's."""
    if dns_server is None:
        return dns.resolver.Resolver()
    address, port = split_host_port(dns_server)
    custom = dns.resolver.Resolver(configure=False)
    custom.nameservers = [address]
    custom.port = port or 53
    custom.lifetime = 5.0
    return custom


def split_host_port(value: str) -> tuple[str, int | None]:
    """("host", port or None) from "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, None


def resolve_address(name: str, dns_server: str | None = None) -> str:
    """The first IPv4 address of `name` (an IP literal is returned as it is)."""
    try:
        socket.inet_aton(name)
        return name
    except OSError:
        pass
    return resolver(dns_server).resolve(name, "A")[0].to_text()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies as Synapse does (OpenSSL's chain and name checks). Python 3.13 (Debian 13) adds
    VERIFY_X509_STRICT to its defaults, which rejects certificates Synapse accepts (no Authority
    Key Identifier, for one): cleared, so a verdict does not depend on the controller's Python."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = True
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def unverified_tls_context() -> ssl.SSLContext:
    """For looking at a certificate that failed verification, to say what it is valid for."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the host name."""

    def __init__(self, host: str, port: int, address: str, **kwargs):
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _certificate_chain(sock: ssl.SSLSocket) -> list[bytes]:
    # Python 3.11 has only a private API for the whole chain (public from 3.13); the leaf is the fallback.
    chain = getattr(sock._sslobj, "get_unverified_chain", lambda: None)()
    if chain and hasattr(_ssl, "ENCODING_DER"):
        return [certificate.public_bytes(_ssl.ENCODING_DER) for certificate in chain]
    leaf = sock.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def https_request(address: str, port: int, path: str, *, tls_name: str, host_header: str,
                  ca_file: str | None = None, timeout: float = 10.0,
                  max_body: int = 1024 * 1024, verify: bool = True) -> Response:
    """GET `path` from address:port with SNI and certificate name `tls_name`; no redirects followed.

    The body is read up to `max_body` bytes; a caller that must refuse larger answers asks for one more.
    """
    context = tls_context(ca_file) if verify else unverified_tls_context()
    connection = _PinnedHTTPSConnection(tls_name, port, address, timeout=timeout, context=context)
    try:
        connection.request("GET", path, headers={"Host": host_header, "User-Agent": "federate-probe"})
        sock = connection.sock  # read now: http.client drops it once a closing response is read
        tls = (sock.getpeercert() or {}, sock.version() or "", (sock.cipher() or ("",))[0], _certificate_chain(sock))
        reply = connection.getresponse()
        body = reply.read(max_body)
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body, *tls)
    finally:
        connection.close()


def https_get(name: str, port: int, path: str, *, ca_file: str | None = None,
              dns_server: str | None = None, timeout: float = 10.0,
              address: str | None = None) -> Response:
    """GET https://name:port/path, connecting to `address` (default: `name` resolved)."""
    return https_request(address or resolve_address(name, dns_server), port, path, tls_name=name,
                         host_header=name if port == 443 else f"{name}:{port}",
                         ca_file=ca_file, timeout=timeout)


@dataclass
class KeyCheck:
    key_id: str
    valid: bool
    problem: str = ""


@dataclass
class Ed25519Check:
    valid_key: bool  # the key decodes to an ed25519 public key
    matching_signature: bool  # the document carries a valid signature by it for the server name
    problem: str = ""


def check_ed25519_key(document: dict, server_name: str, key_id: str, entry) -> Ed25519Check:
    try:
        verify_key = decode_verify_key_bytes(key_id, decode_base64(entry["key"]))
    except (KeyError, TypeError, ValueError) as error:
        return Ed25519Check(False, False, f"unreadable key: {error}")
    try:
        verify_signed_json(document, server_name, verify_key)
    except (SignatureVerifyException, KeyError, TypeError, ValueError) as error:
        return Ed25519Check(True, False, str(error))
    return Ed25519Check(True, True)


def ed25519_keys(document: dict) -> dict:
    keys = document.get("verify_keys")
    keys = keys if isinstance(keys, dict) else {}
    return {key_id: entry for key_id, entry in sorted(keys.items()) if key_id.startswith("ed25519:")}


def verify_server_keys(document: dict, server_name: str) -> list[KeyCheck]:
    """Check every ed25519 key in a /_matrix/key/v2/server answer against its self-signature."""
    checks = []
    for key_id, entry in ed25519_keys(document).items():
        check = check_ed25519_key(document, server_name, key_id, entry)
        checks.append(KeyCheck(key_id, check.valid_key and check.matching_signature, check.problem))
    return checks
