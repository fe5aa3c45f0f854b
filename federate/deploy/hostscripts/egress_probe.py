"""Federation targets seen from this host, for the hints of `federate destinations`: run with the
venv's Python (standard library only); prints one JSON document.

argv: one JSON list of [name, port, tls_name]: the places the controller's check found for a failing
destination. For each, what Synapse on this host would meet: the name resolved by this host's
resolver (/etc/hosts, resolv.conf), a TCP connection to each address (this host's outgoing firewall
and routes), and a TLS handshake verified with this host's trust store. Nothing else is sent."""

import json
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 5  # seconds per connection: a dropped packet costs this much, once per address
MAX_ADDRESSES = 4  # per name: enough to tell a blocked port from a bad address


def resolved(name: str, port: int) -> tuple[list[str], str | None]:
    """(addresses, error) from this host's resolver."""
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:  # UnicodeError: a name IDNA cannot encode
        return [], f"{type(error).__name__}: {error}"
    return list(dict.fromkeys(info[4][0] for info in infos))[:MAX_ADDRESSES], None


def reached(address: str, port: int, tls_name: str) -> dict:
    """{address, connect_error, tls_error}: each None when that step worked."""
    result = {"address": address, "connect_error": None, "tls_error": None}
    try:
        raw = socket.create_connection((address, port), timeout=TIMEOUT)
    except OSError as error:
        result["connect_error"] = f"{type(error).__name__}: {error}"
        return result
    try:
        context = ssl.create_default_context()  # this host's trust store, as Synapse uses it
        with context.wrap_socket(raw, server_hostname=tls_name):
            pass
    except (ssl.SSLError, ssl.CertificateError, OSError) as error:
        result["tls_error"] = f"{type(error).__name__}: {error}"
    finally:
        raw.close()
    return result


def probe(target: list) -> dict:
    name, port, tls_name = target
    addresses, error = resolved(name, port)
    with ThreadPoolExecutor(max_workers=MAX_ADDRESSES) as pool:
        found = list(pool.map(lambda address: reached(address, port, tls_name), addresses))
    return {"name": name, "port": port, "tls_name": tls_name, "resolve_error": error, "addresses": found}


def run(targets: list) -> list:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(probe, targets))


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
