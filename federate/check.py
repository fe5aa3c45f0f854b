"""`federate check SERVER_NAME`: the federation tester, built in.

It resolves a server name the way a remote homeserver does (federate.checker.resolution), looks
at every address it finds (TLS, signed keys, version: federate.checker.connection), and reports
with the public federation tester's JSON field names, plus `Client` (what Matrix clients see)
and `Hints` (the likely fix for each problem: federate.checker.hints).
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import time

from federate.checker.client import check_client
from federate.checker.connection import check_connection
from federate.checker.hints import hints_for, synapse_blocks
from federate.checker.resolution import Lookup, resolve_server_name
from federate.probe import split_host_port


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


# --- human output ------------------------------------------------------------------------------

def format_report(report: dict) -> str:
    lines = [f"Federation check of {report['ServerName']}"]
    lines += [f"  [{status}] {text}" for status, text in report_lines(report)]
    verdict = "OK: other homeservers can federate with it" if report["FederationOK"] else "FAILED"
    lines.append(f"Federation: {verdict}")
    if report.get("Hints"):
        lines.append("Hints:")
        for entry in report["Hints"]:
            lines.append(f"  - [{entry['level'].upper()}] {entry['check']}: {entry['problem']}")
            lines.append(f"    fix: {entry['fix']}")
    return "\n".join(lines)


def report_lines(report: dict) -> list[tuple[str, str]]:
    lines = well_known_lines(report["WellKnownResult"]) + dns_lines(report)
    for addr, error in report["ConnectionErrors"].items():
        lines.append(("FAIL", f"{addr} connect: {error['Message']}"))
    for addr, connection in report["ConnectionReports"].items():
        lines += connection_lines(addr, connection, report["ServerName"])
    if report.get("Client"):
        lines += client_lines(report["Client"])
    return lines


def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def well_known_lines(well_known: dict) -> list[tuple[str, str]]:
    lines = [("WARN" if r["Status"] == 308 else "INFO", f"well-known: HTTP {r['Status']} {r['From']} -> {r['To']}")
             for r in well_known.get("Redirects", [])]
    if well_known["m.server"]:
        hours = max(0, well_known["CacheExpiresAt"] - int(time.time())) / 3600
        lines.append(("PASS", f"well-known: delegates to {well_known['m.server']} (cached {hours:.0f}h)"))
    elif well_known.get("Problem") == "invalid":
        lines.append(("FAIL", f"well-known: {well_known['result']}"))
    else:
        lines.append(("INFO", f"well-known: {well_known['result']}"))
    return lines


def dns_lines(report: dict) -> list[tuple[str, str]]:
    dns_result, lines = report["DNSResult"], []
    if not dns_result["SRVSkipped"]:
        for record in dns_result["SRVRecords"]:
            lines.append(("PASS", f"DNS: SRV {record['Service']} -> {record['Target']}:{record['Port']}"))
        if dns_result["SRVError"]:
            lines.append(("INFO", f"DNS: {dns_result['SRVError']['Message']}"))
    for host, entry in dns_result["Hosts"].items():
        alias = f" (CNAME {entry['CName']})" if entry["CName"] else ""
        if entry["Error"]:
            lines.append(("FAIL", f"DNS: {host}{alias}: {entry['Error']['Message']}"))
        else:
            lines.append(("PASS", f"DNS: {host}{alias} -> {', '.join(entry['Addrs'])}"))
    for addr in dns_result["Addrs"]:
        if synapse_blocks(split_host_port(addr)[0]):
            lines.append(("WARN", f"{addr} is a private address: Synapse refuses those by default"))
    if report["Error"]:
        lines.append(("FAIL", f"resolution: {report['Error']}"))
    return lines


def connection_lines(addr: str, connection: dict, server_name: str) -> list[tuple[str, str]]:
    checks, keys = connection["Checks"], connection["Keys"] or {}
    leaf = connection["Certificates"][0] if connection["Certificates"] else {}
    certificate = f"certificate for {', '.join(leaf.get('DNSNames', [])) or 'no names'}"
    lines = [(_status(checks["ValidCertificates"]),
              f"{addr} TLS ({connection['Cipher']['Version']}): {certificate}, must cover {connection['TLSName']}")]
    lines += [("FAIL", f"{addr} {error['Message']}") for error in connection["Errors"]
              if "certificate" not in error["Message"]]
    if connection["Keys"] is not None:
        lines += [
            (_status(checks["MatchingServerName"]), f"{addr} keys: server_name {keys.get('server_name')!r} "
                                                    f"(asked {server_name!r})"),
            (_status(checks["FutureValidUntilTS"]), f"{addr} keys: valid until {_utc(keys.get('valid_until_ts'))}"),
            (_status(checks["HasEd25519Key"]), f"{addr} keys: {len(checks['Ed25519Checks'])} ed25519 key(s)"),
        ]
        lines += [(_status(all(result.values())), f"{addr} keys: {key_id} "
                   f"{'signature valid' if all(result.values()) else 'signature INVALID'}")
                  for key_id, result in checks["Ed25519Checks"].items()]
    version = connection["Version"]
    lines.append(("FAIL", f"{addr} version: {version['error']}") if "error" in version else
                 ("PASS", f"{addr} version: {version['name']} {version['version']}"))
    return lines


def _utc(milliseconds) -> str:
    if not isinstance(milliseconds, int):
        return repr(milliseconds)
    return datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def client_lines(client: dict) -> list[tuple[str, str]]:
    well_known, versions = client["WellKnown"], client["Versions"]
    if "error" in well_known:
        return [("WARN", f"client well-known: {well_known['error']}")]
    lines = [("PASS", f"client well-known: base_url {well_known['base_url']} (200, JSON, CORS)")]
    if "error" in versions:
        lines.append(("WARN", f"client versions: {versions['error']}"))
    else:
        lines.append(("PASS", f"client versions: {', '.join(versions['versions'])}"))
    return lines


# --- command line ------------------------------------------------------------------------------

def add_check_parser(subparsers):
    parser = subparsers.add_parser(
        "check", help="test a homeserver's federation like a remote server would (the federation tester)")
    parser.add_argument("server_name", metavar="SERVER_NAME", help="the server name (the part after ':' in user IDs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (federation tester fields)")
    parser.add_argument("--dns-server", metavar="IP", help="ask this DNS server (IP or IP:PORT) instead of the system's")
    parser.add_argument("--ca-file", metavar="PEM", help="trust these CA certificates instead of the system's")
    parser.add_argument("--timeout", metavar="S", type=float, default=10.0, help="seconds per connection")
    parser.set_defaults(handler=check_command)
    return parser


def check_command(args) -> int:
    report = check_server(args.server_name, dns_server=args.dns_server, ca_file=args.ca_file,
                          timeout=args.timeout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["FederationOK"] else 1
