"""The federation tester's report for one server name (`federate check SERVER_NAME`).

It resolves a server name the way a remote homeserver does (federate.checker.resolution), looks
at every address it finds (TLS, signed keys, version: federate.checker.connection), and reports
with the public federation tester's JSON field names, plus `Client` (what Matrix clients see)
and `Hints` (the likely fix for each problem: federate.checker.hints). federate.checker.text
writes it for people.
"""

from __future__ import annotations

import socket
import ssl

from federate.checker.client import check_client
from federate.checker.connection import check_connection
from federate.checker.hints import hints_for
from federate.checker.resolution import Lookup, resolve_server_name


def check_server(server_name: str, *, dns_server: str | None = None, ca_file: str | None = None,
                 timeout: float = 10.0) -> dict:
    lookup = Lookup(dns_server, ca_file, timeout)
    resolution = resolve_server_name(server_name, lookup)
    report = {"ServerName": server_name, "FederationOK": False, "Error": resolution.error,
              "WellKnownResult": resolution.well_known, "DNSResult": resolution.dns,
              "ConnectionReports": {}, "ConnectionErrors": {}, "Version": {}}
    for target in resolution.targets:
        try:
            connection = check_connection(target, server_name, ca_file, timeout)
            report["ConnectionReports"][target.key] = {"TLSName": target.tls_name, **connection}
        except OSError as error:
            report["ConnectionErrors"][target.key] = connection_error(error)
    report["Version"] = first_version(report["ConnectionReports"])
    report["FederationOK"] = not report["Error"] and any(
        connection["Checks"]["AllChecksOK"] for connection in report["ConnectionReports"].values())
    report["Client"] = check_client(server_name, lookup)
    report["Hints"] = hints_for(report)
    return report


def connection_error(error: OSError) -> dict:
    """The tester's {Message}, plus the kind of failure (a refusal or timeout points at a firewall)."""
    if isinstance(error, ConnectionRefusedError):
        kind = "refused"
    elif isinstance(error, (TimeoutError, socket.timeout)):
        kind = "timeout"
    elif isinstance(error, ssl.SSLError):
        kind = "tls"
    else:
        kind = "other"
    return {"Message": f"{type(error).__name__}: {error}", "Kind": kind}


def first_version(connection_reports: dict) -> dict:
    versions = [c["Version"] for c in connection_reports.values()]
    return next((v for v in versions if "error" not in v), versions[0] if versions else
                {"error": "no address could be reached"})
