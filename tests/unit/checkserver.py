"""Local stand-ins for the outside world of `federate check`, on loopback only.

- DNSServer: a tiny UDP DNS server answering from a dict (A, AAAA, SRV, CNAME).
- TestCA: a certificate authority made with `cryptography`, issuing leaf certificates per name.
- HTTPSServer: a threaded HTTPS server on one loopback address and port, serving fixed routes.
- key_document / Homeserver routes: a real signed /_matrix/key/v2/server answer (signedjson).
- World: all of the above on a random 127.X.Y.0/24, torn down (threads, sockets) on exit.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json


# --- DNS ---------------------------------------------------------------------------------------

class DNSServer:
    """Answers from `records`: {name: [(type, text), ...]}; a CNAME is followed like a recursive resolver."""

    def __init__(self, records: dict[str, list[tuple[str, str]]], address: str = "127.0.0.1"):
        self.records = records  # read at each query, so records added after the start count too
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.2)
        self.address = f"{address}:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            self.sock.sendto(self.answer(dns.message.from_wire(data)).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        records = {name.rstrip(".").lower(): entries for name, entries in self.records.items()}
        name = question.name.to_text(omit_final_dot=True).lower()
        wanted = dns.rdatatype.to_text(question.rdtype)
        if name not in records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        for _ in range(8):  # follow CNAME chains, a few steps at most
            entries = records.get(name, [])
            alias = [text for kind, text in entries if kind == "CNAME"]
            if alias and wanted != "CNAME":
                response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "CNAME", alias[0]))
                name = alias[0].rstrip(".").lower()
                continue
            matches = [text for kind, text in entries if kind == wanted]
            if matches:
                response.answer.append(dns.rrset.from_text_list(name + ".", 60, "IN", wanted, matches))
            break
        return response


# --- certificates ------------------------------------------------------------------------------

class TestCA:
    """A CA writing its certificate and leaf certificates as PEM files under `directory`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "federate test CA"):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.ca_file = directory / f"{name.replace(' ', '-')}.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str) -> tuple[Path, Path]:
        """(certificate file, key file) valid for the DNS names and IP addresses given."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .sign(self.key, hashes.SHA256()))
        stem = self.directory / f"{names[0]}-{x509.random_serial_number() % 10**8}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM)
                              + self.certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


# --- HTTPS -------------------------------------------------------------------------------------

@dataclass
class Route:
    status: int = 200
    body: bytes | str | dict = b""
    headers: dict = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, dict):
            return json.dumps(self.body).encode()
        return self.body.encode() if isinstance(self.body, str) else self.body


def json_route(document, **headers) -> Route:
    return Route(200, document, {"Content-Type": "application/json", **headers})


def redirect(status: int, location: str) -> Route:
    return Route(status, b"", {"Location": location})


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        route = self.server.routes.get(self.path, Route(404, b'{"errcode": "M_UNRECOGNIZED"}'))
        body = route.encoded()
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HTTPSServer(http.server.ThreadingHTTPServer):
    """HTTPS on address:port with one certificate, answering GETs from `routes` (path -> Route)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, cert: tuple[Path, Path] | None, routes: dict[str, Route]):
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        super().__init__((address, port), _Handler)
        self.routes, self.requests = routes, []
        self.context = None  # plain HTTP: the mistake of a proxy without TLS on the federation port
        if cert:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(*cert)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def get_request(self):
        # The TLS handshake happens in the handler thread, so one bad client cannot stall the server.
        sock, peer = self.socket.accept()
        if not self.context:
            return sock, peer
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), peer

    def handle_error(self, request, client_address):
        pass  # failed handshakes are what some tests are about

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
        self._thread.join(5)


# --- homeserver answers ------------------------------------------------------------------------

class SigningKey:
    def __init__(self, version: str = "a_test"):
        self.key = generate_signing_key(version)
        self.key_id = f"ed25519:{version}"

    def key_document(self, server_name: str, valid_for_ms: int = 3_600_000, sign_as: str | None = None) -> dict:
        document = {"server_name": server_name, "old_verify_keys": {},
                    "valid_until_ts": int(time.time() * 1000) + valid_for_ms,
                    "verify_keys": {self.key_id: {"key": encode_verify_key_base64(get_verify_key(self.key))}}}
        return sign_json(document, sign_as or server_name, self.key)


def homeserver_routes(server_name: str, key: SigningKey | None = None, **key_options) -> dict[str, Route]:
    key = key or SigningKey()
    return {"/_matrix/key/v2/server": json_route(key.key_document(server_name, **key_options)),
            "/_matrix/federation/v1/version": json_route({"server": {"name": "Synapse", "version": "1.163.2"}})}


def server_well_known(delegated: str, **headers) -> dict[str, Route]:
    return {"/.well-known/matrix/server": json_route({"m.server": delegated}, **headers)}


# --- a little world on loopback ----------------------------------------------------------------

class World(contextlib.ExitStack):
    """A random 127.X.Y.0/24 with a DNS server, a CA and HTTPS servers; all stopped on exit."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory
        self.prefix = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}"
        self.ca = TestCA(directory)
        self.records: dict[str, list[tuple[str, str]]] = {}
        self.dns: DNSServer | None = None
        self._next_host = 2

    def address(self) -> str:
        """A fresh loopback address, so each fake server can have 443 or 8448 to itself."""
        self._next_host += 1
        return f"{self.prefix}.{self._next_host}"

    def add_record(self, name: str, kind: str, text: str):
        self.records.setdefault(name, []).append((kind, text))

    def host(self, name: str) -> str:
        """A new address with an A record for `name`."""
        address = self.address()
        self.add_record(name, "A", address)
        return address

    def serve(self, address: str, port: int, routes: dict[str, Route], cert_names=None, ca: TestCA | None = None,
              tls: bool = True):
        cert = (ca or self.ca).issue(*(cert_names or [address])) if tls else None
        return self.enter_context(HTTPSServer(address, port, cert, routes))

    def silent_listener(self, address: str, port: int) -> socket.socket:
        """Accepts TCP connections (in the kernel's backlog) and never answers: a timeout."""
        listener = self.enter_context(socket.socket())
        listener.bind((address, port))
        listener.listen(8)
        return listener

    def __enter__(self):
        super().__enter__()
        self.dns = self.enter_context(DNSServer(self.records))  # it reads self.records at each query
        return self

    def free_port(self, address: str) -> int:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.bind((address, 0))
            return probe.getsockname()[1]
