"""`federate check` against local DNS and HTTPS servers on 127.0.0.0/8 (tests/unit/checkserver.py).

Every resolution path of the server-server spec, then the broken set-ups users hit.
Binding ports 443 and 8448 on distinct loopback addresses needs root.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from federate import cli
from federate.checker.report import check_server
from federate.checker.text import format_report
from federate.checker.hints import HINTS, synapse_blocks
from federate.checker.resolution import cache_lifetime, parse_server_name
from checkserver import Route, TestCA, World, homeserver_routes, json_route, redirect, server_well_known

WELL_KNOWN = "/.well-known/matrix/server"


@pytest.fixture
def world(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("binds ports 443 and 8448 on loopback addresses (needs root)")
    with World(tmp_path) as world:
        yield world


def check(world: World, server_name: str, ca_file=None) -> dict:
    return check_server(server_name, dns_server=world.dns.address, ca_file=str(ca_file or world.ca.ca_file),
                        timeout=3)


def hint_names(report: dict) -> list[str]:
    return [h["name"] for h in report["Hints"]]


def only_connection(report: dict) -> dict:
    assert len(report["ConnectionReports"]) == 1, report["ConnectionErrors"]
    return next(iter(report["ConnectionReports"].values()))


def delegating_world(world: World, delegated: str, server_name="example.test", **headers):
    """server_name's well-known on 443 delegates to `delegated`."""
    world.serve(world.host(server_name), 443, server_well_known(delegated, **headers), [server_name])


# --- the resolution paths of the spec ------------------------------------------------------------

def test_ip_literal_with_port(world):
    address = world.address()
    port = world.free_port(address)
    name = f"{address}:{port}"
    server = world.serve(address, port, homeserver_routes(name), [address])
    report = check(world, name)
    assert report["FederationOK"], format_report(report)
    assert report["DNSResult"]["SRVSkipped"] and report["DNSResult"]["Addrs"] == [name]
    assert report["WellKnownResult"]["Problem"] == "skipped"
    assert ("/_matrix/key/v2/server", name) in server.requests  # Host header: the server name with port


def test_ip_literal_defaults_to_8448(world):
    address = world.address()
    world.serve(address, 8448, homeserver_routes(address), [address])
    report = check(world, address)
    assert report["FederationOK"], format_report(report)
    assert list(report["ConnectionReports"]) == [f"{address}:8448"]


def test_hostname_with_port_skips_well_known_and_srv(world):
    address = world.host("hs.test")
    port = world.free_port(address)
    world.add_record("_matrix-fed._tcp.hs.test", "SRV", "10 0 1 nowhere.test.")  # must be ignored
    server = world.serve(address, port, homeserver_routes(f"hs.test:{port}"), ["hs.test"])
    report = check(world, f"hs.test:{port}")
    assert report["FederationOK"], format_report(report)
    assert report["DNSResult"]["SRVSkipped"] and report["DNSResult"]["Hosts"]["hs.test"]["Addrs"] == [address]
    assert server.requests[0] == ("/_matrix/key/v2/server", f"hs.test:{port}")


def test_well_known_delegation_with_port(world):
    backend = world.host("matrix.example.test")
    port = world.free_port(backend)
    delegating_world(world, f"matrix.example.test:{port}", **{"Cache-Control": "max-age=3600"})
    server = world.serve(backend, port, homeserver_routes("example.test"), ["matrix.example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    well_known = report["WellKnownResult"]
    assert well_known["m.server"] == f"matrix.example.test:{port}" and well_known["result"] == ""
    assert abs(well_known["CacheExpiresAt"] - (time.time() + 3600)) < 60
    assert report["DNSResult"]["SRVSkipped"]
    assert server.requests[0] == ("/_matrix/key/v2/server", f"matrix.example.test:{port}")
    assert report["Version"] == {"name": "Synapse", "version": "1.163.2"}


def test_well_known_delegation_through_srv_wants_the_delegated_name_on_the_certificate(world):
    delegating_world(world, "matrix.example.test")
    backend = world.host("backend.example.test")
    port = world.free_port(backend)
    world.add_record("_matrix-fed._tcp.matrix.example.test", "SRV", f"10 5 {port} backend.example.test.")
    world.serve(backend, port, homeserver_routes("example.test"), ["matrix.example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    assert report["DNSResult"]["SRVRecords"][0]["Target"] == "backend.example.test"
    assert report["WellKnownResult"]["CacheExpiresAt"] > time.time() + 23 * 3600  # the 24h default


def test_well_known_delegation_without_srv_goes_to_8448(world):
    delegating_world(world, "matrix.example.test")
    world.serve(world.host("matrix.example.test"), 8448, homeserver_routes("example.test"),
                ["matrix.example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    assert list(report["ConnectionReports"])[0].endswith(":8448")
    assert not report["DNSResult"]["SRVSkipped"] and report["DNSResult"]["SRVRecords"] == []


def test_well_known_delegation_to_an_ip_literal(world):
    address = world.address()
    port = world.free_port(address)
    delegating_world(world, f"{address}:{port}")
    server = world.serve(address, port, homeserver_routes("example.test"), [address])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    assert only_connection(report)["TLSName"] == address  # the certificate is for the IP address
    assert server.requests[0] == ("/_matrix/key/v2/server", f"{address}:{port}")


@pytest.mark.parametrize("service", ["_matrix-fed._tcp", "_matrix._tcp"])
def test_srv_without_well_known(world, service):
    backend = world.host("backend.example.test")
    world.add_record("example.test", "A", world.address())  # nothing listens: no well-known
    port = world.free_port(backend)
    world.add_record(f"{service}.example.test", "SRV", f"10 5 {port} backend.example.test.")
    world.serve(backend, port, homeserver_routes("example.test"), ["example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    assert report["WellKnownResult"]["Problem"] == "missing"
    assert report["DNSResult"]["SRVRecords"][0]["Service"] == service
    assert "no-delegation" not in hint_names(report)


def test_fallback_to_server_name_port_8448(world):
    world.serve(world.host("example.test"), 8448, homeserver_routes("example.test"), ["example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    assert report["DNSResult"]["SRVError"]["Message"].startswith("no SRV record _matrix-fed._tcp.example.test")


# --- the well-known going wrong ------------------------------------------------------------------

def served_at_8448_too(world, routes: dict) -> str:
    """example.test: the given routes on 443, a working homeserver on 8448 (where others fall back)."""
    address = world.host("example.test")
    world.serve(address, 443, routes, ["example.test", "www.example.test"])
    world.serve(address, 8448, homeserver_routes("example.test"), ["example.test"])
    return address


def test_redirects_are_followed_and_308_is_warned_about(world):
    backend = world.host("matrix.example.test")
    port = world.free_port(backend)
    world.serve(backend, port, homeserver_routes("example.test"), ["matrix.example.test"])
    world.serve(world.host("example.test"), 443, {WELL_KNOWN: redirect(301, "/moved")} |
                {"/moved": redirect(308, "https://www.example.test/.well-known/matrix/server")},
                ["example.test"])
    world.serve(world.host("www.example.test"), 443, server_well_known(f"matrix.example.test:{port}"),
                ["www.example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"], format_report(report)
    assert [r["Status"] for r in report["WellKnownResult"]["Redirects"]] == [301, 308]
    assert hint_names(report)[0] == "well-known-308"
    assert "[WARN] well-known: HTTP 308" in format_report(report)


def test_redirect_loop_is_an_error_and_resolution_falls_through(world):
    served_at_8448_too(world, {WELL_KNOWN: redirect(302, "/a"), "/a": redirect(307, WELL_KNOWN)})
    report = check(world, "example.test")
    assert "redirect loop" in report["WellKnownResult"]["result"]
    assert report["FederationOK"]  # the spec falls back to SRV and 8448
    assert "well-known-invalid" in hint_names(report)


def test_oversized_well_known_is_refused(world):
    served_at_8448_too(world, {WELL_KNOWN: json_route({"m.server": "elsewhere.test:443", "pad": "x" * 60_000})})
    report = check(world, "example.test")
    assert "larger than 50 KiB" in report["WellKnownResult"]["result"]
    assert report["WellKnownResult"]["m.server"] == "" and report["FederationOK"]


@pytest.mark.parametrize("body, problem", [
    (b"{not json", "not valid JSON"), (b'{"server": "x"}', "no m.server"),
    (b'{"m.server": "bad name!:99"}', "m.server is invalid"), (b'["m.server"]', "no m.server")])
def test_invalid_well_known_is_an_error(world, body, problem):
    served_at_8448_too(world, {WELL_KNOWN: Route(200, body, {"Content-Type": "application/json"})})
    report = check(world, "example.test")
    assert problem in report["WellKnownResult"]["result"]
    assert report["WellKnownResult"]["Problem"] == "invalid"


# --- DNS going wrong -----------------------------------------------------------------------------

def test_srv_target_that_is_a_cname_is_an_error(world):
    backend = world.host("real.example.test")
    port = world.free_port(backend)
    world.add_record("alias.example.test", "CNAME", "real.example.test.")
    world.add_record("_matrix-fed._tcp.example.test", "SRV", f"10 5 {port} alias.example.test.")
    world.serve(backend, port, homeserver_routes("example.test"), ["example.test"])
    report = check(world, "example.test")
    assert not report["FederationOK"]
    assert report["DNSResult"]["Hosts"]["alias.example.test"]["CName"] == "real.example.test"
    assert "srv-cname" in hint_names(report)


def test_unknown_name_is_a_dns_error(world):
    report = check(world, "nowhere.test")
    assert not report["FederationOK"] and report["Error"] == "no address found for nowhere.test"
    assert hint_names(report)[0] == "dns"


# --- the homeserver's answers going wrong ---------------------------------------------------------

def fallback_world(world, routes=None, cert_names=("example.test",), ca: TestCA | None = None) -> str:
    address = world.host("example.test")
    world.serve(address, 8448, routes or homeserver_routes("example.test"), list(cert_names), ca=ca)
    return f"{address}:8448"


def test_expired_keys(world):
    fallback_world(world, homeserver_routes("example.test", valid_for_ms=-60_000))
    report = check(world, "example.test")
    checks = only_connection(report)["Checks"]
    assert not checks["FutureValidUntilTS"] and checks["AllEd25519ChecksOK"] and not report["FederationOK"]
    assert "keys-expired" in hint_names(report)


def test_altered_key_document_fails_its_signature(world):
    routes = homeserver_routes("example.test")
    routes["/_matrix/key/v2/server"].body["valid_until_ts"] += 1  # changed after signing, like a rewriting proxy
    fallback_world(world, routes)
    report = check(world, "example.test")
    checks = only_connection(report)["Checks"]
    assert checks["Ed25519Checks"] == {"ed25519:a_test": {"ValidEd25519": True, "MatchingSignature": False}}
    assert not checks["AllChecksOK"] and not report["FederationOK"]
    assert "reverse-proxy" in hint_names(report)


def test_keys_of_another_server_name_mean_the_api_host_was_checked(world):
    address = world.host("matrix.example.test")
    world.serve(address, 8448, homeserver_routes("example.test"), ["matrix.example.test"])
    report = check(world, "matrix.example.test")
    assert not only_connection(report)["Checks"]["MatchingServerName"] and not report["FederationOK"]
    api_host = next(h for h in report["Hints"] if h["name"] == "api-host")
    assert hint_names(report)[0] == "api-host" and "no-delegation" not in hint_names(report)
    assert "you checked matrix.example.test but the keys" in api_host["problem"]
    assert "belong to example.test" in api_host["problem"]


def test_missing_key_path_points_at_the_reverse_proxy(world):
    routes = homeserver_routes("example.test")
    del routes["/_matrix/key/v2/server"]
    fallback_world(world, routes)
    report = check(world, "example.test")
    assert only_connection(report)["Errors"][0]["Status"] == 404
    assert "reverse-proxy" in hint_names(report) and not report["FederationOK"]


def test_certificate_for_another_name(world):
    fallback_world(world, cert_names=["other.test"])
    report = check(world, "example.test")
    connection = only_connection(report)
    assert not connection["Checks"]["ValidCertificates"] and connection["Checks"]["MatchingServerName"]
    assert connection["Certificates"][0]["DNSNames"] == ["other.test"]
    assert "certificate" in hint_names(report) and not report["FederationOK"]


def test_certificate_from_an_untrusted_ca(world, tmp_path):
    rogue = TestCA(tmp_path, name="rogue CA")
    fallback_world(world, ca=rogue)
    report = check(world, "example.test")
    connection = only_connection(report)
    assert not connection["Checks"]["ValidCertificates"]
    assert connection["Certificates"][0]["IssuerCommonName"] == "rogue CA"
    assert connection["Errors"][0]["Message"].startswith("certificate is not valid for example.test: self-signed")


def test_closed_port_8448_without_well_known(world):
    address = world.host("example.test")  # nothing listens on 443 or 8448
    report = check(world, "example.test")
    assert report["ConnectionErrors"][f"{address}:8448"]["Kind"] == "refused"
    assert not report["FederationOK"]
    assert hint_names(report)[:2] == ["port-closed", "no-delegation"] and "join-401" in hint_names(report)
    text = format_report(report)
    assert "ufw allow 8448/tcp" in text and f"[FAIL] {address}:8448 connect" in text


def test_private_address_is_a_warning_not_a_failure(world):
    addr = fallback_world(world)
    report = check(world, "example.test")
    assert report["FederationOK"]
    warning = next(h for h in report["Hints"] if h["name"] == "private-address")
    assert warning["level"] == "warning" and addr in warning["problem"]


# --- what clients see ------------------------------------------------------------------------------

def test_client_discovery(world):
    backend = world.host("matrix.example.test")
    world.serve(backend, 443, homeserver_routes("example.test") | {
        "/_matrix/client/versions": json_route({"versions": ["v1.11"]})}, ["matrix.example.test"])
    world.serve(world.host("example.test"), 443, server_well_known("matrix.example.test:443") | {
        "/.well-known/matrix/client": json_route({"m.homeserver": {"base_url": "https://matrix.example.test"}},
                                                 **{"Access-Control-Allow-Origin": "*"})}, ["example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"] and report["Client"]["OK"], format_report(report)
    assert report["Client"]["Versions"]["versions"] == ["v1.11"]


def test_client_well_known_without_cors_is_a_warning(world):
    address = fallback_world(world).split(":")[0]
    world.serve(address, 443, {"/.well-known/matrix/client": json_route(
        {"m.homeserver": {"base_url": "https://example.test"}})}, ["example.test"])
    report = check(world, "example.test")
    assert report["FederationOK"] and not report["Client"]["OK"]
    assert "Access-Control-Allow-Origin" in report["Client"]["WellKnown"]["error"]
    assert "client" in hint_names(report)


# --- report shape and command line -----------------------------------------------------------------

def test_report_uses_the_federation_tester_fields(world):
    fallback_world(world)
    report = check(world, "example.test")
    assert {"FederationOK", "Error", "ConnectionErrors", "WellKnownResult", "DNSResult", "ConnectionReports",
            "Version"} <= set(report)
    assert {"m.server", "result", "CacheExpiresAt"} <= set(report["WellKnownResult"])
    assert {"SRVSkipped", "SRVRecords", "SRVError", "Hosts", "Addrs"} <= set(report["DNSResult"])
    connection = only_connection(report)
    assert {"Certificates", "Cipher", "Errors", "Keys", "Checks"} <= set(connection)
    assert set(connection["Certificates"][0]) == {"SubjectCommonName", "IssuerCommonName", "SHA256Fingerprint",
                                                  "DNSNames"}
    assert {"AllChecksOK", "MatchingServerName", "FutureValidUntilTS", "HasEd25519Key", "AllEd25519ChecksOK",
            "Ed25519Checks", "ValidCertificates"} == set(connection["Checks"])
    assert connection["Keys"]["server_name"] == "example.test"
    json.dumps(report)


def parse(argv):
    return cli.build_parser().parse_args(argv)


def test_command_exit_code_and_json(world, capsys):
    fallback_world(world)
    args = parse(["check", "example.test", "--json", "--dns-server", world.dns.address,
                  "--ca-file", str(world.ca.ca_file), "--timeout", "3"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["FederationOK"] is True
    args = parse(["check", "nowhere.test", "--dns-server", world.dns.address, "--timeout", "3"])
    assert args.handler(args) == 1
    assert "Federation: FAILED" in capsys.readouterr().out


# --- pure parts ------------------------------------------------------------------------------------

def test_cache_lifetime():
    assert cache_lifetime({}) == 24 * 3600
    assert cache_lifetime({"cache-control": "public, max-age=600"}) == 600
    assert cache_lifetime({"cache-control": "max-age=999999"}) == 48 * 3600
    assert cache_lifetime({"cache-control": "no-store"}) == 0
    assert cache_lifetime({"expires": "Thu, 01 Jan 2037 00:00:00 GMT"}, now=2114380800 - 60) == 60
    assert cache_lifetime({"expires": "garbage"}) == 24 * 3600


@pytest.mark.parametrize("name, expected", [
    ("example.org", ("example.org", None)), ("example.org:443", ("example.org", 443)),
    ("1.2.3.4", ("1.2.3.4", None)), ("[::1]:8448", ("::1", 8448)), ("[::1]", ("::1", None))])
def test_parse_server_name(name, expected):
    assert parse_server_name(name) == expected


@pytest.mark.parametrize("name", ["", "exa mple.org", "example.org:0", "example.org:99999", "[nothost]:1", "::1", 5])
def test_parse_server_name_refuses(name):
    with pytest.raises(ValueError):
        parse_server_name(name)


def test_synapse_blocked_ranges():
    assert synapse_blocks("127.0.0.1") and synapse_blocks("10.1.2.3") and synapse_blocks("fd00::1")
    assert not synapse_blocks("8.8.8.8") and not synapse_blocks("2a00:1450::1")


def test_hint_table_has_the_general_401_advice():
    assert "401" in HINTS["join-401"]["problem"]


def test_federation_port_without_tls(world):
    address = world.host("example.test")
    world.serve(address, 8448, homeserver_routes("example.test"), tls=False)
    report = check(world, "example.test")
    assert report["ConnectionErrors"][f"{address}:8448"]["Kind"] == "tls"
    assert "tls-handshake" in hint_names(report) and "port-closed" not in hint_names(report)


def test_silent_port_is_a_timeout(world):
    address = world.host("example.test")
    world.silent_listener(address, 8448)
    report = check_server("example.test", dns_server=world.dns.address, ca_file=str(world.ca.ca_file),
                          timeout=0.5)
    assert report["ConnectionErrors"][f"{address}:8448"]["Kind"] == "timeout"
    assert "timed out" in next(h for h in report["Hints"] if h["name"] == "port-closed")["problem"]


def test_invalid_server_name_is_reported_not_raised(world):
    report = check(world, "not a name")
    assert not report["FederationOK"] and report["Error"].startswith("not a valid host name")
    assert "dns" not in hint_names(report)


def test_redirect_to_plain_http_is_refused(world):
    served_at_8448_too(world, {WELL_KNOWN: redirect(301, "http://example.test/.well-known/matrix/server")})
    report = check(world, "example.test")
    assert report["WellKnownResult"]["Problem"] == "invalid"
    assert "non-https" in report["WellKnownResult"]["result"]


def test_world_stops_its_servers(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("binds port 8448 on a loopback address (needs root)")
    with pytest.raises(RuntimeError), World(tmp_path) as world:
        address = world.address()
        world.serve(address, 8448, homeserver_routes("example.test"))
        dns_port = int(world.dns.address.split(":")[1])
        raise RuntimeError("a failing test")
    with socket.socket() as probe:  # the port is free again: nothing listens there
        probe.bind((address, 8448))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", dns_port))


def test_ipv6_literal(world):
    try:
        port = world.free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    world.serve("::1", port, homeserver_routes(f"[::1]:{port}"), ["::1"])
    report = check(world, f"[::1]:{port}")
    assert report["FederationOK"], format_report(report)
    assert list(report["ConnectionReports"]) == [f"[::1]:{port}"]


def test_certificates_are_judged_as_synapse_judges_them_on_any_python():
    """The test CA's certificates carry no Authority Key Identifier, like some private CAs'. Synapse
    (OpenSSL via Twisted) accepts them; Python 3.13's strict X.509 default would not, so the
    checker clears it and gives the same verdict on a Debian 12 or 13 controller."""
    import ssl
    from federate.checker.http import tls_context
    assert not tls_context(None).verify_flags & ssl.VERIFY_X509_STRICT
    assert tls_context(None).verify_mode == ssl.CERT_REQUIRED and tls_context(None).check_hostname
