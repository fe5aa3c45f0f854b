"""From a check report to the likely fix: the troubles people hit most when federation fails.

HINTS is the table (also the documentation of what `federate check` can diagnose); each
detector below looks at the report and fills in one entry's blanks. `federate destinations` adds
what a probe on the homeserver's own host finds (`host_hints`): its DNS, its egress, its trust store.
"""

from __future__ import annotations

import ipaddress

from federate.checker.http import split_host_port

HINTS = {
    "dns": {
        "check": "DNS",
        "problem": "{problem}",
        "fix": "Publish an A (and/or AAAA) record for {name}, or delegate with /.well-known/matrix/server "
               "on https://{server_name}/ to a host that has one.",
    },
    "port-closed": {
        "check": "connection",
        "problem": "{addr}: {message}",
        "fix": "Open port {port}/tcp to the internet (e.g. `ufw allow {port}/tcp`, and any firewall of the "
               "hosting provider) and make the reverse proxy listen on it; or, if that port cannot be "
               "opened, delegate federation to port 443 with /.well-known/matrix/server.",
    },
    "tls-handshake": {
        "check": "TLS",
        "problem": "{addr}: something answers, but not with TLS: {message}",
        "fix": "Make port {port} speak TLS with a certificate (nginx: `listen {port} ssl;` in the server "
               "block that proxies /_matrix/ to Synapse); federation is always HTTPS.",
    },
    "no-delegation": {
        "check": "well-known",
        "problem": "{server_name} has no /.well-known/matrix/server ({result}) and no SRV record, so other "
                   "servers connect to {server_name}:8448, and that did not work.",
        "fix": "If Synapse answers on another host or port (its API host), serve "
               "{{\"m.server\": \"<api host>:443\"}} at https://{server_name}/.well-known/matrix/server "
               "with a plain 200 and Content-Type application/json.",
    },
    "well-known-invalid": {
        "check": "well-known",
        "problem": "https://{server_name}/.well-known/matrix/server is unusable: {result}. Other servers "
                   "ignore it and fall back to SRV records and port 8448.",
        "fix": "Serve a small JSON object {{\"m.server\": \"host:port\"}} with a plain 200 (no redirect, "
               "under 50 KiB).",
    },
    "well-known-308": {
        "check": "well-known",
        "problem": "the well-known is reached through a 308 redirect ({source} -> {destination}); some "
                   "homeservers do not follow 308 and then fail with M_UNKNOWN or 401.",
        "fix": "Serve /.well-known/matrix/server directly with a 200 (or redirect with 301/302); check "
               "apex-to-www rules and ingress defaults, which often answer 308.",
    },
    "api-host": {
        "check": "keys",
        "problem": "you checked {server_name} but the keys at {addr} belong to {actual}.",
        "fix": "Check the server name, not the API host: `federate check {actual}`. If {server_name} is "
               "really your server name, this address serves another homeserver: fix the delegation "
               "target or the proxy's server block for this name.",
    },
    "certificate": {
        "check": "TLS",
        "problem": "{addr}: {message}; the certificate is for {names}.",
        "fix": "Serve a certificate from a CA other servers trust that covers {tls_name} (the server name or "
               "the delegated host; never just the SRV target), with the full chain, on the proxy's "
               "server block for {tls_name}.",
    },
    "reverse-proxy": {
        "check": "keys",
        "problem": "{addr}: {message}",
        "fix": "The reverse proxy must pass /_matrix/ unchanged to Synapse (nginx: `proxy_pass "
               "http://127.0.0.1:8008;` with no path after the port, no rewrite) and keep the Host "
               "header; a proxy that rewrites paths, bodies or drops headers breaks the signed answers.",
    },
    "forbidden": {
        "check": "keys",
        "problem": "{addr}: GET /_matrix/key/v2/server answered 403: this server admits federation only from "
                   "the addresses of its partners, and this one is not among them.",
        "fix": "If your server should federate with it, its admin must admit your server's outgoing address "
               "(with federate: the internal homeserver's federation_allow_addresses) and whitelist your "
               "server name.",
    },
    "keys-expired": {
        "check": "keys",
        "problem": "{addr}: the key document's valid_until_ts is in the past.",
        "fix": "Check the server's clock (NTP), and that no cache in front of /_matrix/key/v2/server "
               "serves an old answer.",
    },
    "srv-cname": {
        "check": "DNS",
        "problem": "{message}",
        "fix": "Point the SRV record at a host name with A/AAAA records itself, not at a CNAME.",
    },
    "private-address": {
        "check": "DNS",
        "problem": "{addr} is a private or reserved address: Synapse refuses to connect to those by "
                   "default, so remote servers will not reach it.",
        "fix": "Publish a public address in DNS; for a private federation, list the range in every "
               "server's ip_range_whitelist.",
    },
    "client": {
        "check": "client",
        "problem": "{message}",
        "fix": "Serve {{\"m.homeserver\": {{\"base_url\": \"https://<api host>\"}}}} at "
               "https://{host}/.well-known/matrix/client with a plain 200, Content-Type application/json "
               "and Access-Control-Allow-Origin: *; the base_url must answer /_matrix/client/versions.",
    },
    "reachable-now": {
        "check": "general",
        "problem": "federate check from the controller finds {server_name} reachable now{host_too}",
        "fix": "If it keeps failing, look from the homeserver's host (its DNS, its outgoing firewall, its proxy "
               "settings); once fixed, reset the retry timer so queued events go out now (--reset {server_name}).",
    },
    "host-dns": {
        "check": "host",
        "problem": "{host} (the homeserver's own host) {what} {name}: {message}; the controller resolves it to "
                   "{addresses}",
        "fix": "Fix name resolution on {host}: /etc/hosts entries for {name}, the resolvers in /etc/resolv.conf (or "
               "systemd-resolved), a split-horizon DNS that answers the host differently; Synapse resolves with "
               "the host's resolver.",
    },
    "host-egress": {
        "check": "host",
        "problem": "{host} (the homeserver's own host) cannot connect to {addr} ({name}): {message}; the controller "
                   "reaches {name}",
        "fix": "Let {host} connect out to port {port}/tcp: its outgoing firewall (nftables/ufw output rules), the "
               "hosting provider's egress rules, a route to {address} (`ip route get {address}` on the host).",
    },
    "host-certificate": {
        "check": "host",
        "problem": "{host} (the homeserver's own host) does not trust the certificate of {addr} for {tls_name}: "
                   "{message}; the controller does",
        "fix": "Update {host}'s trust store (`apt install ca-certificates`, `update-ca-certificates`; a private "
               "CA goes into /usr/local/share/ca-certificates/) and check its clock (`timedatectl`).",
    },
    "join-401": {
        "check": "general",
        "problem": "Joining rooms over federation fails with \"401: Unauthorized\" when other servers in "
                   "the room cannot reach yours (a join needs connections in both directions).",
        "fix": "Fix the failures above until this check passes, then join again.",
    },
}

ERROR, WARNING, INFO = "error", "warning", "info"

# Synapse's default ip_range_blacklist: remote Synapse servers refuse to connect to these.
SYNAPSE_BLOCKED_RANGES = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
    "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "0.0.0.0/8", "::1/128", "fe80::/10", "fc00::/7",
    "2001:db8::/32", "ff00::/8", "fec0::/10")]


def synapse_blocks(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == network.version and ip in network for network in SYNAPSE_BLOCKED_RANGES)


def hint(key: str, level: str, **fields) -> dict:
    entry = HINTS[key]
    return {"check": entry["check"], "level": level, "name": key,
            "problem": entry["problem"].format(**fields), "fix": entry["fix"].format(**fields)}


def hints_for(report: dict) -> list[dict]:
    # The most telling first: checking the API host explains a wrong certificate and signatures too.
    detectors = (_api_host, _dns, _port_closed, _tls_handshake, _no_delegation, _well_known_invalid, _well_known_308,
                 _srv_cname, _certificates, _forbidden, _reverse_proxy, _keys_expired, _private_addresses, _client,
                 _join_401)
    found = [h for detector in detectors for h in detector(report)]
    return sorted(found, key=lambda h: [ERROR, WARNING, INFO].index(h["level"]))


def _dns(report):
    # Only after DNS was asked: an invalid server name or an IP literal is not a DNS problem.
    if report["Error"] and not report["DNSResult"]["Addrs"] and report["DNSResult"]["Hosts"]:
        name = report["WellKnownResult"]["m.server"] or report["ServerName"]
        yield hint("dns", ERROR, problem=report["Error"], name=name, server_name=report["ServerName"])


def _port_closed(report):
    for addr, error in report["ConnectionErrors"].items():
        if error.get("Kind") in ("refused", "timeout"):
            yield hint("port-closed", ERROR, addr=addr, message=error["Message"], port=split_host_port(addr)[1])


def _tls_handshake(report):
    for addr, error in report["ConnectionErrors"].items():
        if error.get("Kind") == "tls":
            yield hint("tls-handshake", ERROR, addr=addr, message=error["Message"], port=split_host_port(addr)[1])


def _no_delegation(report):
    well_known, dns_result = report["WellKnownResult"], report["DNSResult"]
    # Only when server_name:8448 could not be reached: a wrong answer there has other hints.
    if (not report["FederationOK"] and well_known.get("Problem") == "missing"
            and not dns_result["SRVRecords"] and report["ConnectionErrors"]):
        yield hint("no-delegation", ERROR, server_name=report["ServerName"], result=well_known["result"])


def _well_known_invalid(report):
    well_known = report["WellKnownResult"]
    if well_known.get("Problem") == "invalid":
        yield hint("well-known-invalid", ERROR, server_name=report["ServerName"], result=well_known["result"])


def _well_known_308(report):
    for redirect in report["WellKnownResult"].get("Redirects", []):
        if redirect["Status"] == 308:
            yield hint("well-known-308", WARNING, source=redirect["From"], destination=redirect["To"])


def _srv_cname(report):
    for entry in report["DNSResult"]["Hosts"].values():
        if entry["CName"] and entry["Error"]:
            yield hint("srv-cname", ERROR, message=entry["Error"]["Message"])


def _certificates(report):
    for addr, connection in report["ConnectionReports"].items():
        if not connection["Checks"]["ValidCertificates"]:
            leaf = connection["Certificates"][0] if connection["Certificates"] else {}
            message = next((e["Message"] for e in connection["Errors"] if "certificate" in e["Message"]),
                           "certificate not valid")
            yield hint("certificate", ERROR, addr=addr, message=message, tls_name=connection["TLSName"],
                       names=", ".join(leaf.get("DNSNames", [])) or "no names")


def _api_host(report):
    for addr, connection in report["ConnectionReports"].items():
        actual = (connection["Keys"] or {}).get("server_name")
        if actual and actual != report["ServerName"]:
            yield hint("api-host", ERROR, server_name=report["ServerName"], addr=addr, actual=actual)


def _reverse_proxy(report):
    """Answers that a proxy in the way would explain: a 404 or non-JSON key path, bad signatures."""
    for addr, connection in report["ConnectionReports"].items():
        checks = connection["Checks"]
        messages = [e["Message"] for e in connection["Errors"]
                    if "certificate" not in e["Message"] and e.get("Status") != 403]
        if connection["Keys"] is not None and checks["MatchingServerName"]:
            if not checks["HasEd25519Key"]:
                messages.append("the key document has no ed25519 key")
            elif not checks["AllEd25519ChecksOK"]:
                messages.append("a key signature does not verify: the key document was altered on the way")
        if messages:
            yield hint("reverse-proxy", ERROR, addr=addr, message="; ".join(messages))


def forbidden_addresses(report: dict) -> list[str]:
    """The addresses whose key path answered 403: a server that admits only its partners' addresses."""
    return [addr for addr, connection in report["ConnectionReports"].items()
            if any(e.get("Status") == 403 for e in connection["Errors"])]


def _forbidden(report):
    for addr in forbidden_addresses(report):
        yield hint("forbidden", ERROR, addr=addr)


def _keys_expired(report):
    for addr, connection in report["ConnectionReports"].items():
        if connection["Keys"] is not None and not connection["Checks"]["FutureValidUntilTS"]:
            yield hint("keys-expired", ERROR, addr=addr)


def _private_addresses(report):
    for addr in report["DNSResult"]["Addrs"]:
        if synapse_blocks(split_host_port(addr)[0]):
            yield hint("private-address", WARNING, addr=addr)


def _client(report):
    client = report.get("Client")
    if client and not client["OK"]:
        message = client["WellKnown"].get("error") or client["Versions"].get("error")
        yield hint("client", WARNING, message=f"client discovery: {message}",
                   host=split_host_port(report["ServerName"])[0])


def _join_401(report):
    if not report["FederationOK"]:
        yield hint("join-401", INFO)


# --- seen from a homeserver's own host (federate destinations) -------------------------------------

def host_probe_targets(report: dict) -> list[list]:
    """[name, port, tls_name] for each name the check resolved to an address, with the ports it
    connected to there: what a probe on the homeserver's host tries again (hostscripts/egress_probe.py)."""
    dns_result = report.get("DNSResult") or {}
    ports_by_address: dict[str, list[int]] = {}
    for key in dns_result.get("Addrs", []):
        address, port = split_host_port(key)
        ports_by_address.setdefault(address, []).append(port)
    tls_name = split_host_port(report.get("WellKnownResult", {}).get("m.server") or report["ServerName"])[0]
    return [[name, port, tls_name] for name, entry in dns_result.get("Hosts", {}).items()
            for port in dict.fromkeys(p for a in entry["Addrs"] for p in ports_by_address.get(a, []))]


def host_hints(report: dict, probe: list[dict], host: str) -> list[dict]:
    """What the homeserver's host fails at where the controller (the report) succeeded."""
    hosts = report.get("DNSResult", {}).get("Hosts", {})
    connected = report.get("ConnectionReports", {})
    found = []
    for target in probe:
        name, port = target["name"], target["port"]
        controller = hosts.get(name, {}).get("Addrs", [])
        seen = [a["address"] for a in target["addresses"]]
        if target["resolve_error"] or not set(seen) & set(controller):
            what, message = (("cannot resolve", target["resolve_error"]) if target["resolve_error"] else
                             ("resolves other addresses for", ", ".join(seen)))
            found.append(hint("host-dns", ERROR if target["resolve_error"] else WARNING, host=host, what=what,
                              name=name, message=message, addresses=", ".join(controller)))
        for attempt in target["addresses"]:
            address = attempt["address"]
            addr = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            # Only where the controller got through: a port closed to everyone has its own hint.
            if attempt["connect_error"] and connected and (addr in connected or address not in controller):
                found.append(hint("host-egress", ERROR, host=host, addr=addr, name=name, address=address,
                                  port=port, message=attempt["connect_error"]))
            elif attempt["tls_error"] and connected.get(addr, {}).get("Checks", {}).get("ValidCertificates"):
                found.append(hint("host-certificate", ERROR, host=host, addr=addr, tls_name=target["tls_name"],
                                  message=attempt["tls_error"]))
    return sorted(found, key=lambda h: [ERROR, WARNING, INFO].index(h["level"]))
