"""What a user's Matrix client sees: /.well-known/matrix/client and /_matrix/client/versions.

Not needed for federation (it does not change FederationOK), but it is the other half of
"my server works": clients find the homeserver's base URL through this file.
"""

from __future__ import annotations

import json
import dns.exception

from federate.checker.resolution import Lookup, https_get_url, parse_server_name

CLIENT_WELL_KNOWN_PATH = "/.well-known/matrix/client"
VERSIONS_PATH = "/_matrix/client/versions"


def check_client(server_name: str, lookup: Lookup) -> dict:
    report = {"WellKnown": {}, "Versions": {}, "OK": False}
    try:
        host, _ = parse_server_name(server_name)
    except ValueError as error:
        report["WellKnown"]["error"] = str(error)
        return report
    report["WellKnown"] = client_well_known(host, lookup)
    base_url = report["WellKnown"].get("base_url")
    if base_url:
        report["Versions"] = client_versions(base_url, lookup)
    report["OK"] = not report["WellKnown"].get("error") and not report["Versions"].get("error")
    return report


def client_well_known(host: str, lookup: Lookup) -> dict:
    """Status, JSON, CORS header and base_url of https://host/.well-known/matrix/client (no redirects)."""
    try:
        reply = https_get_url(f"https://{host}{CLIENT_WELL_KNOWN_PATH}", lookup)
    except (OSError, ValueError, dns.exception.DNSException) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    result = {"Status": reply.status, "ContentType": reply.headers.get("content-type", ""),
              "CORS": reply.headers.get("access-control-allow-origin") == "*"}
    if reply.status != 200:
        where = f" to {reply.headers.get('location')}" if "location" in reply.headers else ""
        result["error"] = f"HTTP {reply.status}{where} (must be a plain 200)"
        return result
    try:
        base_url = json.loads(reply.body)["m.homeserver"]["base_url"]
    except (ValueError, KeyError, TypeError):
        result["error"] = "not JSON with m.homeserver.base_url"
        return result
    result["base_url"] = base_url
    if not result["CORS"]:
        result["error"] = "no 'Access-Control-Allow-Origin: *' header: web clients cannot read it"
    return result


def client_versions(base_url: str, lookup: Lookup) -> dict:
    try:
        reply = https_get_url(base_url.rstrip("/") + VERSIONS_PATH, lookup)
        if reply.status != 200:
            return {"Status": reply.status, "error": f"HTTP {reply.status}"}
        return {"Status": 200, "versions": list(json.loads(reply.body)["versions"])}
    except (OSError, ValueError, KeyError, TypeError, dns.exception.DNSException) as error:
        return {"error": f"{type(error).__name__}: {error}"}
