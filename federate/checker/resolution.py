"""Server-name resolution as the Matrix server-server spec says ("Resolving server names").

The result is what a remote homeserver would connect to: addresses, ports, the name its TLS
certificate must be valid for, and the Host header. The spec's steps, in order:
1. IP literal (with or without port); 2. hostname with explicit port; 3. /.well-known/matrix/server
delegation (then the delegated name goes through IP literal / port / SRV / 8448); 4. SRV
`_matrix-fed._tcp` then legacy `_matrix._tcp`; 5. hostname:8448.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import dns.exception
import dns.resolver

from federate.checker.http import https_request, resolver, split_host_port

DEFAULT_PORT = 8448
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_MAX_BYTES = 50 * 1024
MAX_REDIRECTS = 10
CACHE_DEFAULT_SECONDS = 24 * 3600
CACHE_MAX_SECONDS = 48 * 3600
REDIRECT_STATUSES = (301, 302, 307, 308)
_HOSTNAME = re.compile(r"^[A-Za-z0-9.-]{1,255}$")


@dataclass
class Target:
    """One place to connect to, and what to expect there."""
    address: str
    port: int
    tls_name: str  # SNI and the name the certificate must be valid for
    host_header: str

    @property
    def key(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass
class Resolution:
    well_known: dict
    dns: dict
    targets: list[Target] = field(default_factory=list)
    error: str = ""


@dataclass
class Lookup:
    """What resolution needs from the outside world: DNS and HTTPS (for the well-known)."""
    dns_server: str | None = None
    ca_file: str | None = None
    timeout: float = 10.0

    @functools.cached_property
    def resolver(self) -> dns.resolver.Resolver:
        return resolver(self.dns_server)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_server_name(value: str) -> tuple[str, int | None]:
    """(host, port) of a server name; ValueError when it is not one."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"not a server name: {value!r}")
    host, port = split_host_port(value)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port out of range in {value!r}")
    if value.startswith("[") != (":" in host) or (value.startswith("[") and not is_ip_literal(host)):
        raise ValueError(f"an IPv6 literal must be in brackets: {value!r}")
    if not is_ip_literal(host) and not _HOSTNAME.match(host):
        raise ValueError(f"not a valid host name: {host!r}")
    return host, port


def _empty_well_known() -> dict:
    return {"m.server": "", "result": "", "CacheExpiresAt": 0, "Problem": "", "Redirects": []}


def _empty_dns() -> dict:
    return {"SRVSkipped": True, "SRVRecords": [], "SRVError": None, "Hosts": {}, "Addrs": []}


def resolve_server_name(server_name: str, lookup: Lookup) -> Resolution:
    resolution = Resolution(_empty_well_known(), _empty_dns())
    try:
        host, port = parse_server_name(server_name)
    except ValueError as error:
        resolution.error = str(error)
        return resolution
    if is_ip_literal(host) or port is not None:
        resolution.well_known.update(result="skipped: the server name is an IP literal or has a port",
                                     Problem="skipped")
        _resolve_host_and_port(resolution, host, port, server_name, lookup)
        return resolution
    delegated = fetch_well_known(host, lookup, resolution.well_known)
    if delegated:
        delegated_host, delegated_port = parse_server_name(delegated)
        if is_ip_literal(delegated_host) or delegated_port is not None:
            _resolve_host_and_port(resolution, delegated_host, delegated_port, delegated, lookup)
        else:
            _resolve_by_srv(resolution, delegated_host, lookup)
    else:
        _resolve_by_srv(resolution, host, lookup)
    return resolution


def _resolve_host_and_port(resolution: Resolution, host: str, port: int | None, host_header: str,
                           lookup: Lookup):
    """Spec steps 1 and 2 (and 3.1, 3.2): no SRV, the certificate is for the host (or IP)."""
    port = port or DEFAULT_PORT
    addresses = [host] if is_ip_literal(host) else host_addresses(host, resolution.dns, lookup)
    _add_targets(resolution, addresses, port, host, host_header)


def _resolve_by_srv(resolution: Resolution, host: str, lookup: Lookup):
    """Spec steps 3.3-3.5 and 4-6: SRV targets, else host:8448; the certificate is for `host`."""
    resolution.dns["SRVSkipped"] = False
    records = srv_records(host, resolution.dns, lookup)
    if records is None:
        _add_targets(resolution, host_addresses(host, resolution.dns, lookup), DEFAULT_PORT, host, host)
        return
    for record in records:
        addresses = host_addresses(record["Target"], resolution.dns, lookup, refuse_cname=True)
        _add_targets(resolution, addresses, record["Port"], host, host)
    if not resolution.targets:
        resolution.error = f"no usable address behind the SRV records of {host}"


def _add_targets(resolution: Resolution, addresses: list[str], port: int, tls_name: str, host_header: str):
    for address in addresses:
        target = Target(address, port, tls_name, host_header)
        if target.key not in resolution.dns["Addrs"]:
            resolution.dns["Addrs"].append(target.key)
            resolution.targets.append(target)
    if not resolution.targets and not resolution.error:
        resolution.error = f"no address found for {tls_name}"


# --- DNS ---------------------------------------------------------------------------------------

def srv_records(host: str, dns_result: dict, lookup: Lookup) -> list[dict] | None:
    """SRV records of _matrix-fed._tcp.host, else of the legacy _matrix._tcp.host; None when neither."""
    errors = []
    for service in ("_matrix-fed._tcp", "_matrix._tcp"):
        try:
            answer = lookup.resolver.resolve(f"{service}.{host}", "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            errors.append(f"no SRV record {service}.{host}")
            continue
        except dns.exception.DNSException as error:
            errors.append(f"SRV lookup of {service}.{host} failed: {error}")
            continue
        records = [{"Target": r.target.to_text(omit_final_dot=True), "Port": r.port,
                    "Priority": r.priority, "Weight": r.weight, "Service": service}
                   for r in sorted(answer, key=lambda r: (r.priority, -r.weight))]
        # A target of "." means the service is decidedly not available at this domain (RFC 2782).
        dns_result["SRVRecords"] = [r for r in records if r["Target"] not in ("", ".")]
        if not dns_result["SRVRecords"]:
            dns_result["SRVError"] = {"Message": f"{service}.{host} says the service is not available (target '.')"}
        return dns_result["SRVRecords"]
    dns_result["SRVError"] = {"Message": "; ".join(errors)}
    return None


def host_addresses(host: str, dns_result: dict, lookup: Lookup, refuse_cname: bool = False) -> list[str]:
    """A and AAAA addresses of `host`, recorded in dns_result["Hosts"]; an SRV target may not be a CNAME."""
    entry = dns_result["Hosts"].setdefault(host, {"CName": "", "Addrs": [], "Error": None})
    problems = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = lookup.resolver.resolve(host, rdtype, raise_on_no_answer=False)
        except dns.exception.DNSException as error:
            problems.append(f"{rdtype} lookup of {host} failed: {error}")
            continue
        canonical = answer.canonical_name.to_text(omit_final_dot=True)
        if canonical.lower() != host.lower():
            entry["CName"] = canonical
        entry["Addrs"] += [r.to_text() for r in answer] if answer.rrset else []
    if refuse_cname and entry["CName"]:
        entry["Error"] = {"Message": f"SRV target {host} is a CNAME (to {entry['CName']}): "
                                     "SRV targets must be names with A/AAAA records"}
        return []
    if not entry["Addrs"]:
        entry["Error"] = {"Message": "; ".join(problems) or f"{host} has no A or AAAA record"}
    return entry["Addrs"]


# --- .well-known/matrix/server -------------------------------------------------------------------

def fetch_well_known(host: str, lookup: Lookup, report: dict) -> str:
    """The delegated server name from https://host/.well-known/matrix/server, or "" (reason in report)."""
    try:
        reply = _get_following_redirects(f"https://{host}{WELL_KNOWN_PATH}", lookup, report["Redirects"])
        delegated = parse_well_known(reply.status, reply.body)
    except WellKnownError as error:
        report["result"], report["Problem"] = str(error), error.kind
        return ""
    except (OSError, ValueError, dns.exception.DNSException) as error:
        report["result"], report["Problem"] = f"{type(error).__name__}: {error}", "missing"
        return ""
    report["m.server"] = delegated
    report["CacheExpiresAt"] = int(time.time()) + cache_lifetime(reply.headers)
    return delegated


class WellKnownError(ValueError):
    """Why a well-known answer gives no delegation (resolution then goes on without it).

    `missing` (no file: a normal set-up without delegation) or `invalid` (a file others ignore)."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


def _get_following_redirects(url: str, lookup: Lookup, redirects: list):
    seen = {url}
    for _ in range(MAX_REDIRECTS + 1):
        reply = https_get_url(url, lookup, max_body=WELL_KNOWN_MAX_BYTES + 1)
        if reply.status not in REDIRECT_STATUSES:
            return reply
        location = reply.headers.get("location")
        if not location:
            raise WellKnownError(f"HTTP {reply.status} redirect without a Location header")
        next_url = urljoin(url, location)
        redirects.append({"Status": reply.status, "From": url, "To": next_url})
        if urlsplit(next_url).scheme != "https":
            raise WellKnownError(f"redirect to a non-https URL: {next_url}")
        if next_url in seen:
            raise WellKnownError(f"redirect loop: {next_url} was already visited")
        seen.add(next_url)
        url = next_url
    raise WellKnownError(f"more than {MAX_REDIRECTS} redirects")


def https_get_url(url: str, lookup: Lookup, max_body: int = 1024 * 1024):
    """GET an https URL, its host resolved with the lookup's DNS; redirects are returned, not followed."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"not an https URL: {url}")
    host = parts.hostname
    addresses = [host] if is_ip_literal(host) else host_addresses(host, _empty_dns(), lookup)
    if not addresses:
        raise ValueError(f"{host} has no address")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return https_request(addresses[0], parts.port or 443, path, tls_name=host, host_header=parts.netloc,
                         ca_file=lookup.ca_file, timeout=lookup.timeout, max_body=max_body)


def parse_well_known(status: int, body: bytes) -> str:
    """The `m.server` value of a well-known answer; WellKnownError says why there is none."""
    if status != 200:
        raise WellKnownError(f"no well-known: HTTP {status}", kind="missing")
    if len(body) > WELL_KNOWN_MAX_BYTES:
        raise WellKnownError(f"well-known is larger than {WELL_KNOWN_MAX_BYTES // 1024} KiB")
    try:
        document = json.loads(body)
    except ValueError as error:
        raise WellKnownError(f"well-known is not valid JSON: {error}") from None
    if not isinstance(document, dict) or "m.server" not in document:
        raise WellKnownError("well-known has no m.server")
    value = document["m.server"]
    try:
        parse_server_name(value)
    except ValueError as error:
        raise WellKnownError(f"well-known m.server is invalid: {error}") from None
    return value


def cache_lifetime(headers: dict, now: float | None = None) -> int:
    """Seconds to cache a well-known answer: Cache-Control max-age, else Expires, else 24h; at most 48h."""
    control = headers.get("cache-control", "")
    if re.search(r"\b(no-store|no-cache)\b", control):
        return 0
    max_age = re.search(r"\bmax-age\s*=\s*\"?(\d+)", control)
    if max_age:
        return min(int(max_age.group(1)), CACHE_MAX_SECONDS)
    expires = _parse_http_date(headers.get("expires", ""))
    if expires is not None:
        now = time.time() if now is None else now
        return max(0, min(int(expires - now), CACHE_MAX_SECONDS))
    return CACHE_DEFAULT_SECONDS


def _parse_http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None
