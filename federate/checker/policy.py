"""Each homeserver checked against what its settings promise (`federate verify INVENTORY`, and the
check at the end of every deploy).

Each homeserver is checked from the controller with `federate check`
(federate.checker.report.check_server) and its answer compared with its federation policy:

- `open` (no federation_whitelist): other servers must be able to federate with it;
- `closed` (an empty whitelist): it must NOT answer federation (no keys, no version);
- `whitelist` (a non-empty whitelist): it must be reachable for its partners; that Synapse then
  talks only to the listed servers is its federation_domain_whitelist, which no outside check sees.
  An internal homeserver's proxy admits only its partners' addresses: from anywhere else (the
  controller, as a rule) the check must find the lock, a valid certificate and a 403 on the key path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from federate.checker.hints import ERROR, WARNING, forbidden_addresses
from federate.checker.http import split_host_port
from federate.checker.report import check_server
from federate.settings import Homeserver, HostSettings

OPEN, CLOSED, WHITELIST = "open", "closed", "whitelist"

UNEXPECTEDLY_OPEN_FIX = (
    "An empty federation_whitelist means no federation: re-run the deploy (it gives the homeserver no "
    "federation listener and no port 8448), and look for hand edits of homeserver.yaml or the nginx "
    "site that expose /_matrix/key and /_matrix/federation.")


@dataclass
class Result:
    server_name: str
    host: str
    expected: str  # open, closed or whitelist
    ok: bool
    summary: str
    hints: list[dict] = field(default_factory=list)  # of the failing checks: {check, level, problem, fix}
    report: dict | None = None  # the full `federate check` report

    def line(self) -> str:
        return f"[{'PASS' if self.ok else 'FAIL'}] {self.server_name} on {self.host}, " \
               f"expected {self.expected}: {self.summary}"

    def text(self) -> str:
        lines = [self.line()]
        for entry in self.hints:
            lines.append(f"    - [{entry['level'].upper()}] {entry['check']}: {entry['problem']}")
            lines.append(f"      fix: {entry['fix']}")
        return "\n".join(lines)


def expectation(hs: Homeserver) -> str:
    if hs.federation_whitelist is None:
        return OPEN
    return WHITELIST if hs.federation_whitelist else CLOSED


def verify_settings(all_settings: dict[str, HostSettings], dns_server: str | None = None,
                    ca_file: str | None = None, timeout: float | None = None) -> list[Result]:
    """One Result per homeserver of the inventory; DNS server, CA file and timeout default to each
    host's `verify` settings."""
    return [result for settings in all_settings.values()
            for result in verify_host(settings, dns_server, ca_file, timeout)]


def verify_host(settings: HostSettings, dns_server: str | None = None, ca_file: str | None = None,
                timeout: float | None = None) -> list[Result]:
    options = {"dns_server": dns_server or settings.verify.dns_server,
               "ca_file": ca_file or settings.verify.ca_file,
               "timeout": timeout if timeout is not None else settings.verify.timeout}
    return [verify_homeserver(settings, hs, **options) for hs in settings.homeservers]


def verify_homeserver(settings: HostSettings, hs: Homeserver, **options) -> Result:
    expected = expectation(hs)
    try:
        report = check_server(hs.server_name, **options)
    except Exception as error:  # a check that cannot run is a failure, whatever was expected
        return Result(hs.server_name, settings.host, expected, False,
                      f"the check could not run: {type(error).__name__}: {error}")
    result = Result(hs.server_name, settings.host, expected, False, "", report=report)
    answered = where_answered(report)
    if expected == CLOSED:
        result.ok = not report["FederationOK"]
        if result.ok:
            result.summary = f"closed as expected: no federation answer ({why_not(report)})"
        else:
            result.summary = f"unexpectedly open: {answered} although its federation_whitelist is empty"
            result.hints = [{"check": "policy", "level": ERROR, "name": "unexpectedly-open",
                             "problem": f"{hs.server_name} answers federation: {answered}",
                             "fix": UNEXPECTEDLY_OPEN_FIX}]
        return result
    result.ok = report["FederationOK"]
    if not result.ok and hs.federation_sources is not None and locked_to_partners(report):
        result.ok = True
        result.summary = (f"admits only its partners' addresses: the proxy answers 403 here at "
                          f"{', '.join(forbidden_addresses(report))} (certificate valid); Synapse's policy allows "
                          f"only {', '.join(hs.federation_whitelist or ()) or 'nobody'}")
        return result
    if not result.ok:
        result.summary = f"federation FAILED: {why_not(report)}"
        result.hints = failing_hints(report, hs.ip_range_whitelist)
    elif expected == WHITELIST:
        result.summary = (f"reachable for its partners: {answered}; Synapse's policy allows only "
                          f"{', '.join(hs.federation_whitelist)} (its federation_domain_whitelist)")
    else:
        result.summary = f"federation OK: {answered}"
    if result.ok:  # federation works, e.g. through a fallback, but something is still wrong
        result.hints = [h for h in failing_hints(report, hs.ip_range_whitelist) if h["level"] == ERROR]
        if result.hints:
            result.summary += f"; but {result.hints[0]['check']}: {result.hints[0]['problem']}"
    return result


def locked_to_partners(report: dict) -> bool:
    """Every address was reached with a valid certificate and refused us with 403, and nothing else failed."""
    connections = report["ConnectionReports"]
    return bool(connections) and not report["ConnectionErrors"] and all(
        c["Checks"]["ValidCertificates"] and [e.get("Status") for e in c["Errors"]] == [403]
        for c in connections.values())


def where_answered(report: dict) -> str:
    """'Synapse 1.2.3 at 10.0.0.1:443' for the addresses whose keys and TLS passed."""
    good = [addr for addr, c in report["ConnectionReports"].items() if c["Checks"]["AllChecksOK"]]
    version = report["Version"]
    software = "no version" if "error" in version else f"{version['name']} {version['version']}"
    return f"{software} at {', '.join(good) or 'no address'}"


def why_not(report: dict) -> str:
    """The first reason federation fails: the most telling hint, else the resolution error."""
    errors = [h for h in report.get("Hints", []) if h["level"] == ERROR]
    if errors:
        return f"{errors[0]['check']}: {errors[0]['problem']}"
    if report["Error"]:
        return report["Error"]
    for addr, connection in report["ConnectionReports"].items():
        for error in connection["Errors"]:
            return f"{addr} {error['Message']}"
    return "no address passed the checks"


def failing_hints(report: dict, ip_range_whitelist=()) -> list[dict]:
    """Errors and warnings of a report; a private address is no warning when the homeserver's own
    ip_range_whitelist lists its range (a private federation, as in the lab)."""
    ranges = [ipaddress.ip_network(cidr, strict=False) for cidr in ip_range_whitelist]

    def whitelisted(entry: dict) -> bool:
        if entry["name"] != "private-address":
            return False
        address = ipaddress.ip_address(split_host_port(entry["problem"].split(" ", 1)[0])[0])
        return any(address.version == r.version and address in r for r in ranges)

    return [{key: entry[key] for key in ("check", "level", "name", "problem", "fix")}
            for entry in report.get("Hints", [])
            if entry["level"] in (ERROR, WARNING) and not whitelisted(entry)]


def format_results(results: list[Result]) -> str:
    hosts = {r.host for r in results}
    lines = [f"federate verify: {len(results)} homeservers on {len(hosts)} hosts"]
    lines += ["  " + r.text().replace("\n", "\n  ") for r in results]
    failed = [r for r in results if not r.ok]
    lines.append(f"{len(results) - len(failed)} as expected, {len(failed)} failed")
    return "\n".join(lines)
