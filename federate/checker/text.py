"""The federation check's report as text for people (`federate check` without --json)."""

from __future__ import annotations

import datetime
import time

from federate.checker.hints import synapse_blocks
from federate.checker.http import split_host_port


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
